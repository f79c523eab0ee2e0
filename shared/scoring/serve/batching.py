"""Adaptive batching: the rows of requests that arrive together, scored in one call.

Scoring one row costs about as much as scoring a hundred (the contract's checks and the
graph's feeds are a fixed cost per call and feature; the graph itself is microseconds), so
under load the server scores what is waiting as one batch, as the stream scores a
micro-batch. There is no window: a lone request is scored at once, and requests that
arrive while a batch scores make up the next one, so batching adds no latency of its own.
Only requests scored by the same model version and of the same columns share a batch, and
a row's score does not depend on its batch (:meth:`scoring.model.artifact.Scorer.predict`).
A small call is scored on the event loop; while it scores, the next requests wait in the
socket and are read together afterwards, so they still make one batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pyarrow as pa

from scoring.model.artifact import ScoredBatch
from scoring.model.live import LiveModel

__all__ = ["Batcher"]

# Up to this many rows a call is scored on the event loop (about a millisecond): handing it
# to a thread costs more than it saves, in switches and in the GIL's hand-overs.
INLINE_ROWS = 64


@dataclass
class _Waiting:
    live: LiveModel
    batch: pa.RecordBatch
    answer: asyncio.Future[ScoredBatch]


class Batcher:
    """Scores requests' rows on a worker thread, at most ``max_rows`` rows per call.

    ``max_rows`` 0 scores every request alone (no batching).
    """

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._waiting: asyncio.Queue[_Waiting] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def score(self, live: LiveModel, batch: pa.RecordBatch) -> ScoredBatch:
        """``batch`` validated and scored by ``live``, maybe beside other requests' rows."""
        loop = asyncio.get_running_loop()
        if self.max_rows <= 0 or batch.num_rows >= self.max_rows:
            return await loop.run_in_executor(None, live.scorer.score, batch)
        if self._waiting is None or self._loop is not loop:  # a queue lives in one loop
            self._loop = loop
            self._waiting = asyncio.Queue()
            self._worker = loop.create_task(self._run(self._waiting), name="scoring-batcher")
        answer: asyncio.Future[ScoredBatch] = loop.create_future()
        self._waiting.put_nowait(_Waiting(live, batch, answer))
        return await answer

    async def _run(self, queue: asyncio.Queue[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            taken = [await queue.get()]
            rows = taken[0].batch.num_rows
            while not queue.empty() and rows < self.max_rows:
                taken.append(queue.get_nowait())
                rows += taken[-1].batch.num_rows
            for group in _groups(taken):
                try:
                    if sum(w.batch.num_rows for w in group) <= INLINE_ROWS:
                        scored = _score_together(group)
                    else:
                        scored = await loop.run_in_executor(None, _score_together, group)
                except Exception as exc:  # each request gets the error, the worker goes on
                    for waiting in group:
                        if not waiting.answer.done():
                            waiting.answer.set_exception(exc)
                    continue
                for waiting, part in zip(group, scored, strict=True):
                    if not waiting.answer.done():  # not given up on (its timeout passed)
                        waiting.answer.set_result(part)


def _groups(taken: list[_Waiting]) -> list[list[_Waiting]]:
    """Requests that may share a call: the same model version and the same columns."""
    if len(taken) == 1:  # the common case at low load: no schema to hash
        return [taken]
    groups: dict[tuple[int, pa.Schema], list[_Waiting]] = {}
    for waiting in taken:
        groups.setdefault((id(waiting.live), waiting.batch.schema), []).append(waiting)
    return list(groups.values())


def _score_together(group: list[_Waiting]) -> list[ScoredBatch]:
    if len(group) == 1:
        return [group[0].live.scorer.score(group[0].batch)]
    scored = group[0].live.scorer.score(pa.concat_batches([w.batch for w in group]))
    parts, start = [], 0
    for waiting in group:
        n = waiting.batch.num_rows
        parts.append(
            ScoredBatch(
                score=scored.score.slice(start, n),
                label=scored.label.slice(start, n),
                reason=scored.reason.slice(start, n),
                valid=scored.valid[start : start + n],
                kinds=scored.kinds[start : start + n],
            )
        )
        start += n
    return parts
