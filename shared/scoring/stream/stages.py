"""The stream processor's stages, each a function a test can call without a broker.

One micro-batch goes through them in order:

1. :func:`gather`: take up to ``size`` events, and about ``max_bytes`` of them at most,
   from the consumer with batched ``consume()`` calls, starting over when the partitions
   move under it;
2. :func:`decode_and_validate`: parse the values column by column into an Arrow batch and
   a reason for every event that cannot be read (:func:`scoring.model.decode.decode`);
3. :func:`score`: the contract's checks and the model, the same code the batch job runs;
4. :func:`route`: one output record per event, in input order: a prediction, or the
   event itself to the dead-letter topic with the reason in its headers;
5. with a challenger in the champion's shadow, :func:`shadow`: the challenger's
   predictions of the same events for the shadow topic, and how they compare with the
   champion's (its refusals are counted, never dead-lettered: the dead letters are the
   champion's).

Producing and committing (one transaction per micro-batch) is the processor's own part,
since it is the part that talks to Kafka (:mod:`scoring.stream.processor`, which sends
through :mod:`scoring.stream.delivery`). The consumer is seen through the small
:class:`Source` protocol, so a fake can stand in for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from scoring.model.artifact import ScoredBatch
from scoring.model.contract import Contract
from scoring.model.decode import Decoded, Refused, decode
from scoring.model.live import LiveModel
from scoring.stream.events import (
    H_MODEL_NAME,
    H_MODEL_VERSION,
    dead_letter_headers,
    iso_millis,
    prediction_encoder,
)

__all__ = [
    "BATCH_MAX_BYTES",
    "Assignment",
    "Batch",
    "Outgoing",
    "Record",
    "ShadowOutgoing",
    "Source",
    "decode_and_validate",
    "gather",
    "route",
    "score",
    "shadow",
]

log = logging.getLogger(__name__)

# How many bytes of events (keys and values) a micro-batch holds at most, about: with the
# batch on the commit thread and its dead letters' copies in the producer, a worker holds
# about three such batches whatever the size of its events (a batch of 10,000 events of
# 64 KiB would otherwise be 655 MB). Demo events (470 bytes) fill 10,000 with 4.7 MB.
BATCH_MAX_BYTES = 16 * 1024 * 1024

# (topic, key, value, headers) of one record to send.
Record = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]
Partition = tuple[str, int]


class Message(Protocol):
    """What the stages read of a consumed message (confluent_kafka.Message has it all)."""

    def error(self) -> object | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...


class Source(Protocol):
    """The consumer as :func:`gather` uses it."""

    def consume(self, num_messages: int = ..., timeout: float = ...) -> Sequence[Any]: ...


@dataclass
class Assignment:
    """The partitions this worker holds, kept by the consumer's rebalance callbacks.

    The callbacks run inside ``consume()``; :meth:`take_moves` tells :func:`gather`
    afterwards that the partitions moved, and which were taken away.
    """

    held: set[Partition] = field(default_factory=set)
    _revoked: set[Partition] = field(default_factory=set)
    _moved: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def assigned(self, partitions: Sequence[Partition]) -> None:
        with self._lock:
            self.held.update(partitions)
            self._moved = True
        log.info("partitions assigned: %s", sorted(p for _, p in partitions))

    def revoked(self, partitions: Sequence[Partition]) -> None:
        with self._lock:
            self.held.difference_update(partitions)
            self._revoked.update(partitions)
            self._moved = True
        log.info("partitions revoked: %s", sorted(p for _, p in partitions))

    def take_moves(self) -> set[Partition] | None:
        """``None`` if nothing moved since the last call, else the partitions taken away."""
        with self._lock:
            if not self._moved:
                return None
            revoked, self._revoked, self._moved = self._revoked, set(), False
            return revoked

    def snapshot(self) -> list[Partition]:
        with self._lock:
            return sorted(self.held)


@dataclass(frozen=True)
class Batch:
    """A gathered micro-batch, column by column; ``messages`` keeps the client's objects."""

    messages: Sequence[Message]
    topics: list[str]
    partitions: list[int]
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    timestamps: list[int]

    @classmethod
    def of(cls, messages: Sequence[Message]) -> Batch:
        return cls(
            messages=messages,
            topics=[m.topic() or "" for m in messages],
            partitions=[m.partition() or 0 for m in messages],
            offsets=[m.offset() or 0 for m in messages],
            keys=[m.key() for m in messages],
            values=[m.value() for m in messages],
            timestamps=[m.timestamp()[1] for m in messages],
        )

    def __len__(self) -> int:
        return len(self.offsets)

    def first_offsets(self) -> dict[Partition, int]:
        """The lowest offset of each partition in the batch: where to seek to read it again."""
        first: dict[Partition, int] = {}
        for topic, partition, offset in zip(
            self.topics, self.partitions, self.offsets, strict=True
        ):
            tp = (topic, partition)
            if offset < first.get(tp, offset + 1):
                first[tp] = offset
        return first

    def next_offsets(self) -> dict[Partition, int]:
        """The offset to commit for each partition: one past its last event in the batch."""
        columns = zip(self.topics, self.partitions, self.offsets, strict=True)
        return {(t, p): o + 1 for t, p, o in columns}


def gather(
    source: Source,
    assignment: Assignment,
    size: int,
    wait_s: float,
    stop: threading.Event,
    rewind: Callable[[dict[Partition, int]], None],
    idle_s: float = 0.5,
    busy: Callable[[], bool] = lambda: False,
    max_bytes: int = BATCH_MAX_BYTES,
) -> Batch:
    """Up to ``size`` events: what has arrived, or what arrives ``wait_s`` after the first.

    Waits up to ``idle_s`` for a first event, then returns an empty batch so the caller
    can do its housekeeping. Once it has one, it also goes on taking events while
    ``busy()`` (the previous batch is still being committed): an event that arrives
    meanwhile then rides with this batch instead of waiting for one more commit, so at a
    low rate an event waits at most for the commit in flight and its own. When the
    partitions move during the gathering, the events taken so far are dropped and
    ``rewind`` is asked to put each partition they came from back to its lowest offset
    among them (the caller seeks only the partitions it still holds); a partition that
    went to another worker restarts there from its committed offset. Either way no event
    is skipped.

    The batch also stops growing once its events' keys and values add up to ``max_bytes``.
    The first ``consume()`` takes at most :data:`_FIRST_TAKE` events; each later one asks
    for as many as fill the room left at the largest size seen so far. So while sizes do
    not grow, the budget is passed by less than one event; when they do, by one take at
    most, which the consumer's prefetch queue bounds (``queued.max.messages.kbytes``).
    """
    taken: list[Message] = []
    held = largest = 0  # bytes taken, and the largest event's
    deadline: float | None = None
    while len(taken) < size and held < max_bytes and not stop.is_set():
        # As many as fill the room left at the largest size seen (rounded up); at first, a few.
        fill = -(-(max_bytes - held) // largest) if largest else _FIRST_TAKE
        want = min(size - len(taken), fill)
        if deadline is None:
            got = source.consume(want, 0.0)  # what is queued already
            if not got:
                got = source.consume(1, idle_s)
        else:
            timeout = deadline - time.monotonic()
            if timeout <= 0 and busy():
                timeout = _BUSY_POLL_S
            got = source.consume(want, max(0.0, timeout))
        if assignment.take_moves() is not None:
            # Everything before this gathering is committed, so where it started is each
            # partition's committed offset. A partition may have been revoked and given
            # back inside one consume(), with events from both sides of the move in
            # `got`: every partition still held goes back to its lowest offset seen here.
            rewind(Batch.of(_readable([*taken, *got])).first_offsets())
            taken, held, largest, deadline = [], 0, 0, None
            continue
        readable = _readable(got)
        taken.extend(readable)
        sizes = [len(m.value() or b"") + len(m.key() or b"") for m in readable]
        if sizes:
            held += sum(sizes)
            largest = max(largest, max(sizes))
        if not taken:
            break
        now = time.monotonic()
        if deadline is None:
            deadline = now + wait_s
        elif not got and now >= deadline and not busy():
            break
    return Batch.of(taken)


# The most events the first consume() of a batch takes, before any size is known: a
# batch's first take passes its budget only if 16 events outweigh it.
_FIRST_TAKE = 16

# How often gathering looks again whether the commit in flight has finished.
_BUSY_POLL_S = 0.002


def _readable(messages: Sequence[Message]) -> list[Message]:
    """The events of a consume() result; client notices (errors) are logged and left out."""
    readable = []
    for message in messages:
        error = message.error()
        if error is None:
            readable.append(message)
        else:
            log.warning("consumer: %s", error)
    return readable


def decode_and_validate(batch: Batch, contract: Contract, max_bytes: int) -> Decoded:
    """The parse stage: Arrow columns of the readable events, a reason for each other one."""
    return decode(batch.values, contract, max_bytes)


def score(decoded: Decoded, model: LiveModel) -> ScoredBatch:
    """The contract's checks and the model on the decoded rows (the batch job's code)."""
    return model.scorer.score(decoded.batch)


@dataclass(frozen=True)
class ShadowOutgoing:
    """The challenger's part of a micro-batch: its predictions, and how they compare.

    ``refused_kinds`` has one reason kind per event the challenger refused, and
    ``refused_scored`` counts those the champion scored (the sign of a challenger that
    does not fit the events); ``disagreements`` and ``score_differences`` (absolute, one
    per event) are taken over the events both models scored.
    """

    records: list[Record]
    refused_kinds: list[str]
    refused_scored: int
    disagreements: int
    score_differences: np.ndarray

    @property
    def predictions(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class Outgoing:
    """What a micro-batch sends, in input order, and the dead letters' reason kinds.

    ``shadow``: the challenger's records and comparison, sent in the same transaction.
    """

    records: list[Record]
    dead_kinds: list[str]
    shadow: ShadowOutgoing | None = None

    @property
    def predictions(self) -> int:
        return len(self.records) - len(self.dead_kinds)

    def to_send(self) -> list[Record]:
        """The champion's records, then the challenger's."""
        return self.records if self.shadow is None else [*self.records, *self.shadow.records]


def route(
    batch: Batch,
    decoded: Decoded,
    scored: ScoredBatch,
    model: LiveModel,
    output_topic: str,
    dlq_topic: str,
    now_ms: int,
) -> Outgoing:
    """One record per event: its prediction, or the event itself as a dead letter."""
    refused: dict[int, Refused] = {r.index: r for r in decoded.refused}
    reasons = scored.reason.to_pylist() if not scored.valid.all() else None
    for row, index in enumerate(decoded.rows):
        if not scored.valid[row]:
            assert reasons is not None
            refused[index] = Refused(index, scored.kinds[row] or "invalid", reasons[row] or "")
    scores, labels = scored.score.to_pylist(), scored.label.to_pylist()
    encode = prediction_encoder(model.scorer.contract.key)
    identity, version = _identity(model)
    scored_time = iso_millis(now_ms)
    rows = decoded.rows  # increasing batch indices of the decoded events
    next_row = 0
    records: list[Record] = []
    dead: list[str] = []
    for index, key in enumerate(batch.keys):
        row = -1
        if next_row < len(rows) and rows[next_row] == index:
            row, next_row = next_row, next_row + 1
        problem = refused.get(index)
        if problem is None:
            value = encode(
                decoded.keys[row],
                scores[row],
                labels[row],
                identity,
                iso_millis(batch.timestamps[index]),
                scored_time,
            )
            records.append((output_topic, key, value, version))
            continue
        records.append(_dead_letter(batch, index, problem, dlq_topic, version))
        dead.append(problem.kind)
    return Outgoing(records, dead)


def _dead_letter(
    batch: Batch, index: int, problem: Refused, topic: str, version: list[tuple[str, bytes]]
) -> Record:
    origin = (batch.topics[index], batch.partitions[index], batch.offsets[index])
    log.debug("dead letter %s-%d@%d: %s", *origin, problem.reason)
    headers = dead_letter_headers(batch.messages[index].headers(), problem, *origin, version)
    key, value = batch.keys[index], batch.values[index]
    # Kafka needs a key or a value; a keyless empty event is forwarded as b"".
    return (topic, key, value if value is not None or key is not None else b"", headers)


def shadow(
    batch: Batch,
    decoded: Decoded,
    scored: ScoredBatch,
    champion: LiveModel,
    challenger: LiveModel,
    topic: str,
    max_bytes: int,
    now_ms: int,
) -> ShadowOutgoing:
    """The challenger's prediction of every event it accepts, for the shadow topic.

    The records have the champion's shape (same Kafka key, the prediction's encoding, the
    ``model_name`` and ``model_version`` headers) with the challenger's identity. The
    events are decoded again only when the challenger reads them differently (another key
    or other features); its refusals are counted, not sent anywhere.
    """
    contract = challenger.scorer.contract
    if _reads_alike(contract, champion.scorer.contract):
        own = decoded
    else:
        own = decode_and_validate(batch, contract, max_bytes)
    own_scored = challenger.scorer.score(own.batch)
    refused = [r.kind for r in own.refused]
    refused += [kind or "invalid" for kind in own_scored.kinds if kind is not None]

    identity, headers = _identity(challenger)
    encode = prediction_encoder(contract.key)
    scored_time = iso_millis(now_ms)
    scores, labels = own_scored.score.to_pylist(), own_scored.label.to_pylist()
    valid = own_scored.valid
    records: list[Record] = []
    for row, index in enumerate(own.rows):
        if valid[row]:
            value = encode(
                own.keys[row],
                scores[row],
                labels[row],
                identity,
                iso_millis(batch.timestamps[index]),
                scored_time,
            )
            records.append((topic, batch.keys[index], value, headers))

    ours, theirs = _per_event(len(batch), own, own_scored), _per_event(len(batch), decoded, scored)
    both = ours[2] & theirs[2]
    return ShadowOutgoing(
        records=records,
        refused_kinds=refused,
        refused_scored=int((theirs[2] & ~ours[2]).sum()),
        disagreements=int((ours[1][both] != theirs[1][both]).sum()),
        score_differences=np.abs(ours[0][both] - theirs[0][both]),
    )


def _identity(model: LiveModel) -> tuple[tuple[str, str], list[tuple[str, bytes]]]:
    """A model's (name, version) for its predictions' values, and the same as headers."""
    headers = [(H_MODEL_NAME, model.name.encode()), (H_MODEL_VERSION, model.version.encode())]
    return (model.name, model.version), headers


def _reads_alike(a: Contract, b: Contract) -> bool:
    """Whether events decode the same way under both contracts (same key, names and types)."""
    return a.key == b.key and [(f.name, f.type) for f in a.features] == [
        (f.name, f.type) for f in b.features
    ]


def _per_event(n: int, decoded: Decoded, scored: ScoredBatch) -> tuple[np.ndarray, ...]:
    """(score, label, scored) of each of a batch's ``n`` events, from its decoded rows."""
    scores, labels, done = np.full(n, np.nan), np.full(n, -1, np.int64), np.zeros(n, bool)
    rows = np.asarray(decoded.rows, dtype=np.int64)[scored.valid]
    scores[rows] = scored.score.to_numpy(zero_copy_only=False)[scored.valid]
    labels[rows] = scored.label.fill_null(-1).to_numpy(zero_copy_only=False)[scored.valid]
    done[rows] = True
    return scores, labels, done
