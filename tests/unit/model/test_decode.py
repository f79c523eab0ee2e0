"""Decoding event values against a contract (scoring.model.decode); no broker involved."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum, IntEnum

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring.model.contract import Contract, Feature, Output, validate
from scoring.model.decode import decode, decode_records

CONTRACT = Contract(
    key="id",
    features=(
        Feature(name="amount", type="double", nullable=False, min=0),
        Feature(name="age", type="int64", nullable=True),
        Feature(name="country", type="string", categories=("US", "GB")),
    ),
    output=Output(score_output="probabilities"),
    onnx_sha256="0" * 64,
)
GOOD = {"id": "t-1", "amount": 12.5, "age": 40, "country": "US", "extra": [1, 2]}


def _decode(*values: bytes | None, max_bytes: int = 1000):  # type: ignore[no-untyped-def]
    return decode(list(values), CONTRACT, max_bytes)


def test_good_events_become_arrow_rows_in_order() -> None:
    second = {**GOOD, "id": 7, "age": None, "country": None}
    decoded = _decode(json.dumps(GOOD).encode(), json.dumps(second).encode())
    assert decoded.refused == []
    assert decoded.rows == [0, 1] and decoded.keys == ["t-1", 7]
    assert decoded.batch.schema == pa.schema(
        [("amount", pa.float64()), ("age", pa.float64()), ("country", pa.string())]
    )
    assert decoded.batch.to_pydict() == {
        "amount": [12.5, 12.5],
        "age": [40.0, None],
        "country": ["US", None],
    }


def test_every_unreadable_event_is_refused_with_its_kind() -> None:
    cases = {
        b"": "empty",
        None: "empty",
        b"x" * 1001: "oversized",
        b"{nope": "not_json",
        b"\xff\xfe": "not_json",
        b"[" * 900: "not_json",
        b"[1]": "not_object",
        b"3": "not_object",
        json.dumps({**GOOD, "id": None}).encode(): "missing_key",
        json.dumps({**GOOD, "id": True}).encode(): "wrong_type",
        json.dumps({**GOOD, "id": 17.5}).encode(): "wrong_type",
        json.dumps({**GOOD, "id": [1]}).encode(): "wrong_type",
        json.dumps({k: v for k, v in GOOD.items() if k != "id"}).encode(): "missing_key",
        json.dumps({k: v for k, v in GOOD.items() if k != "age"}).encode(): "missing_field",
        json.dumps({**GOOD, "amount": "1"}).encode(): "wrong_type",
        json.dumps({**GOOD, "amount": False}).encode(): "wrong_type",
        json.dumps({**GOOD, "country": 1}).encode(): "wrong_type",
    }
    values = list(cases)
    decoded = decode([*values, json.dumps(GOOD).encode()], CONTRACT, 1000)
    assert decoded.rows == [len(values)]
    assert [(r.index, r.kind) for r in decoded.refused] == [
        (i, cases[v]) for i, v in enumerate(values)
    ]
    assert all(r.reason for r in decoded.refused)


def test_integral_numbers_are_integers_as_pandas_writes_them() -> None:
    """pandas' to_json writes an integer column that held a null as 17.0, 40.0, null."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": [17, 18, None],
            "amount": [1.5, 2.0, 3.0],
            "age": [40, None, 41],
            "country": ["US", "GB", "US"],
        }
    )
    lines = frame.to_json(orient="records", lines=True).splitlines()
    assert '"id":17.0' in lines[0] and '"age":40.0' in lines[0]
    decoded = _decode(*(line.encode() for line in lines))
    assert decoded.rows == [0, 1]
    assert decoded.keys == [17, 18] and all(type(k) is int for k in decoded.keys)
    assert [r.kind for r in decoded.refused] == ["missing_key"]  # the null key
    assert validate(decoded.batch, CONTRACT.features).valid.tolist() == [True, True]


def test_non_integral_numbers_are_refused_showing_the_value() -> None:
    decoded = _decode(json.dumps({**GOOD, "id": 17.25}).encode())
    (refused,) = decoded.refused
    assert refused.kind == "wrong_type" and "17.25" in refused.reason and "'id'" in refused.reason
    # An int64 feature: the contract's check refuses it, as on the batch path.
    decoded = _decode(json.dumps({**GOOD, "age": 40.5}).encode(), json.dumps(GOOD).encode())
    checked = validate(decoded.batch, CONTRACT.features)
    assert checked.valid.tolist() == [False, True]
    assert checked.kinds[0] == "wrong_type" and "40.5" in (checked.reasons[0] or "")


def test_nan_and_infinity_tokens_reach_the_contract_check() -> None:
    text = json.dumps({**GOOD, "amount": math.nan}).encode()
    assert b"NaN" in text
    decoded = _decode(text)
    assert decoded.refused == [] and math.isnan(decoded.batch.column(0)[0].as_py())


@given(st.binary(max_size=200))
def test_decode_never_raises(value: bytes) -> None:
    decoded = _decode(value)
    assert len(decoded.rows) + len(decoded.refused) == 1


# Integers at the edges of what orjson keeps as int (beyond them it reads a float).
_EDGES = st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**63), -(2**63) - 1])
_INTS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), _EDGES)
# Mostly what a contract takes, sometimes what it refuses.
_KEYS = st.one_of(
    st.text(max_size=4), _INTS, st.integers(-5, 5).map(float), st.floats(), st.booleans(), st.none()
)
_NUMBERS = st.one_of(st.floats(), _INTS, st.none(), st.booleans(), st.text(max_size=2))
_TEXTS = st.one_of(st.sampled_from(["US", "GB", "", "\u00e9"]), st.none(), st.integers(0, 3))
_COMPLETE = st.fixed_dictionaries(
    {"id": _KEYS, "amount": _NUMBERS, "age": _NUMBERS, "country": _TEXTS},
    optional={"extra": st.lists(st.integers(), max_size=2)},
)
_PARTIAL = st.dictionaries(
    st.sampled_from(["id", "amount", "age", "country"]), st.one_of(_KEYS, _NUMBERS, _TEXTS)
)
_EVENTS = st.one_of(_COMPLETE, _PARTIAL).map(lambda e: json.dumps(e).encode())
_VALUES = st.one_of(
    _EVENTS, _EVENTS, _EVENTS, _EVENTS.map(lambda v: v[:-1]), st.binary(max_size=40), st.none()
)


@settings(deadline=None)
@given(st.lists(_VALUES, max_size=8))
def test_the_typed_reader_gives_what_the_careful_reading_gives(values: list[bytes | None]) -> None:
    fast = decode(values, CONTRACT, 1000)
    careful = decode(values, CONTRACT, 1000, fast=False)
    assert (fast.rows, fast.refused) == (careful.rows, careful.refused)
    assert [(type(k), k) for k in fast.keys] == [(type(k), k) for k in careful.keys]
    assert repr(fast.batch.to_pydict()) == repr(careful.batch.to_pydict())  # NaN as "nan"


def test_the_typed_reader_takes_good_events_and_leaves_the_rest() -> None:
    from scoring.model.decode import _reader

    reader = _reader(CONTRACT)
    assert reader is not None
    assert reader.row(json.dumps(GOOD).encode()) == ("t-1", (12.5, 40, "US"))
    for odd in (
        {**GOOD, "id": 17.0},
        {**GOOD, "id": ""},
        {**GOOD, "id": 2**64},
        {**GOOD, "age": True},
    ):
        assert reader.row(json.dumps(odd).encode()) is None  # read the careful way
    # An integer past 64 bits, kept whole here and read as a float by orjson, rounds alike.
    values = [json.dumps(GOOD).encode(), json.dumps({**GOOD, "amount": 2**70}).encode()]
    assert decode(values, CONTRACT, 1000).batch.column(0).to_pylist() == [12.5, float(2**70)]


# Any JSON value, as a field outside the contract may hold it.
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
_OUTSIDE = st.text(max_size=6).filter(lambda name: name not in {"id", *CONTRACT.feature_names})
_EXTRAS = st.dictionaries(_OUTSIDE, _JSON, max_size=4)


def _with(event: dict[str, object], extras: dict[str, object]) -> bytes:
    return json.dumps({**extras, **event}).encode()  # extras before and after the contract's


def test_fields_outside_the_contract_are_ignored_whatever_json_they_hold() -> None:
    event = {k: v for k, v in GOOD.items() if k != "extra"}
    extras: list[object] = [
        {"a": {"b": [1, {"c": None}]}},
        [1, "two", [3.5, None], {}],
        "2026-11-07",
        "2026-11-07T10:00:00.123+01:00",
        None,
        10**40,
        -(10**400),
        1.5e308,
        float("nan"),  # written NaN
        float("inf"),  # written Infinity
        True,
        "\u00e9\ud83d\ude00",
        [[[[[[[[[[[]]]]]]]]]]] * 3,
    ]
    values = [json.dumps(event).encode()]
    values += [_with(event, {"extra": extra}) for extra in extras]
    values.append(json.dumps(event)[:-1].encode() + b', "big": 123456789012345678901234567890}')
    for fast in (True, False):
        decoded = decode(values, CONTRACT, 10_000, fast=fast)
        assert decoded.refused == [], decoded.refused
        assert decoded.keys == ["t-1"] * len(values)
        assert decoded.batch.to_pylist() == [decoded.batch.to_pylist()[0]] * len(values)


@settings(deadline=None)
@given(st.lists(st.tuples(_VALUES, _EXTRAS), max_size=6))
def test_extra_json_fields_never_change_what_an_event_decodes_to(
    cases: list[tuple[bytes | None, dict[str, object]]],
) -> None:
    plain = [value for value, _ in cases]
    extended = []
    for value, extras in cases:
        try:
            event = json.loads(value) if value else None
        except ValueError:
            event = None
        extended.append(_with(event, extras) if isinstance(event, dict) else value)
    for fast in (True, False):
        ours, theirs = decode(plain, CONTRACT, 10**6, fast), decode(extended, CONTRACT, 10**6, fast)
        assert (ours.rows, ours.keys, ours.refused) == (theirs.rows, theirs.keys, theirs.refused)
        assert repr(ours.batch.to_pydict()) == repr(theirs.batch.to_pydict())


def _deep(depth: int) -> list[object]:
    """A list nested ``depth`` deep: beyond what json.dumps and repr can write."""
    nested: list[object] = []
    for _ in range(depth):
        nested = [nested]
    return nested


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


# Python values JSON has no type for, and that json.dumps refuses.
_OBJECTS = st.sampled_from(
    [
        date(2026, 11, 7),
        datetime(2026, 11, 7, 10, 30, tzinfo=UTC),
        Decimal("12.5"),
        b"bytes",
        {"nested": [date(2026, 1, 1)]},
        {1, 2},
        object(),
        _Unprintable(),
        np.datetime64("2026-11-07T10:00:00.000000000"),
    ]
)


# Events as records: keys of any size (kept whole on both paths); feature values within 64
# bits, as a reason spells a wider one as the float orjson reads.
_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_RECORD_NUMBERS = st.one_of(st.floats(), _INT64, st.none(), st.booleans(), st.text(max_size=2))
_RECORDS = st.fixed_dictionaries(
    {"id": _KEYS, "amount": _RECORD_NUMBERS, "age": _RECORD_NUMBERS, "country": _TEXTS}
).flatmap(
    lambda record: st.sets(st.sampled_from(sorted(record))).map(
        lambda dropped: {k: v for k, v in record.items() if k not in dropped}
    )
)


@settings(deadline=None)
@given(st.lists(st.tuples(_RECORDS, st.dictionaries(_OUTSIDE, _OBJECTS)), max_size=6))
def test_records_read_as_the_json_they_stand_for_whatever_else_they_hold(
    cases: list[tuple[dict[str, object], dict[str, object]]],
) -> None:
    as_json = decode([json.dumps(event).encode() for event, _ in cases], CONTRACT, 10**6)
    records = [{**extras, **event} for event, extras in cases]
    as_records = decode_records(records, CONTRACT)
    assert (as_records.rows, as_records.refused) == (as_json.rows, as_json.refused)
    assert [(type(k), k) for k in as_records.keys] == [(type(k), k) for k in as_json.keys]
    assert repr(as_records.batch.to_pydict()) == repr(as_json.batch.to_pydict())


def test_a_key_or_feature_holding_what_json_cannot_is_refused_naming_it() -> None:
    event = {k: v for k, v in GOOD.items() if k != "extra"}
    records: list[object] = [
        {**event, "amount": date(2026, 11, 7)},
        {**event, "country": Decimal("1")},
        {**event, "age": {"years": [date(2026, 1, 1)]}},
        {**event, "amount": _Unprintable()},
        {**event, "id": datetime(2026, 11, 7, 10, 30)},
        {**event, "id": b"t-1"},
        {**event, "amount": np.datetime64("2026-11-07")},
        ["not", "a", "mapping"],
        {**event, "age": _deep(100_000)},
    ]
    decoded = decode_records(records, CONTRACT)
    assert decoded.rows == []
    got = [(r.index, r.kind, r.reason, r.key) for r in decoded.refused]
    assert got == [
        (0, "wrong_type", "amount: expected a number, got datetime.date(2026, 11, 7)", "t-1"),
        (1, "wrong_type", "country: expected a string, got Decimal('1')", "t-1"),
        (
            2,
            "wrong_type",
            "age: expected a number, got {'years': [datetime.date(2026, 1, 1)]}",
            "t-1",
        ),
        (3, "wrong_type", "amount: expected a number, got a _Unprintable", "t-1"),
        (
            4,
            "wrong_type",
            "key field 'id': expected a string or an integer, got "
            "datetime.datetime(2026, 11, 7, 10, 30)",
            None,
        ),
        (5, "wrong_type", "key field 'id': expected a string or an integer, got b't-1'", None),
        (6, "wrong_type", "amount: expected a number, got np.datetime64('2026-11-07')", "t-1"),
        (7, "not_object", "expected a JSON object, got list", None),
        (8, "wrong_type", "age: expected a number, got a list", "t-1"),
    ]


def test_numpy_scalars_and_subclasses_are_the_plain_values_they_hold() -> None:
    class Country(str, Enum):  # noqa: UP042 (str() of it is its name, not its value)
        US = "US"

    class Age(IntEnum):
        FORTY = 40

    event = {k: v for k, v in GOOD.items() if k != "extra"}
    records = [
        event,
        {"id": np.str_("t-1"), "amount": np.float64(12.5), "age": np.int64(40), "country": "US"},
        {**event, "amount": np.float32(12.5), "age": Age.FORTY, "country": Country.US},
        {**event, "id": np.int64(7)},
        {**event, "amount": np.bool_(True)},  # a bool, refused as JSON's true is
    ]
    decoded = decode_records(records, CONTRACT)
    assert decoded.rows == [0, 1, 2, 3]
    assert decoded.keys == ["t-1", "t-1", "t-1", 7] and type(decoded.keys[3]) is int
    assert decoded.batch.to_pylist() == [{"amount": 12.5, "age": 40.0, "country": "US"}] * 4
    (refused,) = decoded.refused
    assert refused.reason == "amount: expected a number, got true" and refused.key == "t-1"


def test_events_refused_after_their_key_was_read_carry_it() -> None:
    missing = {k: v for k, v in GOOD.items() if k != "age"}
    values = [json.dumps(missing).encode(), json.dumps({**GOOD, "amount": "1"}).encode()]
    values.append(json.dumps({**GOOD, "id": None}).encode())
    for fast in (True, False):
        decoded = decode(values, CONTRACT, 1000, fast=fast)
        assert [(r.kind, r.key) for r in decoded.refused] == [
            ("missing_field", "t-1"),
            ("wrong_type", "t-1"),
            ("missing_key", None),
        ]


def test_a_key_beyond_64_bits_is_kept_whole() -> None:
    """orjson reads such an integer as a float; the key must not change to the float's."""
    keys = [2**64 + 1, -(2**63) - 1, 10**30 + 7]
    values = [json.dumps({**GOOD, "id": key}).encode() for key in keys]
    for fast in (True, False):
        assert decode(values, CONTRACT, 1000, fast=fast).keys == keys
