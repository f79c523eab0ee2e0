"""The processor's producers in turn, and its recovery from a stuck commit or an outage.

A commit that blocks inside the client past its deadline, or a producer that reported
every broker down, only happen against a real cluster by chance (librdkafka issue 5456);
here fakes stand in for the consumer and the producer, so the processor's answer to each
can be checked exactly. The integration tests restart a real broker under a worker.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition
from scoring.stream import clients
from scoring.stream.processor import CommitThread, Processor, Sending, StreamConfig
from scoring.stream.stages import Batch, Outgoing

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


class FakeProducer:
    """A transactional producer that records its transactions; ``fail`` fails a commit."""

    def __init__(self) -> None:
        self.polls = 0
        self.committed: list[list[TopicPartition]] = []
        self.fail = False

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0

    def purge(self) -> None:
        pass

    def produce(self, *record: Any, **headers: Any) -> None:
        pass

    def begin_transaction(self) -> None:
        self.offsets: list[TopicPartition] = []

    def send_offsets_to_transaction(self, offsets: list, group: object, timeout: float) -> None:
        self.offsets = offsets

    def commit_transaction(self, timeout: float) -> None:
        if self.fail:
            raise clients.KafkaException(KafkaError(KafkaError._TIMED_OUT))
        self.committed.append(self.offsets)


@pytest.fixture
def processor(monkeypatch: pytest.MonkeyPatch) -> Processor:
    processor = Processor(StreamConfig("model", "in", "out", "dlq", "127.0.0.1:9"))
    processor.made: list[FakeProducer] = []  # type: ignore[misc]

    def new_producer(transactional_id: str | None) -> Any:
        processor.made.append(FakeProducer())  # type: ignore[attr-defined]
        return processor.made[-1]  # type: ignore[attr-defined]

    monkeypatch.setattr(processor, "_new_producer", new_producer)
    processor._producers = [new_producer(id_) for id_ in processor._producer_ids]
    processor.assignment.assigned([("in", 0), ("in", 1)])
    return processor


def test_a_stuck_commit_is_given_up_at_its_deadline_and_read_again_where_the_group_stands(
    processor: Processor,
) -> None:
    # Partition 0's batch began at offset 5, but the broker had committed it (the answer
    # was lost): reading again from 5 would send events 5 and 6 twice.
    consumer = FakeConsumer({("in", 0): 7, ("in", 1): 3})
    processor._consumer = consumer  # type: ignore[assignment]
    processor._sender = CommitThread()
    stuck, release = processor._sender, threading.Event()
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
        assert processor._producers == processor.made[2:]  # type: ignore[attr-defined]
        assert sorted(consumer.seeks) == [("in", 0, 7), ("in", 1, 3)]
        assert processor.metrics.aborts._value.get() == 1
        assert processor._sender is not stuck  # the next batch goes to a new thread
        assert processor._sender.submit(lambda: None).result(timeout=5) is None
        assert not future.done()
    finally:
        release.set()


def test_the_two_producers_take_turns_and_a_failed_transaction_keeps_its_producer(
    processor: Processor,
) -> None:
    first, second = processor._producers
    offsets = [[TopicPartition("in", 0, n)] for n in range(4)]
    processor._transact([], offsets[0], None)
    processor._transact([], offsets[1], None)
    first.fail = True  # type: ignore[attr-defined]
    with pytest.raises(clients.KafkaException):
        processor._transact([], offsets[2], None)
    # The failed transaction's producer is the one _abort() answers for.
    assert processor._producer is first
    first.fail = False  # type: ignore[attr-defined]
    processor._transact([], offsets[3], None)
    assert first.committed == [offsets[0], offsets[3]]  # type: ignore[attr-defined]
    assert second.committed == [offsets[1]]  # type: ignore[attr-defined]
    assert processor._producer is second


def test_at_least_once_a_failed_batch_is_read_again_from_its_first_offsets(
    processor: Processor,
) -> None:
    processor.config = StreamConfig("model", "in", "out", "dlq", "x", exactly_once=False)
    consumer = FakeConsumer({("in", 0): 9})
    processor._consumer = consumer  # type: ignore[assignment]

    def deliver() -> None:
        raise clients.KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))

    future = CommitThread().submit(deliver)
    batch = Batch.of([FakeMessage(5), FakeMessage(6)])
    sending = Sending(batch, Outgoing([], []), future, deadline=time.monotonic() + 5)
    assert processor._settle(sending, None) is False
    assert consumer.seeks == [("in", 0, 5)]


def test_producers_are_replaced_between_batches_once_one_lost_every_broker(
    processor: Processor,
) -> None:
    first = list(processor._producers)
    processor._renew_producers_after_an_outage()
    assert processor._producers == first
    assert [p.polls for p in first] == [1, 1]  # type: ignore[attr-defined]
    processor._producer_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    processor._renew_producers_after_an_outage()
    assert processor._producers == processor.made[2:]  # type: ignore[attr-defined]
    processor._renew_producers_after_an_outage()
    assert len(processor.made) == 4  # type: ignore[attr-defined]
