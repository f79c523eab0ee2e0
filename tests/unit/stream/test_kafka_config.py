"""The Kafka client properties file: parsing, ${VAR} references, errors, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from scoring.errors import ConfigError
from scoring.masking import MASK
from scoring.stream.kafka_config import (
    KafkaClientConfig,
    KafkaConfigError,
    preflight,
    read_properties,
    resolve,
)

SECRET = "s3cr3t-Pa55word"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.properties"
    path.write_text(text)
    return path


def test_reads_keys_unchanged_skipping_comments_and_blanks(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    path = write(
        tmp_path,
        "# SCRAM over TLS\n"
        "! also a comment\n"
        "\n"
        "  security.protocol = SASL_SSL  \n"
        "sasl.mechanism=SCRAM-SHA-512\n"
        f"sasl.password={SECRET}=with=equals\n"
        f"ssl.ca.location={ca}\n"
        "ssl.endpoint.identification.algorithm=https\n",
    )
    assert read_properties(path) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.password": f"{SECRET}=with=equals",
        "ssl.ca.location": str(ca),
        "ssl.endpoint.identification.algorithm": "https",
    }


def test_environment_references(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sasl.username=${KAFKA_USER}\n"
        "sasl.password=pre-${KAFKA_PASSWORD}-post\n"
        "client.id=$${NOT_A_REFERENCE}\n"
        "ssl.key.password=a$b$$c\n",
    )
    env = {"KAFKA_USER": "scoring", "KAFKA_PASSWORD": SECRET}
    assert read_properties(path, env) == {
        "sasl.username": "scoring",
        "sasl.password": f"pre-{SECRET}-post",
        "client.id": "${NOT_A_REFERENCE}",
        "ssl.key.password": "a$b$$c",
    }


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        (f"security.protocol=SASL_SSL\n{SECRET}\n", 2, "expected key=value"),
        (f"=  {SECRET}\n", 1, "expected key=value"),
        (f"sasl password={SECRET}\n", 1, "characters"),
        (f"sasl.password={SECRET}\n# x\nsasl.password={SECRET}\n", 3, "already set on line 1"),
        ("sasl.password=${KAFKA_PASSWORD}\n", 1, "KAFKA_PASSWORD, which is not set"),
        (f"sasl.password={SECRET}${{BROKEN\n", 1, "malformed"),
        ("sasl.password=${1BAD}\n", 1, "malformed"),
        ("ssl.ca.location=/no/such/ca.pem\n", 1, "ssl.ca.location names a path"),
        ("group.id=mine\n", 1, "--group"),
        ("isolation.level=read_uncommitted\n", 1, "read_committed"),
        (
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule "
            f'required username="u" password="{SECRET}";\n',
            1,
            "sasl.username and sasl.password",
        ),
        (f"ssl.truststore.password={SECRET}\n", 1, "ssl.ca.location"),
    ],
)
def test_bad_lines_name_file_and_line_never_the_value(
    tmp_path: Path, text: str, line: int, says: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(KafkaConfigError) as caught:
        read_properties(path, environ={})
    message = str(caught.value)
    assert f"{path}, line {line}" in message
    assert says in message
    assert SECRET not in message
    assert caught.value.exit_code == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KafkaConfigError, match="no such file"):
        read_properties(tmp_path / "absent.properties")


def test_probe_ca_location_is_not_a_path(tmp_path: Path) -> None:
    assert read_properties(write(tmp_path, "ssl.ca.location=probe\n")) == {
        "ssl.ca.location": "probe"
    }


def test_redaction_and_description() -> None:
    config = KafkaClientConfig(
        "b1:9096,b2:9096",
        {
            "security.protocol": "sasl_ssl",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "scoring",
            "sasl.password": SECRET,
            "ssl.key.password": "key-pass",
            "sasl.oauthbearer.client.secret": "oauth-secret",
            "ssl.ca.location": "/etc/ca.pem",
        },
    )
    redacted = config.redacted()
    assert redacted["sasl.password"] == MASK
    assert redacted["ssl.key.password"] == MASK
    assert redacted["sasl.oauthbearer.client.secret"] == MASK
    assert redacted["sasl.username"] == "scoring"
    assert redacted["ssl.ca.location"] == "/etc/ca.pem"
    for shown in (repr(config), str(config), config.describe(), str(redacted)):
        assert SECRET not in shown and "key-pass" not in shown
    assert config.describe() == "b1:9096,b2:9096 (SASL_SSL, SASL SCRAM-SHA-512)"
    assert config.secrets() == [SECRET, "oauth-secret", "key-pass"]  # longest first
    assert config.client({"group.id": "g", "log_level": 0})["log_level"] == 0
    assert config.client()["bootstrap.servers"] == "b1:9096,b2:9096"


def test_mutual_tls_description() -> None:
    config = KafkaClientConfig(
        "b:9094", {"security.protocol": "SSL", "ssl.certificate.location": "/c.pem"}
    )
    assert config.describe() == "b:9094 (SSL, client certificate)"
    assert KafkaClientConfig("b:9092").describe() == "b:9092 (PLAINTEXT)"


def test_a_client_key_it_cannot_decrypt_fails_before_connecting(tmp_path: Path) -> None:
    from scoring.dev import kafka_security

    material = kafka_security.ensure_material(tmp_path)
    _, mtls_file = kafka_security.write_client_files(
        material, tmp_path, "127.0.0.1:1", "127.0.0.1:2"
    )
    good = KafkaClientConfig.from_file(mtls_file)
    wrong = KafkaClientConfig(
        good.bootstrap, {**good.properties, "ssl.key.password": "Wrong-key-Pa55"}, good.source
    )
    with pytest.raises(ConfigError) as caught:
        preflight(wrong, timeout=1)
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "ssl.key.password" in message and str(mtls_file.resolve()) in message
    assert "Wrong-key-Pa55" not in message and material.client_key_password not in message


def test_resolve_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCORING_CONFIG", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("SCORING_KAFKA_CONFIG", raising=False)
    path = write(tmp_path, "bootstrap.servers=from-file:9096\nsecurity.protocol=SSL\n")
    config = resolve(config_file=path)
    assert config.bootstrap == "from-file:9096"
    assert dict(config.properties) == {"security.protocol": "SSL"}
    assert config.source == path.resolve()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-env:9092")
    assert resolve(config_file=path).bootstrap == "from-env:9092"
    assert resolve("from-flag:9092", path).bootstrap == "from-flag:9092"
    monkeypatch.setenv("SCORING_KAFKA_CONFIG", str(path))
    assert resolve().properties == {"security.protocol": "SSL"}
    other = tmp_path / "other.properties"
    other.write_text("security.protocol=SASL_SSL\n")
    assert resolve(config_file=other).protocol == "SASL_SSL"  # the flag wins


def test_resolve_from_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "bootstrap.servers=b:1\n")
    toml = tmp_path / "scoring.toml"
    toml.write_text(f'kafka_config = "{path}"\n')
    monkeypatch.setenv("SCORING_CONFIG", str(toml))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("SCORING_KAFKA_CONFIG", raising=False)
    assert resolve().bootstrap == "b:1"


def test_resolve_without_any_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCORING_CONFIG", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("SCORING_KAFKA_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="--kafka-config / SCORING_KAFKA_CONFIG"):
        resolve(config_file=write(tmp_path, "security.protocol=SSL\n"))


def test_from_file_takes_only_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092")  # not consulted
    path = write(tmp_path, "bootstrap.servers=b:9096\nsecurity.protocol=SSL\n")
    config = KafkaClientConfig.from_file(path)
    assert (config.bootstrap, dict(config.properties)) == ("b:9096", {"security.protocol": "SSL"})
    with pytest.raises(KafkaConfigError, match=r"bootstrap\.servers is missing"):
        KafkaClientConfig.from_file(write(tmp_path, "security.protocol=SSL\n"))


def test_stream_worker_reads_the_file_and_keeps_it_off_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scoring.stream import main as stream_main

    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SCORING_KAFKA_CONFIG", "SCORING_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_PASSWORD", SECRET)
    path = write(
        tmp_path,
        "bootstrap.servers=b:9096\nsecurity.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
        "sasl.password=${KAFKA_PASSWORD}\nlinger.ms=5\n",
    )
    command = stream_main.command("m", ("i", "o", "d"), "", kafka_config=path)
    assert "--bootstrap" not in command and SECRET not in " ".join(command)
    args = stream_main.parse_args([*command[3:], "-X", "linger.ms=20"])
    config = stream_main.config_from(args)
    assert config.bootstrap == "b:9096"
    assert config.kafka["sasl.password"] == SECRET
    assert config.kafka["linger.ms"] == "20"  # -X over the file
    client = stream_main.client_from(args)
    assert client.source == path.resolve() and SECRET not in client.describe()


def test_faust_settings_from_the_dev_broker_files(tmp_path: Path) -> None:
    import faust
    from scoring.dev import kafka_security
    from scoring.stream.kafka_config import faust_settings

    material = kafka_security.ensure_material(tmp_path)
    sasl_file, mtls_file = kafka_security.write_client_files(
        material, tmp_path, "127.0.0.1:1", "127.0.0.1:2"
    )
    sasl = faust_settings(KafkaClientConfig.from_file(sasl_file))
    assert sasl["broker"] == ["kafka://127.0.0.1:1"]
    credentials = sasl["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.protocol.value == "SASL_SSL" and credentials.ssl_context is not None
    assert material.password not in repr(sasl)
    mtls = faust_settings(KafkaClientConfig.from_file(mtls_file))  # loads the encrypted key
    assert isinstance(mtls["broker_credentials"], faust.SSLCredentials)
    assert faust_settings(KafkaClientConfig("a:1,b:2")) == {
        "broker": ["kafka://a:1", "kafka://b:2"]
    }

    tuned = KafkaClientConfig("a:1", {"security.protocol": "SSL", "linger.ms": "5"}, sasl_file)
    with pytest.raises(ConfigError, match=r"cannot take linger\.ms in .*scoring stream run"):
        faust_settings(tuned)
    oauth = KafkaClientConfig(
        "a:1", {"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}
    )
    with pytest.raises(ConfigError, match="not OAUTHBEARER"):
        faust_settings(oauth)


def test_dev_material_is_generated_once_and_private(tmp_path: Path) -> None:
    from scoring.dev import kafka_security

    first = kafka_security.ensure_material(tmp_path)
    again = kafka_security.ensure_material(tmp_path)
    assert (
        again.password == first.password
        and again.ca_cert.read_bytes() == first.ca_cert.read_bytes()
    )
    assert first.password not in repr(first)
    for private in (first.keystore, first.client_key, first.directory / "secrets.json"):
        assert private.stat().st_mode & 0o077 == 0
    (first.directory / "secrets.json").unlink()
    from scoring.errors import BrokerError

    with pytest.raises(BrokerError, match="incomplete"):
        kafka_security.ensure_material(tmp_path)
