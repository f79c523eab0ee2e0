"""Requests scored together get the bits each would get alone, and only their own rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pytest
from scoring.lifecycle.loading import load_artifact
from scoring.model.live import LiveModel
from scoring.serve.batching import Batcher, _groups, _Waiting

from tests.conftest import DAY, generate_day


@pytest.fixture(scope="module")
def live(artifact_dir: Path) -> LiveModel:
    return LiveModel.of(load_artifact(str(artifact_dir)))


def _requests() -> list[pa.RecordBatch]:
    """Requests of 1 to 7 rows, some rows breaking the contract."""
    table = generate_day(DAY, 200, seed=5)
    batches, start = [], 0
    for size in [1, 3, 7, 1, 2, 5] * 6:
        batches.append(table.slice(start, size).combine_chunks().to_batches()[0])
        start += size
    return batches


async def _all_at_once(batcher: Batcher, live: LiveModel, batches: list[pa.RecordBatch]) -> list:
    return await asyncio.gather(*(batcher.score(live, b) for b in batches))


def test_concurrent_requests_are_scored_together_with_each_ones_own_bits(
    live: LiveModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    score = live.scorer.score

    def counted(batch: pa.RecordBatch | pa.Table) -> object:
        calls.append(batch.num_rows)
        return score(batch)

    monkeypatch.setattr(live.scorer, "score", counted)
    batches = _requests()
    answers = asyncio.run(_all_at_once(Batcher(1000), live, batches))
    assert len(calls) < len(batches)  # some requests shared a call
    for batch, answer in zip(batches, answers, strict=True):
        alone = score(batch)
        assert answer.score.equals(alone.score)  # the same float64s, nulls where refused
        assert answer.label.equals(alone.label)
        assert answer.reason.to_pylist() == alone.reason.to_pylist()
        assert answer.kinds == alone.kinds
        assert answer.valid.tolist() == alone.valid.tolist()


def test_a_call_holds_at_most_batch_rows_and_zero_scores_each_request_alone(
    live: LiveModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    score = live.scorer.score
    monkeypatch.setattr(live.scorer, "score", lambda b: calls.append(b.num_rows) or score(b))
    batches = _requests()
    asyncio.run(_all_at_once(Batcher(10), live, batches))
    assert max(calls) < 10 + 7  # the cap, plus at most the request that crossed it
    calls.clear()
    asyncio.run(_all_at_once(Batcher(0), live, batches))
    assert sorted(calls) == sorted(b.num_rows for b in batches)


def test_two_versions_never_share_a_call(live: LiveModel) -> None:
    promoted = LiveModel("model", "2", live.scorer)  # the same graph under another version
    batches = _requests()[:4]
    loop = asyncio.new_event_loop()
    try:
        waiting = [
            _Waiting(version, batch, loop.create_future())
            for version, batch in zip([live, promoted, live, promoted], batches, strict=True)
        ]
    finally:
        loop.close()
    groups = _groups(waiting)
    assert [[w.live.version for w in g] for g in groups] == [["local", "local"], ["2", "2"]]
