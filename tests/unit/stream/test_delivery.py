"""The worker's two producers in turn, and their replacement after an outage.

A producer that reported every broker down only happens against a real cluster by chance
(librdkafka issues 5456 and 5511); here a fake stands in for the producer, so the answer
to each case can be checked exactly. The integration tests restart a real broker under a
worker.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client import CollectorRegistry, Histogram
from scoring.stream import clients
from scoring.stream.delivery import Delivery


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

    def flush(self, timeout: float) -> int:
        return 0

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


def faked(delivery: Delivery, monkeypatch: pytest.MonkeyPatch) -> list[FakeProducer]:
    """Every producer ``delivery`` makes is a fake, in the returned list; then it starts."""
    made: list[FakeProducer] = []

    def new_producer(transactional_id: str | None) -> Any:
        made.append(FakeProducer())
        return made[-1]

    monkeypatch.setattr(delivery, "_new_producer", new_producer)
    delivery.start()
    return made


@pytest.fixture
def delivery(monkeypatch: pytest.MonkeyPatch) -> Delivery:
    delivery = Delivery(
        "127.0.0.1:9",
        {},
        worker="0",
        transactional_ids=("scoring-stream.g.0", "scoring-stream.g.0.1"),
        transaction_timeout_ms=30_000,
        max_message_bytes=1024,
        stop=threading.Event(),
        commit_seconds=Histogram("commit_seconds", "", registry=CollectorRegistry()),
    )
    delivery.made = faked(delivery, monkeypatch)  # type: ignore[attr-defined]
    return delivery


def test_the_two_producers_take_turns_and_a_failed_transaction_keeps_its_producer(
    delivery: Delivery,
) -> None:
    first, second = delivery._producers
    offsets = [[TopicPartition("in", 0, n)] for n in range(4)]
    delivery._transact([], offsets[0], None)
    delivery._transact([], offsets[1], None)
    first.fail = True  # type: ignore[attr-defined]
    with pytest.raises(clients.KafkaException):
        delivery._transact([], offsets[2], None)
    # The failed transaction's producer is the one abort() answers for.
    assert delivery._producer is first
    first.fail = False  # type: ignore[attr-defined]
    delivery._transact([], offsets[3], None)
    assert first.committed == [offsets[0], offsets[3]]  # type: ignore[attr-defined]
    assert second.committed == [offsets[1]]  # type: ignore[attr-defined]
    assert delivery._producer is second


def test_producers_are_replaced_between_batches_once_one_lost_every_broker(
    delivery: Delivery,
) -> None:
    first = list(delivery._producers)
    delivery.renew_after_an_outage()
    assert delivery._producers == first
    assert [p.polls for p in first] == [1, 1]  # type: ignore[attr-defined]
    delivery._producer_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    delivery.renew_after_an_outage()
    assert delivery._producers == delivery.made[2:]  # type: ignore[attr-defined]
    delivery.renew_after_an_outage()
    assert len(delivery.made) == 4  # type: ignore[attr-defined]
