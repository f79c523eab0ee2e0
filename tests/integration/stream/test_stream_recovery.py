"""No loss and no duplicates when things go wrong mid-stream, against a real broker.

Something happens to the processor, the broker, the registry or the consumer group while
events flow (fed at a steady rate, or drained from a backlog of 60,000); then the output
topic is read ``read_committed`` with an independent client and every valid event must
have exactly one prediction and every refused one exactly one dead letter. Crashes are
shown to land inside an open transaction: the worker is frozen (SIGSTOP) at a moment its
output's last stable offset is below the high watermark, and killed there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from scoring.dev import kafka_broker
from scoring.dev.demo.data import generate_day
from scoring.dev.demo.train import TrainedModel, train
from scoring.dev.kafka_broker import Broker
from scoring.lifecycle import registry
from scoring.lifecycle.packaging import package
from scoring.stream.processor import StreamConfig

from tests.integration.kafka_helpers import (
    OpenTransactions,
    ProcessorProcess,
    Topics,
    create_topics,
    headers,
    ongoing_transactions,
    outputs_by_key,
    produce,
    read_all,
)
from tests.integration.stream.test_stream import (
    Backlog,
    backlog_of,
    events_of,
    expected_scores,
)

pytestmark = pytest.mark.integration

EVENTS = 12_000
BACKLOG = 60_000
# Long, so that a transaction the broker times out cannot pass for one a restart aborted.
TRANSACTION_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def stream_table() -> pa.Table:
    return generate_day(date(2026, 11, 2), EVENTS, seed=11)


@pytest.fixture(scope="module")
def backlog(artifact_dir: Path) -> Backlog:
    return backlog_of(artifact_dir, date(2026, 11, 4), BACKLOG, seed=13)


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
    out, _ = assert_each_once(bootstrap, topics, set(valid), refused)
    assert {k: p[0]["score"] for k, p in outputs_by_key(out).items()} == valid
    return out


def assert_each_once(
    bootstrap: str, topics: Topics, valid: set[bytes], refused: set[bytes]
) -> tuple[list, list]:
    """One prediction per valid key and one dead letter per refused one; both read back."""
    out = read_all(bootstrap, topics.output, len(valid), timeout=120, settle=3)
    dead = read_all(bootstrap, topics.dlq, len(refused), timeout=30, settle=1)
    by_key = outputs_by_key(out)
    missing = valid - set(by_key)
    doubled = {k for k, v in by_key.items() if len(v) > 1}
    assert not missing and not doubled, f"{len(missing)} missing, {len(doubled)} doubled"
    assert set(by_key) == valid
    assert sorted(r.key for r in dead) == sorted(refused)
    return out, dead


def test_kill_9_three_times_inside_open_transactions_over_a_backlog(
    kafka: Broker,
    topics: Topics,
    artifact_dir: Path,
    backlog: tuple[list[tuple[bytes, bytes]], dict[bytes, float], set[bytes]],
    tmp_path: Path,
) -> None:
    events, valid, refused = backlog
    produce(kafka.bootstrap, topics.input, events)
    # Batches of 2,000: the backlog holds enough transactions for every kill.
    options = [
        *("--transaction-timeout-ms", str(TRANSACTION_TIMEOUT_S * 1000)),
        *("--batch-size", "2000"),
    ]
    probe = OpenTransactions(kafka.bootstrap, topics.output)

    def start() -> ProcessorProcess:
        workers.append(
            ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path, extra=options)
        )
        return workers[-1]

    # The worker's two transactional producers take turns; a kill must be shown to land
    # inside a transaction of each, so the restart is seen to abort either one's at once.
    ids = StreamConfig("", "", "", "", "", group=topics.group).transactional_ids
    killed_inside: list[str] = []
    workers: list[ProcessorProcess] = []
    try:
        worker = start()
        while len(killed_inside) < 3 or set(killed_inside) != set(ids):
            assert len(killed_inside) < 10, f"kills landed only inside {killed_inside}"
            worker.wait_until(lambda h: h["events_in"] >= 500, timeout=90, what="500 events in")
            high = worker.pause_inside_transaction(probe)
            (open_id,) = ongoing_transactions(kafka.bootstrap, ids)
            killed_inside.append(open_id)
            worker.kill()
            killed = time.monotonic()
            stable, _ = probe.open_gap()
            assert any(s < h for s, h in zip(stable, high, strict=True))  # left open
            # The same worker id: its transactional ids fence the dead process, whose open
            # transaction is aborted at once rather than when it times out.
            worker = start()
            while any(s < h for s, h in zip(probe.ends("read_committed"), high, strict=True)):
                elapsed = time.monotonic() - killed
                assert elapsed < TRANSACTION_TIMEOUT_S / 3, f"{elapsed:.0f}s\n{worker.log()}"
                time.sleep(0.1)
        assert_exactly_once(kafka.bootstrap, topics, valid, refused)
        assert time.monotonic() - killed < TRANSACTION_TIMEOUT_S / 2
        assert worker.terminate() == 0, worker.log()
    finally:
        probe.close()
        for started in workers:
            started.stop()


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of this module's own, since its tests kill it (each starts it again on the
    same folder and port, and leaves it running; their topics are their own)."""
    state_dir = tmp_path_factory.mktemp("own-kafka")
    yield kafka_broker.start(state_dir)
    kafka_broker.stop(state_dir)


def test_broker_sigkill_mid_batch_then_restart_on_the_same_data(
    own_broker: Broker, artifact_dir: Path, stream_table: pa.Table, tmp_path: Path
) -> None:
    topics = Topics("restart.in", "restart.out", "restart.dlq")
    create_topics(own_broker.bootstrap, topics)
    valid, refused = expected_scores(artifact_dir, stream_table)
    events = events_of(artifact_dir, stream_table)
    feeder = Feeder(own_broker.bootstrap, topics.input, events)
    processor = ProcessorProcess(own_broker.bootstrap, artifact_dir, topics, tmp_path)
    probe = OpenTransactions(own_broker.bootstrap, topics.output)
    try:
        processor.wait_ready()
        feeder.start()
        processor.wait_until(lambda h: h["events_in"] >= 2000, what="2,000 events in")
        # Frozen inside an open transaction, the broker dies under it without a word.
        processor.pause_inside_transaction(probe)
        probe.close()
        assert kafka_broker.kill(own_broker)
        processor.resume()
        time.sleep(2)  # the processor finds the broker gone mid-batch
        back = kafka_broker.start(own_broker.state_dir)
        assert back.bootstrap == own_broker.bootstrap and back.pid != own_broker.pid
        feeder.finish()  # its producers retried through the outage
        # Every event is in the feed once, so any output seen twice is the processor's.
        fed = read_all(own_broker.bootstrap, topics.input, len(events), settle=1)
        assert sorted(r.key for r in fed) == sorted(key for key, _ in events)
        assert_exactly_once(own_broker.bootstrap, topics, valid, refused)
        assert processor.terminate() == 0, processor.log()
    finally:
        probe.close()
        processor.stop()


def test_broker_sigkill_while_the_worker_idles_then_events_flow_again(
    own_broker: Broker, artifact_dir: Path, stream_table: pa.Table, tmp_path: Path
) -> None:
    # Both producers are idle when the broker dies: each must find the restarted one.
    topics = Topics("idle.in", "idle.out", "idle.dlq")
    create_topics(own_broker.bootstrap, topics)
    table = stream_table.slice(0, 4000)
    valid, refused = expected_scores(artifact_dir, table)
    events = events_of(artifact_dir, table)
    processor = ProcessorProcess(own_broker.bootstrap, artifact_dir, topics, tmp_path)
    try:
        processor.wait_ready()
        for start in range(0, 2000, 100):  # twenty transactions: both producers used
            produce(own_broker.bootstrap, topics.input, events[start : start + 100])
        processor.wait_until(lambda h: h["events_in"] >= 2000, what="2,000 events in")
        assert kafka_broker.kill(own_broker)
        time.sleep(2)
        kafka_broker.start(own_broker.state_dir)
        for start in range(2000, len(events), 100):
            produce(own_broker.bootstrap, topics.input, events[start : start + 100])
        assert_exactly_once(own_broker.bootstrap, topics, valid, refused)
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The demo model trained again on another day's rows: the same contract, other scores."""
    table = generate_day(date(2026, 11, 6), 6000, seed=17)
    return train(table, tmp_path_factory.mktemp("retrained"), "demo", 1)


def test_promotion_mid_stream_switches_version_between_batches(
    kafka: Broker,
    topics: Topics,
    scoring_home: Path,
    trained: TrainedModel,
    retrained: TrainedModel,
    stream_table: pa.Table,
    artifact_dir: Path,
    tmp_path: Path,
) -> None:
    first, second = (
        package(m.model_file, "fraud", m.sample_file, spec_file=m.contract_file)
        for m in (trained, retrained)
    )
    registry.promote("fraud", first.version)
    # Each version's score of every event, from the registered models themselves.
    (old, refused), (new, refused_too) = (
        expected_scores(f"models:/fraud/{v.version}", stream_table) for v in (first, second)
    )
    assert set(old) == set(new) and refused == refused_too
    scores = {first.version: old, second.version: new}
    # Every event tells the versions apart, so a score labelled with the other one shows.
    assert all(old[key] != new[key] for key in old)
    events = events_of(artifact_dir, stream_table)
    # The second half is sent once the new version scores: however fast the worker
    # drains the first half, both versions see events.
    half = len(events) // 2
    feeder = Feeder(kafka.bootstrap, topics.input, events[:half])
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
        produce(kafka.bootstrap, topics.input, events[half:])
        out, dead = assert_each_once(kafka.bootstrap, topics, set(old), refused)
        metrics = processor.metrics()
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    # Every prediction carries the score of the version its header and body name.
    for record in out:
        prediction, version = json.loads(record.value), headers(record)["model_version"]
        assert prediction["model_version"] == version, (record.key, prediction, version)
        assert prediction["score"] == scores[version][record.key], (record.key, version)
    assert {headers(r)["model_version"] for r in dead} <= set(scores)
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


def test_a_second_worker_joins_and_leaves_while_a_backlog_drains(
    kafka: Broker,
    topics: Topics,
    artifact_dir: Path,
    backlog: tuple[list[tuple[bytes, bytes]], dict[bytes, float], set[bytes]],
    tmp_path: Path,
) -> None:
    events, valid, refused = backlog
    produce(kafka.bootstrap, topics.input, events)
    # Small batches: the backlog lasts long enough for a worker to join and leave.
    extra = ["--batch-size", "40"]
    first = ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path, "0", extra)
    second = None
    try:
        first.wait_until(lambda h: h["events_in"] >= 1000, timeout=90, what="1,000 events in")
        second = ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path, "1", extra)
        # Three partitions shared by two workers: neither holds all of them.
        for worker in (first, second):
            worker.wait_until(lambda h: 0 < len(h["assigned"]) < 3, what="a share")
        second.wait_until(lambda h: h["events_in"] >= 1000, what="1,000 events on the second")
        joined = first.health()
        assert joined is not None and joined["events_in"] < len(events), "the backlog drained"
        assert second.terminate() == 0, second.log()  # SIGTERM: finish, commit, leave
        first.wait_until(lambda h: len(h["assigned"]) == 3, what="all partitions back")
        assert_exactly_once(kafka.bootstrap, topics, valid, refused)
        assert first.terminate() == 0, first.log()
    finally:
        first.stop()
        if second is not None:
            second.stop()
