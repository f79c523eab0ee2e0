"""Decoding event values against a contract (scoring.model.decode); no broker involved."""

from __future__ import annotations

import json
import math

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring.model.contract import Contract, Feature, Output, validate
from scoring.model.decode import decode

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
