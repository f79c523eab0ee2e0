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

import pytest
from confluent_kafka import KafkaError, TopicPartition
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
