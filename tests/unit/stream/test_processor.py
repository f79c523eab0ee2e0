"""The processor's recovery from a stuck or failed commit: where it reads the batch again.

A commit that blocks inside the client past its deadline only happens against a real
cluster by chance (librdkafka issue 5456); here fakes stand in for the consumer and the
producers, so the processor's answer can be checked exactly. The integration tests
restart a real broker under a worker.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial

import pytest
from confluent_kafka import KafkaError, TopicPartition
from scoring.errors import StreamError
from scoring.stream import clients
from scoring.stream.delivery import CommitThread, Sending
from scoring.stream.processor import Processor, StreamConfig
from scoring.stream.stages import Batch, Outgoing

from tests.unit.stream.test_delivery import FakeProducer, faked
from tests.unit.stream.test_stages import FakeMessage


@dataclass
class FakeConsumer:
    """The consumer calls the processor makes after a failed batch."""

    committed_offsets: dict[tuple[str, int], int]
    seeks: list[tuple[str, int, int]] = field(default_factory=list)

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list:
        return [
            TopicPartition(tp.topic, tp.partition, self.committed_offsets[tp.topic, tp.partition])
            for tp in partitions
        ]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        pass


def _processor(
    config: StreamConfig, monkeypatch: pytest.MonkeyPatch
) -> tuple[Processor, list[FakeProducer]]:
    processor = Processor(config)
    made = faked(processor._delivery, monkeypatch)
    processor.assignment.assigned([("in", 0), ("in", 1)])
    return processor, made


def test_a_stuck_commit_is_given_up_at_its_deadline_and_read_again_where_the_group_stands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor, made = _processor(
        StreamConfig("model", "in", "out", "dlq", "127.0.0.1:9"), monkeypatch
    )
    # Partition 0's batch began at offset 5, but the broker had committed it (the answer
    # was lost): reading again from 5 would send events 5 and 6 twice.
    consumer = FakeConsumer({("in", 0): 7, ("in", 1): 3})
    processor._consumer = consumer  # type: ignore[assignment]
    delivery = processor._delivery
    delivery._sender = stuck = CommitThread()
    release = threading.Event()
    batch = Batch.of([FakeMessage(5), FakeMessage(6), FakeMessage(3, _partition=1)])
    following = Batch.of([FakeMessage(4, _partition=1)])
    future = stuck.submit(release.wait)
    sending = Sending(batch, Outgoing([], []), future, deadline=time.monotonic() + 0.1)
    processor._sending = sending
    try:
        assert processor._committing()
        time.sleep(0.15)
        assert not processor._committing()  # gathering stops waiting for it
        assert processor._settle(sending, following) is False
        # Both producers are new: the stuck one's start fences it, and the idle one has
        # seen what the stuck one did.
        assert delivery._producers == made[2:]
        assert sorted(consumer.seeks) == [("in", 0, 7), ("in", 1, 3)]
        assert processor.metrics.aborts._value.get() == 1
        assert delivery._sender is not stuck  # the next batch goes to a new thread
        assert delivery._sender is not None
        assert delivery._sender.submit(lambda: None).result(timeout=5) is None
        assert not future.done()
    finally:
        release.set()


def test_at_least_once_a_failed_batch_is_read_again_from_its_first_offsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor, _ = _processor(
        StreamConfig("model", "in", "out", "dlq", "x", exactly_once=False), monkeypatch
    )
    consumer = FakeConsumer({("in", 0): 9})
    processor._consumer = consumer  # type: ignore[assignment]

    def deliver() -> None:
        raise clients.KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))

    future = CommitThread().submit(deliver)
    batch = Batch.of([FakeMessage(5), FakeMessage(6)])
    sending = Sending(batch, Outgoing([], []), future, deadline=time.monotonic() + 5)
    assert processor._settle(sending, None) is False
    assert consumer.seeks == [("in", 0, 5)]


def _failing(code: int, fatal: bool = False) -> Sending:
    """A batch whose delivery failed with ``code`` (a fatal error if ``fatal``)."""

    def deliver() -> None:
        raise clients.KafkaException(KafkaError(code, "injected", fatal=fatal))

    future = CommitThread().submit(deliver)
    batch = Batch.of([FakeMessage(5), FakeMessage(6)])
    return Sending(batch, Outgoing([], []), future, deadline=time.monotonic() + 5)


def test_at_least_once_a_fatal_producer_error_replaces_the_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor, made = _processor(
        StreamConfig("model", "in", "out", "dlq", "x", exactly_once=False), monkeypatch
    )
    processor._consumer = FakeConsumer({("in", 0): 9})  # type: ignore[assignment]
    # A plain failure: the same producer sends the batch again.
    assert processor._settle(_failing(KafkaError._MSG_TIMED_OUT), None) is False
    assert processor._delivery._producers == made[:1]
    # A fatal one (an idempotence sequence gap): that producer can send no more.
    assert processor._settle(_failing(KafkaError._FATAL, fatal=True), None) is False
    assert processor._delivery._producers == made[1:2]
    # Reported by the client's error callback only, between batches: replaced at the next
    # failure too.
    processor._delivery._producer_error(KafkaError(KafkaError._FATAL, "gap", fatal=True))
    assert processor._settle(_failing(KafkaError._MSG_TIMED_OUT), None) is False
    assert processor._delivery._producers == made[2:3]


def test_failing_commits_make_the_worker_degraded_then_give_up_past_the_stall_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor, _ = _processor(
        StreamConfig("model", "in", "out", "dlq", "x", exactly_once=False, max_stall_s=30),
        monkeypatch,
    )
    processor._consumer = FakeConsumer({("in", 0): 9})  # type: ignore[assignment]
    processor.status = "ok"
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", lambda s: None)
    # Handed over at 1000 s, failed at 1010 s: the stall counts from the hand-over.
    failing = _failing(KafkaError._MSG_TIMED_OUT)
    clock[0] += 10
    assert processor._settle(failing, None) is False
    health = processor.health()
    assert health["status"] == "degraded"
    assert health["problem"].startswith("micro-batches fail to commit for 10 s: ")
    assert processor.metrics.degraded._value.get() == 1
    assert processor._delivery.give_up_at == 1030.0
    clock[0] += 5  # the reason says for how long, whenever it is asked
    assert processor.health()["problem"].startswith("micro-batches fail to commit for 15 s")
    # A commit that succeeds ends it.
    done = CommitThread().submit(lambda: None)
    good = Sending(Batch.of([FakeMessage(5)]), Outgoing([], []), done, time.monotonic() + 5)
    done.result(5)
    assert processor._settle(good, None) is True
    assert processor.health()["status"] == "ok" and processor.health()["problem"] is None
    assert processor.metrics.degraded._value.get() == 0
    # Failing again: past 30 s of failures the worker gives up, saying why.
    assert processor._settle(_failing(KafkaError._MSG_TIMED_OUT), None) is False
    clock[0] += 31
    with pytest.raises(StreamError, match=r"no micro-batch committed for 31 s.*--max-stall"):
        processor._settle(_failing(KafkaError._MSG_TIMED_OUT), None)


def test_a_commit_that_runs_long_is_reported_before_it_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor, _ = _processor(StreamConfig("model", "in", "out", "dlq", "x"), monkeypatch)
    processor.status = "ok"
    release = threading.Event()
    future = CommitThread().submit(release.wait)
    batch = Batch.of([FakeMessage(5)])
    processor._sending = Sending(batch, Outgoing([], []), future, time.monotonic() + 60)
    try:
        assert processor.health()["status"] == "ok"
        processor._sending.sent -= processor._delivery.call_timeout + 1
        health = processor.health()
        assert health["status"] == "degraded"
        assert health["problem"].startswith("a micro-batch's commit has run for ")
    finally:
        release.set()
    future.result(5)
    assert processor.health()["status"] == "ok"


def test_at_least_once_an_idle_worker_commits_where_it_stands_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor, _ = _processor(
        StreamConfig("model", "in", "out", "dlq", "x", exactly_once=False), monkeypatch
    )
    commits: list[tuple[list[tuple[str, int, int]], bool]] = []

    class Consumer(FakeConsumer):
        def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
            # Partition 1 has fetched nothing yet: no position to commit.
            return [TopicPartition("in", 0, 12), TopicPartition("in", 1, -1001)]

        def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
            commits.append(([(tp.topic, tp.partition, tp.offset) for tp in offsets], asynchronous))

    processor._consumer = Consumer({})  # type: ignore[assignment]
    done = CommitThread().submit(lambda: None)
    done.result(5)
    batch = Batch.of([FakeMessage(10), FakeMessage(11)])
    assert processor._settle(Sending(batch, Outgoing([], []), done, time.monotonic() + 5), None)
    assert commits == [([("in", 0, 12)], True)]  # after the delivery, asynchronously
    assert processor._idle_commit_due
    processor._commit_when_idle()
    assert commits[1:] == [([("in", 0, 12)], False)]  # once idle, again and synchronously
    assert not processor._idle_commit_due


def test_a_fenced_worker_still_closes_its_consumer_and_aborts_its_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor, made = _processor(StreamConfig("model", "in", "out", "dlq", "x"), monkeypatch)
    closed: list[str] = []

    class Consumer(FakeConsumer):
        def close(self) -> None:
            closed.append("consumer")

    consumer = Consumer({("in", 0): 9})
    processor._consumer = consumer  # type: ignore[assignment]
    processor._sending = _failing(KafkaError._FENCED, fatal=True)
    aborted: list[FakeProducer] = []
    for producer in made:
        producer.abort_transaction = partial(lambda p, timeout: aborted.append(p), producer)  # type: ignore[attr-defined]

    def loop(consumer: object, follower: object) -> None:
        sending, processor._sending = processor._sending, None
        assert sending is not None
        processor._settle(sending, None)  # raises: fenced

    monkeypatch.setattr(processor, "_loop", loop)
    with pytest.raises(StreamError, match=r"transactional ids .* were fenced"):
        processor._run_loop(consumer, None)  # type: ignore[arg-type]
    assert closed == ["consumer"]
    assert aborted == made  # the open transaction is aborted, not left to its timeout
    assert processor.status == "stopping"
