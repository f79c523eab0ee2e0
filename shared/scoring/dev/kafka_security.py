"""TLS material, SCRAM credentials and client files for the local broker's secure listeners.

``scoring dev up --secure`` (:func:`scoring.dev.kafka_broker.start` with ``secure=True``)
adds two listeners on 127.0.0.1 to the local broker, the two ways production clusters
take clients:

- ``SASL_SSL``: TLS, then a SCRAM-SHA-512 login (user ``scoring``);
- ``SSL``: mutual TLS, the client shows a certificate signed by the broker's CA.

Everything they need is generated once, on the first secure start, into ``security/`` of
the broker's state directory (under ``SCORING_HOME``) and reused afterwards::

    security/ca.pem             the CA certificate (clients: ssl.ca.location)
    security/ca.key             the CA's private key (signs the two certificates below)
    security/broker.p12         the broker's key and certificate (PKCS#12 keystore)
    security/client.pem         the client certificate for mutual TLS
    security/client.key         its private key, encrypted (ssl.key.password)
    security/secrets.json       the SCRAM password and the two key passwords
    client-sasl-ssl.properties  a client file for the SASL_SSL listener
    client-mtls.properties      a client file for the mutual-TLS listener

On every secure start, :func:`create_user` sets the SCRAM user on the broker (through its
plaintext listener) and :func:`wait_for_login` waits until a client logs in with each
client file.

The client files are in the ``kcat -F`` format (:mod:`scoring.stream.kafka_config`) with
absolute paths, so any librdkafka client can use them as they are. Secrets are files of
mode 0600. Delete ``security/`` to start over with new keys and passwords.

The keys are made with the ``cryptography`` package (OpenSSL underneath) rather than the
``openssl`` and ``keytool`` commands, whose flags differ between OpenSSL, LibreSSL and Java
versions: a fresh machine needs nothing beyond the project's Python environment and Java.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scoring.errors import BrokerError

__all__ = [
    "MECHANISM",
    "USERNAME",
    "Material",
    "broker_properties",
    "client_files",
    "create_user",
    "ensure_material",
    "wait_for_login",
    "write_client_files",
    "write_private",
]

USERNAME = "scoring"
MECHANISM = "SCRAM-SHA-512"
HOST = "127.0.0.1"

_DIR = "security"
_SECRETS = "secrets.json"
_SASL_SSL_FILE = "client-sasl-ssl.properties"
_MTLS_FILE = "client-mtls.properties"
_CA_DAYS = 3650
_LEAF_DAYS = 825


@dataclass(frozen=True)
class Material:
    """The secure listeners' keys, certificates and passwords (files under ``directory``)."""

    directory: Path
    ca_cert: Path
    keystore: Path
    client_cert: Path
    client_key: Path
    keystore_password: str
    client_key_password: str
    password: str
    username: str = USERNAME

    def __repr__(self) -> str:  # the dataclass repr would print the passwords
        return f"Material(directory={self.directory!s})"


def ensure_material(state_dir: Path) -> Material:
    """The secure listeners' material of ``state_dir``, generated on the first call.

    Args:
        state_dir: The broker's state directory.

    Returns:
        The CA, the broker's keystore, the client certificate and the passwords.

    Raises:
        BrokerError: Some files of ``security/`` exist and others do not, or they cannot
            be read; delete the folder to start over.
    """
    directory = state_dir / _DIR
    material = _paths(directory)
    files = (material.ca_cert, material.keystore, material.client_cert, material.client_key)
    present = [f.exists() for f in (*files, directory / _SECRETS)]
    if all(present):
        try:
            saved = json.loads((directory / _SECRETS).read_text())
            return _paths(directory, **{k: str(saved[k]) for k in _SECRET_FIELDS})
        except (OSError, ValueError, KeyError) as exc:
            raise BrokerError(
                f"{directory / _SECRETS} is unreadable ({type(exc).__name__}). Delete "
                f"{directory} to generate new keys and passwords."
            ) from None
    if any(present):
        raise BrokerError(
            f"{directory} is incomplete (a generation was interrupted?). Delete it to "
            "generate new keys and passwords."
        )
    return _generate(directory)


def broker_properties(material: Material, sasl_ssl_port: int, ssl_port: int) -> dict[str, str]:
    """The broker settings of the two secure listeners (added to ``server.properties``).

    Args:
        material: From :func:`ensure_material`.
        sasl_ssl_port: Port of the SASL_SSL (SCRAM-SHA-512) listener.
        ssl_port: Port of the mutual-TLS listener.

    Returns:
        Listener addresses under ``"listeners"`` and ``"advertised.listeners"`` (to be
        appended to the plaintext ones), the protocol map entries under
        ``"listener.security.protocol.map"``, and the TLS and SASL settings.
    """
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    addresses = f"SASL_SSL://{HOST}:{sasl_ssl_port},SSL://{HOST}:{ssl_port}"
    return {
        "listeners": addresses,
        "advertised.listeners": addresses,
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,SSL:SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": scram,
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(material.keystore),
        "ssl.keystore.password": material.keystore_password,
        "ssl.key.password": material.keystore_password,
        # Kafka reads a PEM truststore directly (KIP-651): the same ca.pem the clients use.
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(material.ca_cert),
        "listener.name.ssl.ssl.client.auth": "required",
        "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
        # ACLs can be set, as on a production cluster; none is by default, and a resource
        # without one is open to every principal. The plaintext and controller listeners'
        # principal (ANONYMOUS, the broker's own) is a super user.
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "true",
        "super.users": "User:ANONYMOUS",
    }


def write_client_files(
    material: Material, state_dir: Path, sasl_ssl_bootstrap: str, ssl_bootstrap: str
) -> tuple[Path, Path]:
    """Write the two client files (mode 0600) and return (SASL_SSL file, mutual-TLS file)."""
    sasl_ssl = {
        "bootstrap.servers": sasl_ssl_bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": MECHANISM,
        "sasl.username": material.username,
        "sasl.password": material.password,
        "ssl.ca.location": str(material.ca_cert),
    }
    mtls = {
        "bootstrap.servers": ssl_bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(material.ca_cert),
        "ssl.certificate.location": str(material.client_cert),
        "ssl.key.location": str(material.client_key),
        "ssl.key.password": material.client_key_password,
    }
    written = []
    for path, title, props in zip(
        client_files(state_dir),
        (f"SASL_SSL with {MECHANISM}, local dev broker", "mutual TLS, local dev broker"),
        (sasl_ssl, mtls),
        strict=True,
    ):
        text = f"# {title} (written by `scoring dev up --secure`)\n"
        text += "".join(f"{k}={v}\n" for k, v in props.items())
        write_private(path, text.encode())
        written.append(path)
    return written[0], written[1]


def client_files(state_dir: Path) -> tuple[Path, Path]:
    """Where :func:`write_client_files` puts (the SASL_SSL file, the mutual-TLS file)."""
    return state_dir / _SASL_SSL_FILE, state_dir / _MTLS_FILE


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (created 0600, never world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def create_user(bootstrap: str, material: Material, deadline: float) -> None:
    """Create the SCRAM user of ``material`` on the broker, or set its password again.

    The user is upserted on every start (the same password), through the plaintext
    listener at ``bootstrap``, which needs no login.

    Args:
        bootstrap: ``host:port`` of the broker's plaintext listener.
        material: From :func:`ensure_material`.
        deadline: ``time.monotonic()`` by which the broker must have answered.

    Raises:
        BrokerError: The broker refused it or did not answer.
    """
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    from scoring.stream import clients

    admin = clients.admin(bootstrap, defaults={"log_level": 0})
    upsert = UserScramCredentialUpsertion(
        material.username,
        ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
        material.password.encode(),
    )
    left = max(1.0, deadline - time.monotonic())
    futures = admin.alter_user_scram_credentials([upsert], request_timeout=left)
    try:
        for future in futures.values():
            future.result()
    except Exception as exc:  # confluent-kafka raises KafkaException with the broker's error
        raise BrokerError(
            f"Creating the SCRAM user {material.username!r} on {bootstrap} failed: {exc}."
        ) from None


def wait_for_login(config_files: Sequence[Path], deadline: float) -> None:
    """Wait until a client logs in with each of the client files ``config_files``.

    A login right after :func:`create_user` can race the broker applying it, so each
    listener is retried until ``deadline`` (``time.monotonic()``).

    Raises:
        BrokerError: A listener still refused the login, or did not answer, at ``deadline``.
    """
    from scoring.stream import clients
    from scoring.stream.kafka_config import read_properties, resolve

    for config_file in config_files:
        # The file's own listener: KAFKA_BOOTSTRAP_SERVERS of the shell (say, the plaintext
        # listener from an earlier `eval "$(scoring dev up)"`) must not redirect the probe.
        listener = read_properties(config_file)["bootstrap.servers"]
        client = resolve(bootstrap=listener, config_file=config_file)
        last_error = "no answer"
        while True:
            probe = clients.admin(client.bootstrap, client.properties, {"log_level": 0})
            try:
                probe.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                break
            except Exception as exc:  # confluent-kafka: KafkaException while not yet ready
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"No client could log in to {client.describe()} in time (last error: "
                    f"{last_error})."
                )
            time.sleep(0.3)


# --- internals -------------------------------------------------------------------------

_SECRET_FIELDS = ("keystore_password", "client_key_password", "password")


def _paths(directory: Path, **passwords: str) -> Material:
    return Material(
        directory=directory,
        ca_cert=directory / "ca.pem",
        keystore=directory / "broker.p12",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        keystore_password=passwords.get("keystore_password", ""),
        client_key_password=passwords.get("client_key_password", ""),
        password=passwords.get("password", ""),
    )


def _generate(directory: Path) -> Material:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    material = _paths(directory, **{name: secrets.token_urlsafe(24) for name in _SECRET_FIELDS})
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "scoring local dev"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("scoring dev CA"))
        .issuer_name(name("scoring dev CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common: str, usage: x509.ObjectIdentifier, san: bool
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            # Clients check the broker's name (librdkafka's default endpoint identification).
            alt = [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    broker_key, broker_cert = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, san=True)
    client_key, client_cert = leaf(USERNAME, ExtendedKeyUsageOID.CLIENT_AUTH, san=False)
    pem = serialization.Encoding.PEM

    write_private(
        directory / "ca.key",
        ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    material.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    write_private(
        material.keystore,
        pkcs12.serialize_key_and_certificates(
            b"broker",
            broker_key,
            broker_cert,
            [ca_cert],
            serialization.BestAvailableEncryption(material.keystore_password.encode()),
        ),
    )
    material.client_cert.write_bytes(client_cert.public_bytes(pem))
    write_private(
        material.client_key,
        client_key.private_bytes(
            pem,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(material.client_key_password.encode()),
        ),
    )
    # Written last: its presence says the generation finished.
    write_private(
        directory / _SECRETS,
        (json.dumps({k: getattr(material, k) for k in _SECRET_FIELDS}, indent=2) + "\n").encode(),
    )
    return material
