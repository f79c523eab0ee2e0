"""Kafka client properties: the one file that says how to reach a (secured) cluster.

Every Kafka client the project builds (the stream processor, the topic chores, the
rollout's parity gate, the demo) takes its connection and security settings from one
file named by ``--kafka-config`` or ``SCORING_KAFKA_CONFIG``. It is the file ``kcat -F``
and the librdkafka-based clients read: one ``key=value`` per line, keys are librdkafka
property names and are passed through unchanged::

    # SCRAM over TLS
    bootstrap.servers=broker-1.example.com:9096
    security.protocol=SASL_SSL
    sasl.mechanism=SCRAM-SHA-512
    sasl.username=scoring
    sasl.password=${KAFKA_PASSWORD}
    ssl.ca.location=/etc/kafka/ca.pem

Format: blank lines and lines starting with ``#`` or ``!`` are skipped; a line splits at
its first ``=``; spaces around the key and the value are dropped; there are no escapes and
no continued lines. A key may appear once.

A value may name environment variables instead of holding a secret: ``${NAME}`` is replaced
by the variable's value when the file is read (an unset variable is an error), and
``$${`` writes a literal ``${``. A ``$`` anywhere else is an ordinary character.

``bootstrap.servers`` in the file is the cluster's address when neither ``--bootstrap`` nor
``KAFKA_BOOTSTRAP_SERVERS`` gives one. Keys the project sets itself because its delivery
guarantee depends on them (``group.id``, ``transactional.id``, ``isolation.level``, ...)
are refused, as are Java-client keys librdkafka does not read (``sasl.jaas.config``,
``ssl.truststore.*``), each with what to write instead.

Secrets never leave this module in the clear: :class:`KafkaClientConfig` keeps its
properties out of ``repr``, :meth:`KafkaClientConfig.redacted` masks them for anything
printed, error messages name the file, the line and the key but never a value, and
:class:`SecretsFilter` masks the secret values in log records as a last line of defence.
That last line is one filter per process: :func:`mask_in_logs` teaches it a client's
secrets and those of the environment (:data:`SECRET_VARIABLES`), and :func:`masked` applies
it to what an entry point prints outside logging (its ``error:`` line, its summary).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoring.errors import ConfigError, StreamError
from scoring.masking import MASK, SecretsFilter

__all__ = [
    "KafkaClientConfig",
    "KafkaConfigError",
    "faust_settings",
    "is_secret",
    "preflight",
    "read_properties",
    "redact",
    "resolve",
]


# Keys whose values are secrets: passwords, OAuth client secrets and tokens, inline keys.
_SECRET_KEY = re.compile(r"password|secret|token|jaas|oauthbearer\.config|key\.pem|credential")

# Properties whose value is a file or folder the client opens ("probe": librdkafka looks
# for the system's CA bundle itself).
_LOCATIONS = (
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
)

# Set by the project per client: a value from the file would change the delivery
# guarantee or the consumer group behind the user's back.
_OWNED = {
    "group.id": "the consumer group is --group",
    "group.instance.id": "the worker id (--worker) names the member",
    "transactional.id": "each worker's transactional ids are derived from --group and --worker",
    "enable.idempotence": "the delivery guarantee (--guarantee) sets it",
    "isolation.level": "the processor and every reader use read_committed",
    "enable.auto.commit": "offsets are committed with each micro-batch",
    "enable.auto.offset.store": "offsets are committed with each micro-batch",
    "auto.offset.reset": "use --start-from",
}

# Java-client keys that librdkafka does not read, and what to write instead.
_JAVA_ONLY = {
    "sasl.jaas.config": "write its user and password as sasl.username and sasl.password",
    "ssl.truststore.location": "give the CA certificates as a PEM file in ssl.ca.location",
    "ssl.truststore.password": "give the CA certificates as a PEM file in ssl.ca.location",
    "ssl.truststore.type": "give the CA certificates as a PEM file in ssl.ca.location",
    "ssl.keystore.type": "librdkafka reads PKCS#12 keystores (ssl.keystore.location) or PEM "
    "files (ssl.certificate.location, ssl.key.location)",
    "client.dns.lookup": "librdkafka resolves every address itself; drop it",
}

_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")


class KafkaConfigError(ConfigError):
    """The Kafka client properties file is missing or has a bad line."""

    def __init__(self, path: Path, problem: str, line: int | None = None) -> None:
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(
            f"Kafka client properties {where}: {problem}. The file takes one librdkafka "
            "property per line as key=value (the format of `kcat -F`), values may name "
            "environment variables as ${NAME}; see the README's 'Secured Kafka'."
        )


@dataclass(frozen=True)
class KafkaClientConfig:
    """Where the Kafka cluster is and how to connect to it.

    Attributes:
        bootstrap: ``host:port[,host:port]`` of the cluster.
        properties: librdkafka properties from the file (security, timeouts, ...), never
            ``bootstrap.servers``; kept out of ``repr`` because they hold secrets.
        source: The file they came from, if any.
    """

    bootstrap: str
    properties: Mapping[str, str] = field(default_factory=dict, repr=False)
    source: Path | None = None

    @property
    def protocol(self) -> str:
        """``security.protocol`` in upper case (librdkafka's default: ``PLAINTEXT``)."""
        return self.properties.get("security.protocol", "plaintext").upper()

    @property
    def mechanism(self) -> str | None:
        """The SASL mechanism when the protocol uses SASL (librdkafka's default: GSSAPI)."""
        if not self.protocol.startswith("SASL"):
            return None
        return self.properties.get(
            "sasl.mechanism", self.properties.get("sasl.mechanisms", "GSSAPI")
        )

    def describe(self) -> str:
        """The listener and how we authenticate to it, with nothing secret in it.

        Example: ``127.0.0.1:9096 (SASL_SSL, SASL SCRAM-SHA-512)``.
        """
        how = [self.protocol]
        if self.mechanism:
            how.append(f"SASL {self.mechanism}")
        if self.protocol in ("SSL", "SASL_SSL") and (
            "ssl.certificate.location" in self.properties
            or "ssl.keystore.location" in self.properties
            or "ssl.certificate.pem" in self.properties
        ):
            how.append("client certificate")
        return f"{self.bootstrap} ({', '.join(how)})"

    @classmethod
    def from_file(cls, path: Path, environ: Mapping[str, str] | None = None) -> KafkaClientConfig:
        """Exactly what one file says, address included (no flags or settings involved).

        Raises:
            KafkaConfigError: The file is bad, or has no ``bootstrap.servers``.
        """
        properties = read_properties(path, environ)
        bootstrap = properties.pop("bootstrap.servers", "")
        if not bootstrap:
            raise KafkaConfigError(Path(path), "bootstrap.servers is missing")
        return cls(bootstrap, properties, Path(path).resolve())

    def client(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """librdkafka configuration: the bootstrap, the file's properties, then ``overrides``.

        Args:
            overrides: Properties the caller owns (e.g. ``{"group.id": "scoring"}``); they
                win over the file.
        """
        return {"bootstrap.servers": self.bootstrap, **self.properties, **(overrides or {})}

    def redacted(self) -> dict[str, str]:
        """The properties with every secret replaced by :data:`MASK`, for printing."""
        return {"bootstrap.servers": self.bootstrap, **redact(self.properties)}

    def secrets(self) -> list[str]:
        """The secret values themselves (for :class:`SecretsFilter`), longest first."""
        values = {v for k, v in self.properties.items() if is_secret(k) and v}
        return sorted(values, key=len, reverse=True)


def is_secret(key: str) -> bool:
    """Whether the value of property ``key`` is a secret (password, token, private key)."""
    return bool(_SECRET_KEY.search(key.lower()))


def redact(properties: Mapping[str, str]) -> dict[str, str]:
    """``properties`` with the value of every secret key replaced by :data:`MASK`."""
    return {k: MASK if is_secret(k) else v for k, v in properties.items()}


def read_properties(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Read a client properties file, with ``${NAME}`` references filled in.

    Args:
        path: The file.
        environ: Where ``${NAME}`` is looked up (default: the process environment).

    Returns:
        The properties in file order, ``bootstrap.servers`` included if present.

    Raises:
        KafkaConfigError: The file cannot be read, a line is not ``key=value``, a key
            repeats, is owned by the project or is Java-only, a referenced variable is
            unset, or a ``*.location`` names a file that does not exist. The message names
            the file, the line and the key, never a value.
    """
    path = Path(path).expanduser()
    env = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KafkaConfigError(
            path, "no such file; check --kafka-config / SCORING_KAFKA_CONFIG"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KafkaConfigError(path, f"cannot be read ({type(exc).__name__})") from None
    properties: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise KafkaConfigError(path, "expected key=value", number)
        if not _KEY.fullmatch(key):
            raise KafkaConfigError(
                path,
                "the key has characters no librdkafka property has (letters, digits, "
                "'.', '_', '-')",
                number,
            )
        if key in first_seen:
            raise KafkaConfigError(
                path, f"{key} is already set on line {first_seen[key]}; keep one", number
            )
        if key in _OWNED:
            raise KafkaConfigError(
                path, f"{key} is set by the project ({_OWNED[key]}); remove it", number
            )
        if key in _JAVA_ONLY:
            raise KafkaConfigError(
                path,
                f"{key} is a Java-client key librdkafka does not read: {_JAVA_ONLY[key]}",
                number,
            )
        value = _substitute(value, env, path, number, key)
        if key in _LOCATIONS and value != "probe" and not Path(value).expanduser().exists():
            raise KafkaConfigError(path, f"{key} names a path that does not exist", number)
        first_seen[key] = number
        properties[key] = value
    return properties


def resolve(bootstrap: str | None = None, config_file: Path | None = None) -> KafkaClientConfig:
    """The Kafka connection from flags, then environment, then the settings file.

    Args:
        bootstrap: ``--bootstrap`` if given.
        config_file: ``--kafka-config`` if given.

    Returns:
        The cluster address and the file's properties. The address is the first of
        ``bootstrap``, ``KAFKA_BOOTSTRAP_SERVERS`` (or ``kafka_bootstrap`` in the TOML
        file) and the properties file's ``bootstrap.servers``.

    Raises:
        ConfigError: No address anywhere, or the properties file is bad.
    """
    from scoring.settings import ENV, load

    settings = load(kafka_bootstrap=bootstrap, kafka_config=config_file)
    properties: dict[str, str] = {}
    source = settings.kafka_config
    if source is not None:
        properties = read_properties(source)
    from_file = properties.pop("bootstrap.servers", None) or properties.pop(
        "metadata.broker.list", None
    )
    properties.pop("metadata.broker.list", None)
    servers = settings.kafka_bootstrap or from_file
    if not servers:
        raise ConfigError(
            f"no Kafka cluster: pass --bootstrap, set {ENV['kafka_bootstrap']}, or put "
            f"bootstrap.servers in the file named by --kafka-config / {ENV['kafka_config']}"
        )
    return KafkaClientConfig(servers, properties, source.resolve() if source else None)


def preflight(config: KafkaClientConfig, timeout: float = 15) -> None:
    """Connect and log in once, so that a wrong password or CA fails now, with a clear error.

    librdkafka retries a refused login or TLS handshake for ever in the background, so a
    client with a wrong password would otherwise wait out every timeout. This asks for
    metadata in short rounds and stops at the first authentication or TLS error.

    Args:
        config: The cluster and its client properties.
        timeout: Seconds to wait for a broker to answer at all.

    Raises:
        ConfigError: (exit 2) librdkafka refused the properties before connecting: a
            client key it cannot decrypt (a wrong ``ssl.key.password``), a certificate or
            key that is not PEM, an unknown property or a bad value.
        StreamError: (exit 4) The login was refused, the TLS handshake failed, or no broker
            answered in time. The message names the listener, the protocol and the SASL
            mechanism, and which properties to check; secret values are masked.
    """
    from scoring.stream.clients import KafkaError, KafkaException
    from scoring.stream.clients import admin as new_admin

    seen: list[KafkaError] = []
    mask = SecretsFilter(config.secrets()).mask
    source = f" in {config.source}" if config.source else ""
    try:
        # Errors are reported by the exceptions below; librdkafka's own log would repeat them.
        admin = new_admin(
            config.bootstrap, config.properties, defaults={"log_level": 0, "error_cb": seen.append}
        )
    except KafkaException as exc:
        detail = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else exc
        raise ConfigError(
            f"The Kafka client for {config.describe()} could not be made: {mask(str(detail))}. "
            f"Nothing was read or written; check the client properties{source} (a wrong "
            "ssl.key.password, or an ssl.*.location that is not a PEM file, is the usual "
            "cause)."
        ) from None
    fatal = {KafkaError._AUTHENTICATION: "login", KafkaError._SSL: "TLS handshake"}
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            last = exc.args[0].str() if exc.args else str(exc)
        admin.poll(0.1)  # error_cb is served by poll(), not by list_topics()
        for error in seen:
            if error.code() in fatal:
                what = fatal[error.code()]
                hint = (
                    f"check sasl.username, sasl.password and sasl.mechanism{source}"
                    if error.code() == KafkaError._AUTHENTICATION
                    else f"check ssl.ca.location and the client certificate and key{source}"
                )
                raise StreamError(
                    f"Kafka refused the {what} at {config.describe()}: "
                    f"{mask(error.str())}. Nothing was read or written; {hint}."
                )
        if seen:
            last = seen[-1].str()
        if time.monotonic() >= deadline:
            raise StreamError(
                f"No Kafka broker answered at {config.describe()} within {timeout:.0f}s "
                f"(last error: {mask(last)}). Check the address, and that security.protocol"
                f"{source} is what the listener expects (a TLS listener does not answer a "
                "PLAINTEXT client)."
            )


# What a faust app (aiokafka underneath) can take from the file; anything else is refused
# rather than dropped, since a dropped security setting would connect some other way.
_FAUST_KEYS = {
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
}
_FAUST_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}


def faust_settings(config: KafkaClientConfig) -> dict[str, Any]:
    """The same connection as ``faust.App`` settings: ``broker`` and ``broker_credentials``.

    For teams that embed the scorer in a faust app::

        app = faust.App("fraud-scoring", **faust_settings(resolve()))

    Args:
        config: The cluster and its client properties.

    Returns:
        ``broker`` (``kafka://host:port`` URLs) and, unless the protocol is PLAINTEXT,
        ``broker_credentials`` (faust's ``SASLCredentials`` or ``SSLCredentials``, with an
        SSL context built from the CA and the client certificate).

    Raises:
        ConfigError: A property or mechanism faust cannot use (GSSAPI, OAUTHBEARER, PKCS#12
            keystores, inline PEM, client tuning); use ``scoring stream run`` for those.
    """
    import ssl

    import faust

    where = f" in {config.source}" if config.source else ""
    extra = sorted(set(config.properties) - _FAUST_KEYS)
    if extra:
        raise ConfigError(
            f"a faust app cannot take {', '.join(extra)}{where}: it understands only "
            f"{', '.join(sorted(_FAUST_KEYS))}. Remove them for the faust agent, or run "
            "`scoring stream run`, which passes every librdkafka property on."
        )
    brokers = [f"kafka://{address.strip()}" for address in config.bootstrap.split(",")]
    protocol, props = config.protocol, config.properties
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=props.get("ssl.ca.location"))
        if props.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
            context.check_hostname = False
        if "ssl.certificate.location" in props:
            context.load_cert_chain(
                props["ssl.certificate.location"],
                props.get("ssl.key.location"),
                props.get("ssl.key.password"),
            )
    if protocol == "PLAINTEXT":
        return {"broker": brokers}
    if protocol == "SSL":
        return {"broker": brokers, "broker_credentials": faust.SSLCredentials(context)}
    mechanism = config.mechanism or "GSSAPI"
    if mechanism.upper() not in _FAUST_MECHANISMS:
        raise ConfigError(
            f"the faust agent takes SASL PLAIN and SCRAM, not {mechanism}{where}; run "
            "`scoring stream run` for this cluster"
        )
    credentials = faust.SASLCredentials(
        username=props.get("sasl.username"),
        password=props.get("sasl.password"),
        ssl_context=context,
        mechanism=mechanism.upper(),
    )
    return {"broker": brokers, "broker_credentials": credentials}


def _substitute(value: str, env: Mapping[str, str], path: Path, line: int, key: str) -> str:
    def replace(match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        closed = match.group(0).endswith("}")
        if escaped:
            return match.group(0)[1:]
        if not closed or not _NAME.fullmatch(name):
            raise KafkaConfigError(
                path,
                f"the value of {key} has a malformed ${{...}} reference (a variable name in "
                "braces, e.g. ${KAFKA_PASSWORD}; write $${ for a literal ${)",
                line,
            )
        if name not in env:
            raise KafkaConfigError(
                path,
                f"{key} refers to the environment variable {name}, which is not set; export "
                "it before running",
                line,
            )
        return env[name]

    return _REFERENCE.sub(replace, value)
