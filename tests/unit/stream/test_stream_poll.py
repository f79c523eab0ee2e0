"""Gathering a micro-batch across a rebalance (scoring.stream.processor.Processor._poll).

A fake consumer stands in for Kafka so the rebalance lands exactly between two polls of
one batch, which a real group only does by chance.
"""

from __future__ import annotations

from typing import Any

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from scoring.stream.processor import Processor, StreamConfig

TP = TopicPartition("in", 0)


def _record(offset: int) -> ConsumerRecord:
    return ConsumerRecord("in", 0, None, offset, 0, 0, b"k", b"{}", [], None, 1, 2, 0)


class FakeConsumer:
    """Returns the scripted polls in order; a poll may first revoke partitions."""

    def __init__(self, processor: Processor, polls: list[tuple[bool, list[int]]]) -> None:
        self.processor, self.polls = processor, polls
        self.seeks: list[tuple[TopicPartition, int]] = []

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, Any]:
        if not self.polls:
            return {}
        revoke, offsets = self.polls.pop(0)
        if revoke:  # what kafka-python's listener does in the middle of poll()
            self.processor._revoked.add(TP)
        return {TP: [_record(o) for o in offsets]} if offsets else {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def _processor(wait_ms: int) -> Processor:
    return Processor(StreamConfig("m", "in", "out", "dlq", "b", batch_wait_ms=wait_ms))


def test_a_rebalance_mid_batch_rewinds_to_the_batch_start_and_gathers_again() -> None:
    processor = _processor(wait_ms=50)
    # First poll: offsets 10-11. Second poll: a rebalance keeps the partition, whose
    # position is now past 11, and returns 12-13. The batch must start again at 10.
    consumer = FakeConsumer(processor, [(False, [10, 11]), (True, [12, 13]), (False, [10, 11])])
    batch = processor._poll(consumer)  # type: ignore[arg-type]
    assert consumer.seeks == [(TP, 10)]
    assert [r.offset for r in batch] == [10, 11]
    assert not processor._revoked


def test_without_a_wait_a_batch_is_what_one_poll_returned() -> None:
    processor = _processor(wait_ms=0)
    consumer = FakeConsumer(processor, [(False, [1, 2, 3]), (False, [4])])
    assert [r.offset for r in processor._poll(consumer)] == [1, 2, 3]  # type: ignore[arg-type]
    assert consumer.seeks == []
