"""Kafka message values to Arrow rows and back: the stream path's wire format.

An input event is one JSON object holding the contract's key and features (other fields
are ignored). :func:`decode` turns a micro-batch of raw values into one Arrow batch of the
events that parse, plus a reason for every one that does not; range, category and
finiteness checks are left to :func:`shared.contract.validate`, exactly as on the batch
path. A feature that is absent from an event is refused (a producer that drops a field is
broken); an explicit ``null`` is a missing value, allowed where the feature is nullable.
Numbers are carried as float64, which is what the graph is fed on both paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from shared.contract import Contract

__all__ = [
    "PARSE_KINDS",
    "Decoded",
    "Refused",
    "decode",
    "encode_prediction",
    "iso_millis",
    "to_events",
]

# Categories of events refused before the contract is checked (see contract.REASON_KINDS).
PARSE_KINDS = (
    "empty",
    "oversized",
    "not_json",
    "not_object",
    "missing_key",
    "missing_field",
    "wrong_type",
)

_MISSING = object()


@dataclass(frozen=True)
class Refused:
    """Event ``index`` of the micro-batch, refused with a category and a reason."""

    index: int
    kind: str
    reason: str


@dataclass(frozen=True)
class Decoded:
    """The parsed events as Arrow columns; ``rows[i]`` is the batch index of row ``i``."""

    batch: pa.RecordBatch
    rows: list[int]
    keys: list[str | int]
    refused: list[Refused]


def decode(values: Sequence[bytes | None], contract: Contract, max_bytes: int) -> Decoded:
    """Parse raw message values; never raises on any input."""
    features = contract.features
    columns: list[list[Any]] = [[] for _ in features]
    rows: list[int] = []
    keys: list[str | int] = []
    refused: list[Refused] = []
    for index, value in enumerate(values):
        problem = _parse(value, contract, max_bytes)
        if isinstance(problem, Refused):
            refused.append(Refused(index, problem.kind, problem.reason))
            continue
        key, event = problem
        typed = _typed(event, contract)
        if isinstance(typed, Refused):
            refused.append(Refused(index, typed.kind, typed.reason))
            continue
        for column, item in zip(columns, typed, strict=True):
            column.append(item)
        rows.append(index)
        keys.append(key)
    arrays = [
        pa.array(column, pa.string() if f.type == "string" else pa.float64())
        for f, column in zip(features, columns, strict=True)
    ]
    batch = pa.RecordBatch.from_arrays(arrays, names=contract.feature_names)
    return Decoded(batch=batch, rows=rows, keys=keys, refused=refused)


def _parse(
    value: bytes | None, contract: Contract, max_bytes: int
) -> Refused | tuple[str | int, dict[str, Any]]:
    if not value:
        return Refused(-1, "empty", "empty message")
    if len(value) > max_bytes:
        return Refused(-1, "oversized", f"message is {len(value)} bytes, above {max_bytes}")
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            # The slow parser reads NaN/Infinity tokens, so such events are refused by
            # the contract as non-finite rather than as unreadable.
            event = json.loads(value)
        except (ValueError, RecursionError):
            return Refused(-1, "not_json", f"not valid JSON: {exc}")
    if not isinstance(event, dict):
        return Refused(-1, "not_object", f"expected a JSON object, got {type(event).__name__}")
    key = event.get(contract.key)
    if isinstance(key, bool) or not isinstance(key, str | int) or key == "":
        return Refused(-1, "missing_key", f"key field {contract.key!r} is missing or not a value")
    return key, event


def _typed(event: dict[str, Any], contract: Contract) -> Refused | list[Any]:
    out: list[Any] = []
    for feature in contract.features:
        value = event.get(feature.name, _MISSING)
        if value is _MISSING:
            return Refused(-1, "missing_field", f"{feature.name}: missing")
        if value is None:
            out.append(None)
        elif feature.type == "string":
            if not isinstance(value, str):
                return _wrong(feature.name, "a string", value)
            out.append(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _wrong(feature.name, "a number", value)
            out.append(float(value))
    return out


def _wrong(name: str, expected: str, value: Any) -> Refused:
    shown = orjson.dumps(value).decode()
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return Refused(-1, "wrong_type", f"{name}: expected {expected}, got {shown}")


def iso_millis(epoch_ms: int) -> str:
    """``2026-11-22T03:04:05.678Z`` for a Kafka timestamp."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def encode_prediction(
    key_field: str,
    key: str | int,
    score: float,
    label: int | None,
    model: tuple[str, str],
    event_ms: int,
    scored_ms: int,
) -> bytes:
    """One output record. Floats are written shortest-round-trip, so they parse back exact."""
    return orjson.dumps(
        {
            key_field: key,
            "score": score,
            "label": label,
            "model_name": model[0],
            "model_version": model[1],
            "event_time": iso_millis(event_ms),
            "scored_time": iso_millis(scored_ms),
        }
    )


def to_events(table: pa.Table, key: str, columns: Iterable[str]) -> Iterator[tuple[bytes, bytes]]:
    """(Kafka key, JSON value) for every row of ``table``: how tests and the demo produce.

    Written with the standard library, which spells NaN and infinities as the bare tokens
    ``NaN``/``Infinity`` (not JSON, but what careless producers send); the processor
    refuses those rows as non-finite, as the batch job does.
    """
    for row in table.select([key, *columns]).to_pylist():
        yield str(row[key]).encode(), json.dumps(row, separators=(",", ":")).encode()
