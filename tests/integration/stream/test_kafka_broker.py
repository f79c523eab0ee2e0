"""The local Kafka broker (scoring.dev.kafka_broker): a real KRaft broker from infra/kafka/jars."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from scoring.dev import kafka_broker
from scoring.errors import BrokerError
from scoring.settings import PROJECT_ROOT
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
        # The controller has accepted it; the broker's metadata cache may learn of it a
        # moment later (a list right away came back empty once on a loaded machine).
        deadline = time.monotonic() + 10
        while TOPIC not in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.2)
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


# --- `scoring dev`: the broker and its topics, driven from a shell as a user would -------


@dataclass(frozen=True)
class DevShell:
    """A shell's environment with a data dir of its own, and the `scoring` on its PATH."""

    home: Path
    env: dict[str, str]

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        """``script`` in bash (``set -euo pipefail``), from the checkout."""
        return subprocess.run(
            ["bash", "-c", f"set -euo pipefail\n{script}"],
            env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    def scoring(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(shlex.join(["scoring", *args]))

    def up(self) -> str:
        """`eval "$(scoring dev up)"` (at once if it runs already): KAFKA_BOOTSTRAP_SERVERS."""
        done = self.run('eval "$(scoring dev up)"; echo "$KAFKA_BOOTSTRAP_SERVERS"')
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevShell]:
    """One shell's data dir for this module's `scoring dev` tests: one broker start for all."""
    home = tmp_path_factory.mktemp("dev") / "home"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SCORING_", "KAFKA_", "MLFLOW_"))
    }
    env["SCORING_HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    shell = DevShell(home, env)
    try:
        yield shell
    finally:
        down = shell.scoring("dev", "down")
        kafka_broker.stop(home / "kafka")  # never leave a JVM behind
    assert down.returncode == 0 and "Kafka broker stopped" in down.stdout, down.stderr
    assert not kafka_broker.is_running(home / "kafka")


def _partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    """Partitions per topic, as kafka-python (not the project's client) sees them."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
    finally:
        admin.close()


def test_eval_dev_up_points_the_next_commands_at_the_broker(
    dev: DevShell, artifact_dir: Path
) -> None:
    topic = "loan_applications"
    done = dev.run(
        f"""
        eval "$(scoring dev up)"
        echo "printed=$(scoring dev up 2>/dev/null)"
        echo "bootstrap=$KAFKA_BOOTSTRAP_SERVERS"
        # No --bootstrap: the processor finds the broker through the exported variable.
        scoring stream run --model {artifact_dir} --input-topic {topic} \
            --output-topic {topic}.out --dlq-topic {topic}.dlq || echo "stream=$?"
        """
    )
    assert done.returncode == 0, done.stderr
    said = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    broker = kafka_broker.running(dev.home / "kafka")
    assert broker is not None and said["bootstrap"] == broker.bootstrap
    assert re.fullmatch(r"127\.0\.0\.1:\d+", said["bootstrap"])
    # stdout is only the line for eval; the words for people are on stderr.
    assert said["printed"] == f"export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}"
    assert "scoring dev topic create" in done.stderr and "scoring dev down" in done.stderr
    admin = KafkaAdminClient(bootstrap_servers=said["bootstrap"])
    assert topic not in admin.list_topics()
    admin.close()

    assert said["stream"] == "4"
    assert (
        f"error: input topic '{topic}' does not exist on {broker.bootstrap}. Create it with a "
        f"partition for each worker you will run: `scoring dev topic create {topic} "
        "--partitions 3` on the dev broker (`scoring dev up`), `kafka-topics.sh "
        f"--bootstrap-server {broker.bootstrap} --create --topic {topic} --partitions 3` "
        "on another cluster."
    ) in done.stderr


def test_dev_topic_create_makes_the_partitions_asked_for_once(dev: DevShell) -> None:
    bootstrap = dev.up()
    two, default = "dev-topic-two", "dev-topic-default"

    made = dev.scoring("dev", "topic", "create", two, f"{two}.b", "--partitions", "2")
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == [
        f"created topic {two} (2 partitions) on {bootstrap}",
        f"created topic {two}.b (2 partitions) on {bootstrap}",
    ]
    made = dev.scoring("dev", "topic", "create", default)
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"created topic {default} (3 partitions) on {bootstrap}\n"
    assert _partitions(bootstrap, [two, f"{two}.b", default]) == {
        two: 2,
        f"{two}.b": 2,
        default: 3,
    }

    again = dev.scoring("dev", "topic", "create", two, "--partitions", "2")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"topic {two} exists already (2 partitions) on {bootstrap}\n"

    listed = dev.scoring("dev", "topic", "list")
    assert listed.returncode == 0, listed.stderr
    lines = [line.split() for line in listed.stdout.splitlines()]
    assert [two, "2", "partitions"] in lines and [default, "3", "partitions"] in lines
    assert not any(words[0].startswith("__") for words in lines)  # internal topics


def test_dev_topic_create_refuses_another_partition_count(dev: DevShell) -> None:
    bootstrap = dev.up()
    topic, new = "dev-topic-refused", "dev-topic-refused.new"
    assert dev.scoring("dev", "topic", "create", topic, "--partitions", "1").returncode == 0

    refused = dev.scoring("dev", "topic", "create", topic, new, "--partitions", "4")
    assert refused.returncode == 4, refused.stderr
    assert refused.stdout == f"created topic {new} (4 partitions) on {bootstrap}\n"
    assert (
        f"error: topic {topic} has 1 partition, not 4 (on {bootstrap}); nothing was changed. "
        "Ask for the partitions it has with --partitions, or choose another name."
    ) in refused.stderr
    assert _partitions(bootstrap, [topic, new]) == {topic: 1, new: 4}
