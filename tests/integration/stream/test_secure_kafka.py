"""The local broker's secure listeners with the client files it writes, and refused clients.

Every client here is configured from a client properties file only (``--kafka-config``):
a transactional librdkafka producer writes, and both a librdkafka consumer and kafka-python
(an independent client, its options mapped from the same file) read ``read_committed``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, TopicPartition
from scoring.dev.kafka_broker import SecureListeners
from scoring.errors import StreamError
from scoring.settings import PROJECT_ROOT
from scoring.stream.kafka_config import KafkaClientConfig, preflight, resolve

from tests.integration.kafka_helpers import kafka_python_options

pytestmark = pytest.mark.integration

EVENTS = 200


def config_of(secure: SecureListeners, listener: str) -> KafkaClientConfig:
    return resolve(
        config_file=secure.sasl_ssl_config if listener == "sasl_ssl" else secure.mtls_config
    )


def write_file(path: Path, lines: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return path


@pytest.fixture(autouse=True)
def _no_ambient_kafka_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SCORING_KAFKA_CONFIG", "SCORING_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("listener", ["sasl_ssl", "mtls"])
def test_transactional_round_trip_through_the_client_file(
    secure_kafka: SecureListeners, listener: str
) -> None:
    config = config_of(secure_kafka, listener)
    assert config.protocol == ("SASL_SSL" if listener == "sasl_ssl" else "SSL")
    topic = f"secure-{listener}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(config.client())
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)

    producer = Producer(config.client({"transactional.id": f"secure-test-{topic}"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(EVENTS):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.commit_transaction(30)
    # An aborted transaction over the same listener: read_committed readers never see it.
    producer.begin_transaction()
    producer.produce(topic, key=b"aborted", value=b"x")
    producer.flush(30)
    producer.abort_transaction(30)

    consumer = Consumer(
        config.client(
            {
                "group.id": f"secure-test-{topic}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(got) < EVENTS and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=1):
            assert message.error() is None, message.error()
            got.append(message.key())
    consumer.close()
    expected = sorted(f"k{i}".encode() for i in range(EVENTS))
    assert sorted(got) == expected

    reader = KafkaConsumer(
        bootstrap_servers=config.bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        **kafka_python_options(config),
    )
    try:
        reader.assign([TopicPartition(topic, p) for p in range(2)])
        reader.seek_to_beginning()
        independent: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(independent) < EVENTS and time.monotonic() < deadline:
            for batch in reader.poll(timeout_ms=500).values():
                independent.extend(r.key for r in batch)
        for batch in reader.poll(timeout_ms=1000).values():  # anything beyond: a duplicate
            independent.extend(r.key for r in batch)
    finally:
        reader.close()
    assert sorted(independent) == expected


def test_clients_without_tls_or_credentials_are_refused(
    secure_kafka: SecureListeners, tmp_path: Path
) -> None:
    sasl = config_of(secure_kafka, "sasl_ssl")
    mtls = config_of(secure_kafka, "mtls")
    ca = sasl.properties["ssl.ca.location"]
    refused = {
        # A plaintext client on the SASL_SSL listener: no TLS, no answer.
        "plaintext on SASL_SSL": KafkaClientConfig(sasl.bootstrap),
        # TLS but no login on the SASL_SSL listener.
        "TLS without SASL": KafkaClientConfig(
            sasl.bootstrap, {"security.protocol": "SSL", "ssl.ca.location": ca}
        ),
        # TLS without a client certificate on the mutual-TLS listener.
        "no client certificate": KafkaClientConfig(
            mtls.bootstrap, {"security.protocol": "SSL", "ssl.ca.location": ca}
        ),
        # A plaintext client on the mutual-TLS listener.
        "plaintext on mTLS": KafkaClientConfig(mtls.bootstrap),
    }
    for what, config in refused.items():
        began = time.monotonic()
        with pytest.raises(StreamError) as caught:
            preflight(config, timeout=4)
        assert time.monotonic() - began < 10, what
        assert config.bootstrap in str(caught.value), what
    # The same preflight passes with the generated files: the refusals above are the listeners'.
    preflight(sasl, timeout=30)
    preflight(mtls, timeout=30)


def test_a_wrong_password_fails_fast_naming_listener_and_mechanism(
    secure_kafka: SecureListeners, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = config_of(secure_kafka, "sasl_ssl")
    wrong = "Wrong-Pa55word-" + uuid.uuid4().hex
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", wrong)
    path = write_file(
        tmp_path / "wrong.properties",
        {
            **{k: v for k, v in good.properties.items() if k != "sasl.password"},
            "bootstrap.servers": good.bootstrap,
            "sasl.password": "${TEST_KAFKA_PASSWORD}",
        },
    )
    config = resolve(config_file=path)
    began = time.monotonic()
    with pytest.raises(StreamError) as caught:
        preflight(config, timeout=30)
    elapsed = time.monotonic() - began
    message = str(caught.value)
    assert elapsed < 10, f"took {elapsed:.1f}s to refuse a wrong password"
    assert caught.value.exit_code == 4
    assert good.bootstrap in message and "SASL_SSL" in message and "SCRAM-SHA-512" in message
    assert "sasl.password" in message and str(path) in message
    assert wrong not in message and good.properties["sasl.password"] not in message


def test_dev_up_secure_prints_the_listener_and_a_working_file(tmp_path: Path) -> None:
    env = {**os.environ, "SCORING_HOME": str(tmp_path / "home")}
    for name in ("SCORING_KAFKA_CONFIG", "SCORING_CONFIG"):
        env.pop(name, None)
    # A shell that ran `eval "$(scoring dev up)"` before has the plaintext listener here;
    # the secure start must still check its own listeners (nothing answers on port 9).
    env["KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:9"
    scoring = [str(Path(sys.executable).with_name("scoring"))]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*scoring, *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip

    try:
        up = cli("dev", "up", "--secure")
        assert up.returncode == 0, up.stderr
        # `export NAME=VALUE` lines for eval, read as the shell reads them.
        words = [shlex.split(line) for line in up.stdout.splitlines()]
        assert all(len(w) == 2 and w[0] == "export" for w in words), up.stdout
        printed = dict(w[1].split("=", 1) for w in words)
        assert set(printed) == {"KAFKA_BOOTSTRAP_SERVERS", "SCORING_KAFKA_CONFIG"}
        config_file = Path(printed["SCORING_KAFKA_CONFIG"])
        assert config_file.stat().st_mode & 0o077 == 0  # holds the password: owner only
        config = resolve(config_file=config_file)
        assert config.bootstrap == printed["KAFKA_BOOTSTRAP_SERVERS"]
        assert (config.protocol, config.mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
        preflight(config, timeout=30)
        assert "mTLS" in up.stderr and config.properties["sasl.password"] not in up.stderr
        again = cli("dev", "up", "--secure")  # already running: the same listener, at once
        assert again.returncode == 0 and again.stdout == up.stdout
    finally:
        down = cli("dev", "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    with pytest.raises(StreamError):
        preflight(config, timeout=2)


@pytest.mark.parametrize("listener", ["sasl_ssl", "mtls"])
def test_a_faust_app_connects_with_the_same_file(
    secure_kafka: SecureListeners, listener: str
) -> None:
    """faust_settings gives faust's own credentials; its aiokafka driver turns them into a
    producer that writes through the secured listener (and a wrong password does not)."""
    import asyncio
    import dataclasses

    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
    from scoring.stream.kafka_config import faust_settings

    config = config_of(secure_kafka, listener)
    settings = faust_settings(config)
    assert settings["broker"] == [f"kafka://{config.bootstrap}"]
    # The listener's secret: the SCRAM password, or the client key's password for mTLS.
    secret = config.properties["sasl.password" if listener == "sasl_ssl" else "ssl.key.password"]
    assert secret not in repr(settings)

    async def send(settings: dict[str, object]) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=config.bootstrap,
            request_timeout_ms=10_000,
            **credentials_to_aiokafka_auth(settings["broker_credentials"]),  # type: ignore[arg-type]
        )
        try:
            await producer.start()
            await producer.send_and_wait(f"faust-{listener}", b"through the file")
        finally:
            await producer.stop()

    asyncio.run(send(settings))
    if listener == "sasl_ssl":
        wrong = dataclasses.replace(
            config, properties={**config.properties, "sasl.password": "not-it"}
        )
        with pytest.raises(KafkaError):
            asyncio.run(send(faust_settings(wrong)))
