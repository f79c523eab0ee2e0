"""The processor's stages one by one (scoring.stream.stages), with no broker.

A fake consumer stands in for Kafka so that a rebalance lands exactly between two
``consume()`` calls of one batch, which a real group only does by chance.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from scoring.model.artifact import load_artifact
from scoring.model.live import LiveModel
from scoring.stream.events import H_MODEL_VERSION, H_ORIGIN_OFFSET, H_REASON_KIND, to_events
from scoring.stream.stages import (
    Assignment,
    Batch,
    decode_and_validate,
    gather,
    route,
    score,
)

TP = ("in", 0)


@dataclass
class FakeMessage:
    """What confluent_kafka.Message offers, for one event."""

    _offset: int
    _value: bytes | None = b"{}"
    _key: bytes | None = b"k"
    _partition: int = 0
    _error: object | None = None

    def error(self) -> object | None:
        return self._error

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self._offset)

    def headers(self) -> list[tuple[str, bytes]] | None:
        return [("trace", b"t-1")]


class FakeConsumer:
    """Returns the scripted consume() results in order; one may first move the partitions."""

    def __init__(self, assignment: Assignment, script: list[tuple[str, list[int]]]) -> None:
        self.assignment, self.script = assignment, script
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self.calls.append((num_messages, timeout))
        if not self.script:
            return []
        move, offsets = self.script.pop(0)
        # What the rebalance callbacks do inside consume().
        if move == "keep":  # cooperative: the partition stays, its position runs on
            self.assignment.assigned([TP])
        elif move == "revoke":  # eager: every partition revoked, then assigned again
            self.assignment.revoked([TP])
            self.assignment.assigned([TP])
        return [FakeMessage(o) for o in offsets][:num_messages]


def _gather(consumer: FakeConsumer, wait_s: float, size: int = 100) -> tuple[Batch, list]:
    rewinds: list[dict] = []
    batch = gather(
        consumer, consumer.assignment, size, wait_s, threading.Event(), rewinds.append, 0.01
    )
    return batch, rewinds


def test_a_kept_partition_is_rewound_to_the_batch_start_when_partitions_move() -> None:
    assignment = Assignment(held={TP})
    consumer = FakeConsumer(
        assignment, [("", [10, 11]), ("keep", [12, 13]), ("", [10, 11]), ("", [])]
    )
    batch, rewinds = _gather(consumer, wait_s=0.05)
    assert rewinds == [{TP: 10}]
    assert batch.offsets == [10, 11]


def test_a_partition_revoked_and_given_back_in_one_consume_is_rewound() -> None:
    # An eager rebalance inside one consume(): revoked, assigned again, and events of the
    # new assignment (from the committed offset, 10) returned after the old ones.
    assignment = Assignment(held={TP})
    consumer = FakeConsumer(assignment, [("", [10, 11]), ("revoke", [12, 10, 11]), ("", [10])])
    batch, rewinds = _gather(consumer, wait_s=0.0)
    assert rewinds == [{TP: 10}]  # the lowest offset seen, not the first
    assert batch.offsets == [10]


def test_without_a_wait_a_batch_is_what_has_arrived() -> None:
    consumer = FakeConsumer(Assignment(held={TP}), [("", [1, 2, 3]), ("", []), ("", [4])])
    batch, _ = _gather(consumer, wait_s=0.0)
    assert batch.offsets == [1, 2, 3]
    assert consumer.calls[0] == (100, 0.0)  # no waiting while events are queued


def test_a_batch_stops_at_its_size_and_an_idle_topic_returns_empty() -> None:
    consumer = FakeConsumer(Assignment(held={TP}), [("", list(range(10)))])
    assert _gather(consumer, wait_s=1.0, size=4)[0].offsets == [0, 1, 2, 3]
    idle = FakeConsumer(Assignment(held={TP}), [])
    assert len(_gather(idle, wait_s=1.0)[0]) == 0
    assert idle.calls == [(100, 0.0), (1, 0.01)]  # one short wait for a first event


def test_client_notices_are_not_events() -> None:
    class Noisy(FakeConsumer):
        def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
            got = super().consume(num_messages, timeout)
            return [FakeMessage(0, _error="broker down"), *got] if got else got

    batch, _ = _gather(Noisy(Assignment(held={TP}), [("", [5, 6])]), wait_s=0.0)
    assert batch.offsets == [5, 6]


def test_offsets_to_commit_and_to_rewind_per_partition() -> None:
    messages = [FakeMessage(o, _partition=p) for p, o in [(0, 4), (1, 9), (0, 5), (1, 10)]]
    batch = Batch.of(messages)
    assert batch.first_offsets() == {("in", 0): 4, ("in", 1): 9}
    assert Batch.of(messages[::-1]).first_offsets() == {("in", 0): 4, ("in", 1): 9}
    assert batch.next_offsets() == {("in", 0): 6, ("in", 1): 11}


def test_route_keeps_input_order_and_sends_refused_events_to_the_dead_letter_topic(
    artifact_dir: Path, demo_table: pa.Table
) -> None:
    model = LiveModel.of(load_artifact(str(artifact_dir)))
    contract = model.scorer.contract
    good = [
        value
        for _, value in to_events(demo_table.slice(0, 6), contract.key, contract.feature_names)
    ]
    out_of_range = json.dumps({**json.loads(good[0]), "amount": -5.0}).encode()
    values = [good[0], b"{not json", good[1], out_of_range, None, good[2]]
    batch = Batch.of([FakeMessage(o, _value=v) for o, v in enumerate(values)])

    decoded = decode_and_validate(batch, contract, 64 * 1024)
    assert [r.kind for r in decoded.refused] == ["not_json", "empty"]
    scored = score(decoded, model)
    assert list(scored.valid) == [True, True, False, True]
    out = route(batch, decoded, scored, model, "out", "dlq", 1_700_000_000_000)

    assert [r[0] for r in out.records] == ["out", "dlq", "out", "dlq", "dlq", "out"]
    assert out.dead_kinds == ["not_json", "out_of_range", "empty"]
    assert out.predictions == 3
    expected = model.scorer.score(decoded.batch).score.to_pylist()
    predictions = [json.loads(r[2]) for r in out.records if r[0] == "out"]
    assert [p["score"] for p in predictions] == [expected[0], expected[1], expected[3]]
    assert [p[contract.key] for p in predictions] == [
        json.loads(good[i])[contract.key] for i in (0, 1, 2)
    ]
    dead = [r for r in out.records if r[0] == "dlq"]
    assert [r[2] for r in dead] == [b"{not json", out_of_range, None]
    first = dict(dead[1][3])
    assert first["trace"] == b"t-1"  # the event's own headers travel along
    assert first[H_REASON_KIND] == b"out_of_range"
    assert first[H_ORIGIN_OFFSET] == b"3"
    assert first[H_MODEL_VERSION] == b"local"
