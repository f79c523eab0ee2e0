"""Topics, producers, read_committed readers and processor subprocesses for stream tests.

Outputs are read with kafka-python, a client independent of the processor's own
(confluent-kafka): a bug the two clients shared would otherwise pass unseen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, TransactionState
from kafka.consumer.fetcher import ConsumerRecord
from scoring.dev.kafka_broker import free_port
from scoring.settings import PROJECT_ROOT
from scoring.stream import main as stream_job
from scoring.stream import topics as shared_topics
from scoring.stream.kafka_config import KafkaClientConfig
from scoring.stream.metrics import fetch_health

PARTITIONS = 3

# librdkafka property -> kafka-python option, for the tests' independent reader.
_KAFKA_PYTHON = {
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
}


def kafka_python_options(config: KafkaClientConfig) -> dict[str, Any]:
    """The file's security settings as kafka-python options (a second, independent client).

    Fails on a property it cannot map rather than connecting some other way. The bootstrap
    address is not included: pass ``config.bootstrap`` next to them.
    """
    unknown = sorted(set(config.properties) - set(_KAFKA_PYTHON))
    assert not unknown, f"no kafka-python option for {unknown}"
    options: dict[str, Any] = {}
    for key, value in config.properties.items():
        options[_KAFKA_PYTHON[key]] = value.upper() if key == "security.protocol" else value
    return options


@dataclass(frozen=True)
class Topics:
    """One test's topics, and the consumer group of the workers that process them.

    Tests get unique topic names from the ``topics`` fixture, so each has its own group
    too, and with it its own transactional ids and static member ids (both are derived
    from the group and the worker id): no two tests could ever fence each other.
    """

    input: str
    output: str
    dlq: str

    @property
    def group(self) -> str:
        return f"{self.input}.group"


def create_topics(bootstrap: str, topics: Topics, partitions: int = PARTITIONS) -> None:
    shared_topics.create(bootstrap, (topics.input, topics.output, topics.dlq), partitions)


def produce(bootstrap: str, topic: str, events: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    return shared_topics.produce(bootstrap, topic, events)


def committed_reader(
    bootstrap: str, topic: str, partitions: int = PARTITIONS, **config: Any
) -> KafkaConsumer:
    """A kafka-python ``read_committed`` consumer of every partition, from the beginning."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        **config,
    )
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    return consumer


class OpenTransactions:
    """Compares the ``read_committed`` and ``read_uncommitted`` views of a topic's ends.

    A partition's last stable offset (what ``read_committed`` readers may see) stays below
    its high watermark while a transaction that wrote to it is open; with one writer,
    that gap is the writer's open transaction.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.views = {
            level: KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=level)
            for level in ("read_committed", "read_uncommitted")
        }

    def ends(self, level: str) -> list[int]:
        ends = self.views[level].end_offsets(self.partitions)
        return [ends[tp] for tp in self.partitions]

    def open_gap(self) -> tuple[list[int], list[int]]:
        """(last stable offsets, high watermarks), read in that order."""
        return self.ends("read_committed"), self.ends("read_uncommitted")

    def close(self) -> None:
        for view in self.views.values():
            view.close()


def ongoing_transactions(bootstrap: str, transactional_ids: Iterable[str]) -> set[str]:
    """Which of ``transactional_ids`` have a transaction open, as their coordinator says."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_transactions(list(transactional_ids))
    finally:
        admin.close()
    return {tid for tid, d in described.items() if d.state == TransactionState.ONGOING}


def read_all(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float = 60,
    partitions: int = PARTITIONS,
    settle: float = 1.0,
    **config: Any,
) -> list[ConsumerRecord]:
    """Every committed record of ``topic``, waiting until ``expected`` arrived (or timeout).

    After the count is reached, keeps reading for ``settle`` seconds so that duplicates
    beyond the expected count would be seen. ``config``: more kafka-python options (e.g.
    :func:`kafka_python_options` for a secured listener).
    """
    consumer = committed_reader(bootstrap, topic, partitions, **config)
    try:
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        settled = time.monotonic() + settle
        while time.monotonic() < settled:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


class ProcessorProcess:
    """``jobs/stream/process.py`` as a child process, with its log in a file.

    It joins the group of ``topics`` unless ``extra`` names one (``--group``).
    """

    def __init__(
        self,
        bootstrap: str,
        model: str | Path,
        topics: Topics,
        log_dir: Path,
        worker: str = "0",
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.log_file = log_dir / f"processor-{worker}-{time.monotonic_ns()}.log"
        group = () if "--group" in extra else ("--group", topics.group)
        command = stream_job.command(
            str(model),
            (topics.input, topics.output, topics.dlq),
            bootstrap,
            *("--worker", worker, "--metrics-port", str(self.metrics_port), *group, *extra),
        )
        self._log = self.log_file.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def health(self) -> dict[str, Any] | None:
        try:
            return fetch_health(f"http://127.0.0.1:{self.metrics_port}/health")
        except (OSError, ValueError):
            return None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())

    def wait_until(self, check: Any, timeout: float = 60, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"processor exited ({self.process.returncode}):\n{self.log()}")
            health = self.health()
            if health is not None and check(health):
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()}")

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_until(
            lambda h: h["status"] == "ok" and h["assigned"], timeout, "partitions assigned"
        )

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process keeps every socket and its state, and does nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def pause_inside_transaction(self, probe: OpenTransactions, attempts: int = 300) -> list[int]:
        """Freeze the worker at a moment its transaction is open; returns the watermarks.

        Pauses, and looks at the output's two views twice, half a second apart: a gap
        that stays while the worker is frozen is an open transaction, not a commit whose
        markers are being written. Otherwise resumes it for a moment and tries again.
        The caller kills or resumes the worker.
        """
        for attempt in range(attempts):
            self.pause()
            stable, high = probe.open_gap()
            if any(s < h for s, h in zip(stable, high, strict=True)):
                time.sleep(0.5)
                again, _ = probe.open_gap()
                if any(s < h for s, h in zip(again, high, strict=True)):
                    return high
            self.resume()
            time.sleep(0.003 * (attempt % 7))
        raise AssertionError(f"no open transaction seen in {attempts} pauses:\n{self.log()}")

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def log(self) -> str:
        """The end of the worker's log, also after ``wait()`` closed our handle on it."""
        if not self._log.closed:
            self._log.flush()
        return self.log_file.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self._log.close()


def outputs_by_key(records: Sequence[ConsumerRecord]) -> dict[bytes, list[dict[str, Any]]]:
    by_key: dict[bytes, list[dict[str, Any]]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(json.loads(record.value))
    return by_key


def headers(record: ConsumerRecord) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}
