"""No loss and no duplicates when things go wrong mid-stream, against a real broker.

Each test feeds 12,000 demo events at a steady rate while something happens to the
processor, the broker, the registry or the consumer group, then reads the output topic
``read_committed`` and checks that every valid event has exactly one prediction and
every refused one exactly one dead letter.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from scoring.dev import kafka_broker
from scoring.dev.demo.data import generate_day
from scoring.dev.demo.train import TrainedModel
from scoring.dev.kafka_broker import Broker
from scoring.lifecycle import registry
from scoring.lifecycle.packaging import package

from tests.integration.kafka_helpers import (
    ProcessorProcess,
    Topics,
    create_topics,
    headers,
    outputs_by_key,
    produce,
    read_all,
)
from tests.integration.stream.test_stream import events_of, expected_scores

pytestmark = pytest.mark.integration

EVENTS = 12_000


@pytest.fixture(scope="module")
def stream_table() -> pa.Table:
    return generate_day(date(2026, 11, 2), EVENTS, seed=11)


class Feeder(threading.Thread):
    """Produces events in chunks at a steady rate, so the stream is live while tests act."""

    def __init__(self, bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events = bootstrap, topic, events
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, len(self.events), 400):
                produce(self.bootstrap, self.topic, self.events[start : start + 400])
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> None:
        self.join(120)
        assert not self.is_alive() and self.error is None, self.error


def assert_exactly_once(
    bootstrap: str, topics: Topics, valid: dict[bytes, float], refused: set[bytes]
) -> list:
    out = read_all(bootstrap, topics.output, len(valid), timeout=120, settle=3)
    dead = read_all(bootstrap, topics.dlq, len(refused), timeout=30, settle=1)
    by_key = outputs_by_key(out)
    missing = set(valid) - set(by_key)
    doubled = {k for k, v in by_key.items() if len(v) > 1}
    assert not missing and not doubled, f"{len(missing)} missing, {len(doubled)} doubled"
    assert set(by_key) == set(valid)
    assert {k: p[0]["score"] for k, p in by_key.items()} == valid
    assert sorted(r.key for r in dead) == sorted(refused)
    return out


def test_kill_9_mid_stream_then_restart(
    kafka: Broker,
    topics: Topics,
    artifact_dir: Path,
    stream_table: pa.Table,
    tmp_path: Path,
) -> None:
    valid, refused = expected_scores(artifact_dir, stream_table)
    feeder = Feeder(kafka.bootstrap, topics.input, events_of(artifact_dir, stream_table))
    first = ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path)
    second = None
    try:
        first.wait_ready()
        feeder.start()
        first.wait_until(lambda h: h["events_in"] >= 3000, what="3,000 events in")
        first.kill()
        # The same worker id: its transactional id fences the dead process at once.
        second = ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path)
        feeder.finish()
        assert_exactly_once(kafka.bootstrap, topics, valid, refused)
        assert second.terminate() == 0, second.log()
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own, since the test stops it."""
    state_dir = tmp_path / "kafka"
    yield kafka_broker.start(state_dir)
    kafka_broker.stop(state_dir)


def test_broker_restart_mid_stream(
    own_broker: Broker, artifact_dir: Path, stream_table: pa.Table, tmp_path: Path
) -> None:
    topics = Topics("restart.in", "restart.out", "restart.dlq")
    create_topics(own_broker.bootstrap, topics)
    valid, refused = expected_scores(artifact_dir, stream_table)
    events = events_of(artifact_dir, stream_table)
    half = len(events) // 2
    processor = ProcessorProcess(own_broker.bootstrap, artifact_dir, topics, tmp_path)
    try:
        processor.wait_ready()
        feeder = Feeder(own_broker.bootstrap, topics.input, events[:half])
        feeder.start()
        processor.wait_until(lambda h: h["events_in"] >= 2000, what="2,000 events in")
        feeder.finish()
        kafka_broker.stop(own_broker)
        back = kafka_broker.start(own_broker.state_dir)
        assert back.bootstrap == own_broker.bootstrap
        produce(own_broker.bootstrap, topics.input, events[half:])
        assert_exactly_once(own_broker.bootstrap, topics, valid, refused)
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()


def test_promotion_mid_stream_switches_version_between_batches(
    kafka: Broker,
    topics: Topics,
    scoring_home: Path,
    trained: TrainedModel,
    stream_table: pa.Table,
    artifact_dir: Path,
    tmp_path: Path,
) -> None:
    first, second = (
        package(trained.model_file, "fraud", trained.sample_file, spec_file=trained.contract_file)
        for _ in range(2)
    )
    registry.promote("fraud", first.version)
    valid, refused = expected_scores(artifact_dir, stream_table)
    feeder = Feeder(kafka.bootstrap, topics.input, events_of(artifact_dir, stream_table))
    processor = ProcessorProcess(
        kafka.bootstrap,
        "models:/fraud@champion",
        topics,
        tmp_path,
        extra=["--model-poll-seconds", "0.5"],
    )
    try:
        processor.wait_ready()
        assert processor.health()["model_version"] == first.version  # type: ignore[index]
        feeder.start()
        processor.wait_until(lambda h: h["events_in"] >= 3000, what="3,000 events in")
        registry.promote("fraud", second.version)
        processor.wait_until(
            lambda h: h["model_version"] == second.version, timeout=30, what="the new version"
        )
        feeder.finish()
        out = assert_exactly_once(kafka.bootstrap, topics, valid, refused)
        metrics = processor.metrics()
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    versions = {first.version: 0, second.version: 0}
    for partition in {r.partition for r in out}:
        seen = [
            headers(r)["model_version"]
            for r in sorted(out, key=lambda r: r.offset)
            if r.partition == partition
        ]
        # Within a partition the old version stops and the new one starts, once.
        switch = seen.index(second.version) if second.version in seen else len(seen)
        assert set(seen[:switch]) <= {first.version} and set(seen[switch:]) <= {second.version}
        for v in seen:
            versions[v] += 1
    assert versions[first.version] > 0 and versions[second.version] > 0
    assert f'scoring_stream_model_version{{model="fraud"}} {float(second.version)}' in metrics


def test_two_workers_then_one_leaves(
    kafka: Broker, topics: Topics, artifact_dir: Path, stream_table: pa.Table, tmp_path: Path
) -> None:
    valid, refused = expected_scores(artifact_dir, stream_table)
    feeder = Feeder(kafka.bootstrap, topics.input, events_of(artifact_dir, stream_table))
    workers = [
        ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path, worker=w)
        for w in ("0", "1")
    ]
    try:
        for worker in workers:
            worker.wait_ready()
        # Three partitions shared by two workers: neither holds all of them.
        for worker in workers:
            worker.wait_until(lambda h: 0 < len(h["assigned"]) < 3, what="a share")
        feeder.start()
        for worker in workers:
            worker.wait_until(lambda h: h["events_in"] > 500, what="events on both workers")
        assert workers[1].terminate() == 0, workers[1].log()  # SIGTERM: finish, commit, leave
        workers[0].wait_until(lambda h: len(h["assigned"]) == 3, what="all partitions")
        feeder.finish()
        assert_exactly_once(kafka.bootstrap, topics, valid, refused)
        assert workers[0].terminate() == 0, workers[0].log()
    finally:
        for worker in workers:
            worker.stop()
