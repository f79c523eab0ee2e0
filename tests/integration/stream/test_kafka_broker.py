"""The local Kafka broker (scoring.dev.kafka_broker): a real KRaft broker from infra/kafka/jars."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from scoring.dev import kafka_broker
from scoring.errors import BrokerError
from scoring.stream import topics

pytestmark = pytest.mark.integration

TOPIC = "scoring-requests"
PARTITIONS = 3
VALUES = [f"event-{i:03d}".encode() for i in range(100)]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "kafka"
    yield path
    kafka_broker.stop(path)  # never leave a JVM behind, whatever the test did


def _create_topic(bootstrap: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)],
            validate_only=False,
        )
        assert TOPIC in admin.list_topics()
    finally:
        admin.close()


def _produce_transactionally(bootstrap: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="scoring-test-tx")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i, value in enumerate(VALUES):
            producer.send(TOPIC, key=str(i).encode(), value=value)
        producer.commit_transaction()
    finally:
        producer.close()


def _consume_all(bootstrap: str, expected: int, timeout: float = 20) -> list[bytes]:
    consumer = topics.reader(bootstrap, TOPIC, PARTITIONS)
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
        # One more poll: nothing beyond the expected records may show up.
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(r.value for r in records)
        return values
    finally:
        consumer.close()


def _listening_addresses(pid: int) -> list[str]:
    """Local ``addr:port`` of every listening TCP socket of ``pid``, read from /proc.

    No tool needed (``ss`` may be missing); IPv4 only, as the broker runs with
    ``java.net.preferIPv4Stack``.
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    addresses = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # 0A: LISTEN
            host, port = local.split(":")
            ip = ".".join(str(b) for b in reversed(bytes.fromhex(host)))
            addresses.append(f"{ip}:{int(port, 16)}")
    return addresses


def _pid_exists(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_transactional_round_trip_survives_restart(state_dir: Path) -> None:
    began = time.monotonic()
    broker = kafka_broker.start(state_dir)
    started = time.monotonic() - began
    assert kafka_broker.is_running(state_dir)
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"

    addresses = _listening_addresses(broker.pid)
    assert sorted(addresses) == sorted(
        f"127.0.0.1:{p}" for p in (broker.port, broker.controller_port)
    )

    _create_topic(broker.bootstrap)
    _produce_transactionally(broker.bootstrap)
    assert sorted(_consume_all(broker.bootstrap, len(VALUES))) == VALUES

    began = time.monotonic()
    assert kafka_broker.stop(broker) is True
    stopped = time.monotonic() - began
    assert not kafka_broker.is_running(state_dir)
    assert not _pid_exists(broker.pid)

    began = time.monotonic()
    again = kafka_broker.start(state_dir)
    restarted = time.monotonic() - began
    assert (again.port, again.controller_port, again.cluster_id) == (
        broker.port,
        broker.controller_port,
        broker.cluster_id,
    )
    assert again.pid != broker.pid
    assert sorted(_consume_all(again.bootstrap, len(VALUES))) == VALUES

    assert kafka_broker.stop(again) is True
    assert not _pid_exists(again.pid)
    assert kafka_broker.stop(again) is False  # idempotent
    print(f"start {started:.1f}s, stop {stopped:.1f}s, restart {restarted:.1f}s")


def test_start_is_idempotent_and_keeps_its_ports(state_dir: Path) -> None:
    broker = kafka_broker.start(state_dir)
    assert kafka_broker.start(state_dir) == broker
    with pytest.raises(BrokerError, match="uses ports"):
        kafka_broker.start(state_dir, port=broker.port + 1)
    kafka_broker.stop(state_dir)
    assert not _pid_exists(broker.pid)
    assert not kafka_broker.is_running(state_dir)
    assert kafka_broker.stop(state_dir) is False


def test_missing_jars_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="make kafka-jars"):
        kafka_broker.start(tmp_path / "kafka", jars_dir=tmp_path / "no-jars")


def test_dev_up_and_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scoring.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("SCORING_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    try:
        up = runner.invoke(app, ["dev", "up"])
        assert up.exit_code == 0, up.output
        bootstrap = up.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", bootstrap)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.list_topics()
        admin.close()
        assert runner.invoke(app, ["dev", "up"]).stdout.strip().splitlines()[-1] == bootstrap
    finally:
        down = runner.invoke(app, ["dev", "down"])
    assert down.exit_code == 0 and "stopped" in down.stdout
    assert not kafka_broker.is_running(tmp_path / "home" / "kafka")
