"""Event values to Arrow rows: the decoder the stream, the faust agent and the API share.

An input event is one JSON object holding the contract's key and features; other fields
are ignored whatever they hold (any JSON value in an event, any Python object in a
record). :func:`decode` turns a micro-batch of raw values into one Arrow batch of the
events that parse, plus a reason for every one that does not; :func:`decode_records` does
the same for Python mappings (the API's records), taken as the decoded JSON they stand
for. Range, category and finiteness checks are left to
:func:`scoring.model.contract.validate`, exactly as on the batch path. A feature that is
absent from an event is refused (a producer that drops a field is broken); an explicit
``null`` is a missing value, allowed where the feature is nullable. Numbers are carried as
float64, which is what the graph is fed on both paths.

JSON has one number type, so a number is read by its value, not its spelling: an integral
number (``17`` or ``17.0``, as pandas' ``to_json`` writes an integer column that held a
null) is an integer key and fits an ``int64`` feature. A key that is a non-integral
number is refused with a reason showing it, and so is a non-integral value of an
``int64`` feature (by the contract's check, as on the batch path).

Nothing here knows Kafka: the stream's headers and prediction records are
:mod:`scoring.stream.events`.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa

from scoring.model.contract import Contract

__all__ = ["PARSE_KINDS", "Decoded", "Refused", "decode", "decode_records"]

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


@dataclass(frozen=True)
class Refused:
    """Event ``index`` of the micro-batch, refused with a category and a reason.

    ``key`` is the event's key when it was read before the refusal (a missing or
    mistyped feature), None when the event was refused before or for its key.
    """

    index: int
    kind: str
    reason: str
    key: str | int | None = None


@dataclass(frozen=True)
class Decoded:
    """The parsed events as Arrow columns; ``rows[i]`` is the batch index of row ``i``."""

    batch: pa.RecordBatch
    rows: list[int]
    keys: list[str | int]
    refused: list[Refused]


def decode(
    values: Sequence[bytes | None], contract: Contract, max_bytes: int, fast: bool = True
) -> Decoded:
    """Parse raw message values; never raises on any input.

    Each value is first read by a typed reader made for the contract (:class:`_Reader`:
    the key and every feature present, each of an allowed JSON type), straight into a
    row; any value it refuses is read again the careful way (:func:`_parse`), which gives
    the reason. So the result is that of the careful reading alone, only cheaper for the
    events that are fine (``fast=False`` reads every event the careful way; a test
    compares the two).

    The typed reader's rows hold only allowed types; the values of events read the
    careful way are checked here, and an event holding a wrong type is refused. So a
    clean batch costs one parse per event plus one Arrow conversion per feature.
    """
    reader = _reader(contract) if fast else None
    return _decode(values, contract, reader, max_bytes, lambda v: _parse(v, contract, max_bytes))


def decode_records(records: Sequence[object], contract: Contract) -> Decoded:
    """Read Python mappings as :func:`decode` reads the JSON objects they stand for.

    Only the key and the features are read, so any other field may hold anything (a
    date, a Decimal, bytes, a nested structure). Their values are taken as JSON would
    give them back: numpy scalars and subclasses of ``str``, ``int`` and ``float`` as the
    plain values they hold; any other value (a date, a Decimal, a ``pandas.NA``) is
    refused as ``wrong_type`` naming the field. A record that is not a mapping is refused
    as ``not_object``. Never raises on any value a record holds.
    """
    fields = (contract.key, *contract.feature_names)
    return _decode(records, contract, None, 0, lambda r: _read_record(r, contract, fields))


def _decode(
    values: Sequence[Any],
    contract: Contract,
    reader: _Reader | None,
    max_bytes: int,
    parse: Callable[[Any], Refused | tuple[str | int, Mapping[str, Any]]],
) -> Decoded:
    """Each value read by ``reader`` (raw bytes only) or else by ``parse``, the careful way."""
    names = contract.feature_names
    required = frozenset(names)
    picked: list[tuple[Any, ...]] = []
    careful: list[int] = []  # rows of `picked` read the careful way: types unchecked
    rows: list[int] = []
    keys: list[str | int] = []
    refused: dict[int, Refused] = {}
    # Transposed in C: one attrgetter/itemgetter call per event, not a lookup per value.
    pick = _tuple_getter(operator.itemgetter, names)
    for index, value in enumerate(values):
        if reader is not None and value and len(value) <= max_bytes:
            typed = reader.row(value)
            if typed is not None:
                key, features = typed
                rows.append(index)
                keys.append(key)
                picked.append(features)
                continue
        parsed = parse(value)
        if isinstance(parsed, Refused):
            refused[index] = Refused(index, parsed.kind, parsed.reason)
            continue
        key, event = parsed
        if not required <= event.keys():
            missing = next(n for n in names if n not in event)
            refused[index] = Refused(index, "missing_field", f"{missing}: missing", key)
            continue
        careful.append(len(picked))
        rows.append(index)
        keys.append(key)
        picked.append(pick(event))
    columns: list[Sequence[Any]] = (
        list(zip(*picked, strict=True)) if picked else [() for _ in names]
    )
    wrong = {row: why for row in careful if (why := _wrong_type(contract, picked[row]))}
    if wrong:
        keep = [row for row in range(len(picked)) if row not in wrong]
        refused.update(
            {rows[row]: Refused(rows[row], r.kind, r.reason, keys[row]) for row, r in wrong.items()}
        )
        columns = [[column[row] for row in keep] for column in columns]
        rows, keys = [rows[row] for row in keep], [keys[row] for row in keep]
    arrays = [
        pa.array(column, pa.string()) if f.type == "string" else _numbers(column)
        for f, column in zip(contract.features, columns, strict=True)
    ]
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    return Decoded(batch=batch, rows=rows, keys=keys, refused=sorted(refused.values(), key=_index))


def _wrong_type(contract: Contract, features: tuple[Any, ...]) -> Refused | None:
    """The refusal of the first feature value that is not of its allowed JSON types."""
    for feature, item in zip(contract.features, features, strict=True):
        if feature.type == "string":
            if type(item) not in _STRING:
                return _wrong(feature.name, "a string", item)
        elif type(item) not in _NUMBER:
            return _wrong(feature.name, "a number", item)
    return None


_STRING = frozenset({str, type(None)})
_NUMBER = frozenset({int, float, type(None)})  # bool is its own type: refused


def _index(refused: Refused) -> int:
    return refused.index


def _numbers(column: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(column, pa.float64())
    except (OverflowError, pa.ArrowInvalid):
        # An integer beyond float64 becomes inf, which the contract refuses as non-finite.
        # One past 64 bits (kept whole by the typed reader, read as a float by orjson)
        # rounds to the same float64 either way.
        return pa.array([None if v is None else _to_float(v) for v in column], pa.float64())


class _Reader:
    """The contract's events read by msgspec straight into typed rows.

    Accepts only what the careful reading accepts as it is: a JSON object holding the key
    (a non-empty string, or an integer within 64 bits) and every feature, each of its
    allowed JSON types (a number or null; a string or null), other fields ignored. Returns
    ``None`` for anything else, including a key written ``17.0``, which the careful
    reading turns into 17.
    """

    def __init__(self, contract: Contract) -> None:
        number, text = int | float | None, str | None
        fields = [("key", str | int | float)] + [
            (f"f{i}", text if f.type == "string" else number)
            for i, f in enumerate(contract.features)
        ]
        names = {"key": contract.key} | {f"f{i}": f.name for i, f in enumerate(contract.features)}
        struct = msgspec.defstruct("Event", fields, rename=names, gc=False)
        self._decode: Callable[[bytes], Any] = msgspec.json.Decoder(struct).decode
        attrs = [f"f{i}" for i in range(len(contract.features))]
        self._features = _tuple_getter(operator.attrgetter, attrs)

    def row(self, value: bytes) -> tuple[str | int, tuple[Any, ...]] | None:
        try:
            event = self._decode(value)
        except Exception:  # any refusal: the careful reading gives the reason
            return None
        key = event.key
        if type(key) is str:
            if not key:
                return None
        elif type(key) is not int or not _INT_KEYS[0] <= key < _INT_KEYS[1]:
            return None
        return key, self._features(event)


def _tuple_getter(
    make: Callable[..., Callable[[Any], Any]], names: Sequence[str]
) -> Callable[[Any], tuple[Any, ...]]:
    """``make(*names)`` (``operator.itemgetter`` or ``attrgetter``), always giving a tuple.

    operator's getters give a bare value for a single name.
    """
    if len(names) > 1:
        return make(*names)
    single = [make(name) for name in names]
    return lambda item: tuple(get(item) for get in single)


# Integers orjson reads as int (beyond them it reads a float, as the careful reading does).
_INT_KEYS = (-(2**63), 2**64)
_READERS: dict[tuple[Any, ...], _Reader | None] = {}


def _reader(contract: Contract) -> _Reader | None:
    """The contract's typed reader (None when its key is also a feature: read carefully)."""
    shape = (contract.key, *((f.name, f.type) for f in contract.features))
    if shape not in _READERS:
        names = contract.feature_names
        _READERS[shape] = None if contract.key in names or not names else _Reader(contract)
    return _READERS[shape]


def _to_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _parse(
    value: bytes | None, contract: Contract, max_bytes: int
) -> Refused | tuple[str | int, Mapping[str, Any]]:
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
    if type(key) is float and abs(key) >= 2**63:
        # orjson reads an integer beyond 64 bits as a float, which would change the key;
        # the standard library keeps it whole (it read the same text, so it parses).
        with contextlib.suppress(ValueError, RecursionError):
            event = json.loads(value)
    return _keyed(event, contract)


def _read_record(
    record: object, contract: Contract, fields: tuple[str, ...]
) -> Refused | tuple[str | int, Mapping[str, Any]]:
    if not isinstance(record, Mapping):
        return Refused(-1, "not_object", f"expected a JSON object, got {type(record).__name__}")
    # The key and the features only: no other field is looked at.
    event = {name: _as_json(record[name]) for name in fields if name in record}
    return _keyed(event, contract)


def _keyed(
    event: Mapping[str, Any], contract: Contract
) -> Refused | tuple[str | int, Mapping[str, Any]]:
    """The event's key, or the refusal of an event whose key is missing or mistyped."""
    key = event.get(contract.key)
    if type(key) is float and key.is_integer():
        key = int(key)  # 17.0 is the integer 17: JSON has one number type
    if key is None or (type(key) is str and not key):
        return Refused(-1, "missing_key", f"key field {contract.key!r} is missing or empty")
    if type(key) is not str and type(key) is not int:  # bool is its own type: refused
        return _wrong(f"key field {contract.key!r}", "a string or an integer", key)
    return key, event


# What a JSON reader gives; a record's value of another type is converted or refused.
_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})
# A subclass's value as its base type holds it (str(x) of a str-based Enum is its name).
_BASES: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (str, str.__str__),
    (int, int.__int__),
    (float, float.__float__),
)


def _as_json(value: Any) -> Any:
    """A record's value as ``json.loads(json.dumps(value))`` gives it where it is a number
    or a string; any other value as it is, for the type check to refuse."""
    if type(value) in _JSON_SCALARS:
        return value
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()  # np.bool_ becomes a bool, refused as JSON's true would be
    for base, plain in _BASES:
        if isinstance(value, base):
            return plain(value)
    return value


def _wrong(name: str, expected: str, value: Any) -> Refused:
    try:
        shown = json.dumps(value)  # spells NaN and Infinity as sent
    except (TypeError, ValueError, RecursionError):
        shown = _repr(value)  # a record's value JSON has no type for: a date, a Decimal
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return Refused(-1, "wrong_type", f"{name}: expected {expected}, got {shown}")


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a record may hold any object; refusing it must not raise
        return f"a {type(value).__name__}"
