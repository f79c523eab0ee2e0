"""The processor's stages one by one (scoring.stream.stages), with no broker.

A fake consumer stands in for Kafka so that a rebalance lands exactly between two
``consume()`` calls of one batch, which a real group only does by chance.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scoring.lifecycle.loading import load_artifact
from scoring.model.artifact import ScoredBatch
from scoring.model.contract import Contract
from scoring.model.live import LiveModel
from scoring.stream.events import (
    H_MODEL_NAME,
    H_MODEL_VERSION,
    H_ORIGIN_OFFSET,
    H_REASON_KIND,
    to_events,
)
from scoring.stream.metrics import StreamMetrics
from scoring.stream.shadow import Shadow
from scoring.stream.stages import (
    Assignment,
    Batch,
    decode_and_validate,
    gather,
    route,
    score,
    shadow,
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
    assert consumer.calls[0][1] == 0.0  # no waiting while events are queued


def test_while_the_previous_batch_commits_the_gathering_goes_on() -> None:
    # Events that arrive during the commit in flight ride with this batch rather than
    # wait for one more commit; it ends once the commit is done and nothing is queued.
    script = [("", [1]), ("", []), ("", [2]), ("", []), ("", [3])]
    consumer = FakeConsumer(Assignment(held={TP}), script)
    committing = iter([True, True, True])
    batch = gather(
        consumer,
        consumer.assignment,
        100,
        0.0,
        threading.Event(),
        [].append,
        0.01,
        busy=lambda: next(committing, False),
    )
    assert batch.offsets == [1, 2]
    assert (99, 0.002) in consumer.calls  # short waits, to notice the commit's end soon


def test_a_batch_stops_at_its_size_even_while_the_previous_one_commits() -> None:
    consumer = FakeConsumer(Assignment(held={TP}), [("", [1, 2]), ("", [3, 4, 5])])
    batch = gather(
        consumer, consumer.assignment, 4, 0.0, threading.Event(), [].append, 0.01, busy=lambda: True
    )
    assert batch.offsets == [1, 2, 3, 4]


def test_a_batch_stops_at_its_size_and_an_idle_topic_returns_empty() -> None:
    consumer = FakeConsumer(Assignment(held={TP}), [("", list(range(10)))])
    assert _gather(consumer, wait_s=1.0, size=4)[0].offsets == [0, 1, 2, 3]
    idle = FakeConsumer(Assignment(held={TP}), [])
    assert len(_gather(idle, wait_s=1.0)[0]) == 0
    # One short wait for a first event.
    assert [timeout for _, timeout in idle.calls] == [0.0, 0.01]


class QueuedConsumer:
    """A consumer whose prefetched events wait in a queue, as librdkafka's do."""

    def __init__(self, sizes: list[int]) -> None:
        self.queue = [FakeMessage(o, _value=b"x" * n) for o, n in enumerate(sizes)]
        self.assignment = Assignment(held={TP})
        self.calls: list[int] = []

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self.calls.append(num_messages)
        got, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        return got


def _gather_bytes(consumer: QueuedConsumer, size: int, max_bytes: int) -> Batch:
    return gather(
        consumer,
        consumer.assignment,
        size,
        0.0,
        threading.Event(),
        [].append,
        0.01,
        busy=lambda: True,  # a commit in flight: only the budget or the size ends the batch
        max_bytes=max_bytes,
    )


def _held(batch: Batch) -> int:
    return sum(len(v or b"") + len(k or b"") for k, v in zip(batch.keys, batch.values, strict=True))


def test_a_batch_stops_growing_at_its_byte_budget_and_the_rest_stays_queued() -> None:
    # 1,000 events of 1 KB (with their 1-byte keys) queued; room for 10,000 events.
    consumer = QueuedConsumer([999] * 1000)
    batch = _gather_bytes(consumer, size=10_000, max_bytes=100_500)
    assert 100_500 <= _held(batch) < 100_500 + 1000  # past the budget by less than one event
    assert batch.offsets == list(range(101))
    assert consumer.calls == [16, 85]  # a small first take, then what fills the room left
    # The next batch goes on where this one stopped: nothing skipped, nothing twice.
    after = _gather_bytes(consumer, size=10_000, max_bytes=100_500)
    assert after.offsets == list(range(101, 202))


def test_events_that_grow_pass_the_budget_by_one_take_at_most() -> None:
    # Small events, then 64 KiB ones: the take sized by the small ones takes 984 large
    # ones (the consumer's prefetch queue bounds such a take), and the batch ends there.
    consumer = QueuedConsumer([99] * 16 + [65_535] * 5000)
    batch = _gather_bytes(consumer, size=10_000, max_bytes=100_000)
    assert consumer.calls == [16, 984] and len(batch) == 1000
    # Then the first take alone (16 events) is over the budget: a batch of 16.
    assert len(_gather_bytes(consumer, size=10_000, max_bytes=100_000)) == 16


def test_demo_events_fill_a_batch_to_its_size_under_the_default_budget() -> None:
    consumer = QueuedConsumer([470] * 12_000)
    batch = gather(consumer, consumer.assignment, 10_000, 0.0, threading.Event(), [].append, 0.01)
    assert len(batch) == 10_000 and consumer.calls == [16, 9984]


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


def _mixed_batch(model: LiveModel, table: pa.Table) -> Batch:
    """Three good events, one not JSON, one out of range, one empty."""
    contract = model.scorer.contract
    good = [v for _, v in to_events(table.slice(0, 3), contract.key, contract.feature_names)]
    out_of_range = json.dumps({**json.loads(good[0]), "amount": -5.0}).encode()
    values = [good[0], b"{not json", good[1], out_of_range, None, good[2]]
    return Batch.of([FakeMessage(o, _value=v, _key=b"k%d" % o) for o, v in enumerate(values)])


def test_the_shadow_scores_the_champions_events_into_its_own_records(
    artifact_dir: Path, demo_table: pa.Table
) -> None:
    champion = LiveModel.of(load_artifact(str(artifact_dir)))
    challenger = LiveModel("fraud", "7", champion.scorer)  # same graph: same scores
    batch = _mixed_batch(champion, demo_table)
    decoded = decode_and_validate(batch, champion.scorer.contract, 64 * 1024)
    scored = score(decoded, champion)
    champion_out = route(batch, decoded, scored, champion, "out", "dlq", 1_700_000_000_000)

    out = shadow(
        batch, decoded, scored, champion, challenger, "shadow", 64 * 1024, 1_700_000_000_005
    )

    assert [r[0] for r in out.records] == ["shadow"] * 3
    assert [r[1] for r in out.records] == [b"k0", b"k2", b"k5"]  # the events' own keys
    assert out.records[0][3] == [(H_MODEL_NAME, b"fraud"), (H_MODEL_VERSION, b"7")]
    mine = [json.loads(r[2]) for r in out.records]
    theirs = [json.loads(r[2]) for r in champion_out.records if r[0] == "out"]
    key = champion.scorer.contract.key
    for m, t in zip(mine, theirs, strict=True):
        assert (m[key], m["score"], m["label"]) == (t[key], t["score"], t["label"])
        assert (m["model_name"], m["model_version"]) == ("fraud", "7")
        assert m["event_time"] == t["event_time"]
    assert sorted(out.refused_kinds) == sorted(champion_out.dead_kinds)
    assert out.refused_scored == 0
    assert out.disagreements == 0
    assert out.score_differences.tolist() == [0.0, 0.0, 0.0]


class ConstantScorer:
    """A challenger scoring every valid row 0.9 (label 1), under a contract of its own."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract

    def score(self, data: pa.RecordBatch) -> ScoredBatch:
        n = data.num_rows
        return ScoredBatch(
            score=pa.array(np.full(n, 0.9)),
            label=pa.array(np.ones(n, np.int32)),
            reason=pa.nulls(n, pa.string()),
            valid=np.ones(n, bool),
            kinds=[None] * n,
        )


def test_a_challenger_with_another_contract_reads_the_events_its_own_way(
    artifact_dir: Path, demo_table: pa.Table
) -> None:
    champion = LiveModel.of(load_artifact(str(artifact_dir)))
    contract = champion.scorer.contract
    # The challenger does without `amount`: it scores the event that lacks it.
    narrower = contract.model_copy(
        update={"features": tuple(f for f in contract.features if f.name != "amount")}
    )
    challenger = LiveModel("fraud", "8", ConstantScorer(narrower))  # type: ignore[arg-type]
    good = [v for _, v in to_events(demo_table.slice(0, 2), contract.key, contract.feature_names)]
    without_amount = json.dumps(
        {k: v for k, v in json.loads(good[1]).items() if k != "amount"}
    ).encode()
    batch = Batch.of([FakeMessage(0, _value=good[0]), FakeMessage(1, _value=without_amount)])
    decoded = decode_and_validate(batch, contract, 64 * 1024)
    scored = score(decoded, champion)
    assert [r.kind for r in decoded.refused] == ["missing_field"]

    out = shadow(batch, decoded, scored, champion, challenger, "shadow", 64 * 1024, 0)

    assert len(out.records) == 2 and out.refused_kinds == [] and out.refused_scored == 0
    both = scored.score.to_pylist()[0]
    assert out.score_differences.tolist() == [abs(0.9 - both)]  # only the event both scored
    assert out.disagreements == int(scored.label.to_pylist()[0] != 1)

    # One that needs a feature the events lack refuses them all, the one the champion scored too.
    extra = contract.features[0].model_copy(update={"name": "extra"})
    wider = contract.model_copy(update={"features": (*contract.features, extra)})
    picky = LiveModel("fraud", "9", ConstantScorer(wider))  # type: ignore[arg-type]
    out = shadow(batch, decoded, scored, champion, picky, "shadow", 64 * 1024, 0)
    assert out.records == [] and out.refused_kinds == ["missing_field"] * 2
    assert out.refused_scored == 1 and out.score_differences.size == 0


class RaisingScorer(ConstantScorer):
    def score(self, data: pa.RecordBatch) -> ScoredBatch:
        raise RuntimeError("onnxruntime: invalid dimensions")


def test_a_challenger_that_raises_is_counted_and_the_batch_goes_without_it(
    artifact_dir: Path, demo_table: pa.Table, caplog: pytest.LogCaptureFixture
) -> None:
    champion = LiveModel.of(load_artifact(str(artifact_dir)))
    metrics = StreamMetrics()
    shadowed = Shadow("unused", "shadow", metrics)
    shadowed.use(LiveModel("fraud", "9", RaisingScorer(champion.scorer.contract)))  # type: ignore[arg-type]
    batch = _mixed_batch(champion, demo_table)
    decoded = decode_and_validate(batch, champion.scorer.contract, 64 * 1024)
    scored = score(decoded, champion)

    for _ in range(5):
        assert shadowed.outgoing(batch, decoded, scored, champion, 64 * 1024) is None

    health = shadowed.health()
    assert health["shadow_failures"] == 5 and health["shadow_model_version"] == "9"
    assert 'scoring_stream_shadow_failures_total{stage="score"} 5.0' in metrics.text().decode()
    failures = [r for r in caplog.records if "failed to score" in r.getMessage()]
    assert len(failures) == 1  # rate-limited: one line, not one per batch


def test_shadow_counts_follow_the_version_that_scores(
    artifact_dir: Path, demo_table: pa.Table
) -> None:
    champion = LiveModel.of(load_artifact(str(artifact_dir)))
    metrics = StreamMetrics()
    shadowed = Shadow("unused", "shadow", metrics)
    batch = _mixed_batch(champion, demo_table)
    decoded = decode_and_validate(batch, champion.scorer.contract, 64 * 1024)
    scored = score(decoded, champion)
    assert shadowed.outgoing(batch, decoded, scored, champion, 64 * 1024) is None  # no challenger

    shadowed.use(LiveModel("fraud", "7", champion.scorer))
    for _ in range(2):
        out = shadowed.outgoing(batch, decoded, scored, champion, 64 * 1024)
        assert out is not None
        shadowed.count(out)
    shadowed.use(LiveModel("fraud", "8", champion.scorer))
    out = shadowed.outgoing(batch, decoded, scored, champion, 64 * 1024)
    assert out is not None
    shadowed.count(out)

    health = shadowed.health()
    assert health["shadow_model_version"] == "8"
    assert (health["shadow_predictions"], health["shadow_version_predictions"]) == (9, 3)
    assert health["shadow_refused"] == 9 and health["shadow_disagreements"] == 0
    text = metrics.text().decode()
    assert "scoring_stream_shadow_predictions_total 9.0" in text
    assert 'scoring_stream_shadow_refused_total{reason="not_json"} 3.0' in text
    assert 'scoring_stream_shadow_model_version{model="fraud"} 8.0' in text
    assert 'scoring_stream_shadow_score_difference_bucket{le="0.0"} 9.0' in text
    shadowed.use(None)  # the alias was deleted
    assert shadowed.health()["shadow_model_version"] is None
    assert shadowed.outgoing(batch, decoded, scored, champion, 64 * 1024) is None
