"""The contract validator: never raises, and rejects exactly what violates the contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring.errors import ContractError
from scoring.model.contract import Contract, Feature, Output, validate

CATS = ("a", "b", "c")


def _numeric_feature() -> st.SearchStrategy[Feature]:
    bounds = st.one_of(st.none(), st.floats(-100, 100, allow_nan=False))
    return st.builds(
        lambda name, kind, nullable, lo, hi: Feature(
            name=name,
            type=kind,
            nullable=nullable,
            min=None if lo is None or hi is None else min(lo, hi),
            max=None if lo is None or hi is None else max(lo, hi),
        ),
        st.just("x"),
        st.sampled_from(["double", "int64"]),
        st.booleans(),
        bounds,
        bounds,
    )


def _string_feature() -> st.SearchStrategy[Feature]:
    return st.builds(
        lambda nullable, cats: Feature(name="s", type="string", nullable=nullable, categories=cats),
        st.booleans(),
        st.one_of(st.none(), st.just(CATS)),
    )


def _oracle_numeric(value: float | None, f: Feature) -> bool:
    """Plain-Python statement of the contract for one number."""
    if value is None:
        return f.nullable
    if not math.isfinite(value):
        return False
    if f.type == "int64" and value != math.floor(value):
        return False
    if f.min is not None and value < f.min:
        return False
    return not (f.max is not None and value > f.max)


def _oracle_string(value: str | None, f: Feature) -> bool:
    if value is None:
        return f.nullable
    return f.categories is None or value in f.categories


numbers = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-1000, 1000).map(float)
)
strings = st.one_of(st.none(), st.sampled_from((*CATS, "", "zz", "A")), st.text(max_size=5))


@settings(deadline=None)
@given(
    numeric=_numeric_feature(),
    text=_string_feature(),
    rows=st.lists(st.tuples(numbers, strings), max_size=40),
)
def test_rejects_exactly_the_rows_that_violate_the_contract(
    numeric: Feature, text: Feature, rows: list[tuple[float | None, str | None]]
) -> None:
    batch = pa.table(
        {
            "x": pa.array([r[0] for r in rows], pa.float64()),
            "s": pa.array([r[1] for r in rows], pa.string()),
        }
    )
    result = validate(batch, [numeric, text])
    expected = [_oracle_numeric(x, numeric) and _oracle_string(s, text) for x, s in rows]
    assert result.valid.tolist() == expected
    for ok, reason in zip(result.valid, result.reasons, strict=True):
        assert (reason is None) == bool(ok)


_VALUES = {
    pa.int8(): st.integers(-128, 127),
    pa.int64(): st.integers(-(2**63), 2**63 - 1),
    pa.float32(): st.floats(width=32),
    pa.float64(): st.floats(),
    pa.bool_(): st.booleans(),
    pa.string(): st.text(max_size=8),
    pa.large_string(): st.text(max_size=8),
    pa.binary(): st.binary(max_size=8),
    pa.date32(): st.dates(),
    pa.decimal128(38, 2): st.decimals(
        min_value=-(10**30), max_value=10**30, places=2, allow_nan=False, allow_infinity=False
    ),
}


@settings(deadline=None)
@given(
    kind=st.sampled_from(list(_VALUES)),
    data=st.data(),
    feature=st.one_of(_numeric_feature(), _string_feature()),
)
def test_never_raises_on_any_column_type(
    kind: pa.DataType, feature: Feature, data: st.DataObject
) -> None:
    values = data.draw(st.lists(st.one_of(st.none(), _VALUES[kind]), max_size=20))
    result = validate(pa.table({feature.name: pa.array(values, kind)}), [feature])
    assert len(result.reasons) == len(values)
    if None in values and not feature.nullable:
        assert not result.valid[values.index(None)]


def test_wrong_type_and_missing_column_reject_every_row() -> None:
    batch = pa.table({"x": pa.array(["1", "2"])})
    result = validate(batch, [Feature(name="x", type="double"), Feature(name="y", type="string")])
    assert result.valid.tolist() == [False, False]
    assert result.reasons[0] == "x: expected double, got string; y: missing"


def test_reasons_name_the_feature_and_the_value() -> None:
    batch = pa.table({"amount": [5.0, -1.0, math.nan, None], "country": ["US", "ZZ", "US", "US"]})
    features = [
        Feature(name="amount", type="double", nullable=False, min=0.0),
        Feature(name="country", type="string", categories=("US",)),
    ]
    assert validate(batch, features).reasons == [
        None,
        "amount: -1.0 is below min 0.0; country: unknown category 'ZZ'",
        "amount: nan is not a finite number",
        "amount: null where the contract requires a value",
    ]


def test_integers_and_decimals_count_as_numbers() -> None:
    batch = pa.table({"x": pa.array([1, 2, 300], pa.int32())})
    result = validate(batch, [Feature(name="x", type="int64", max=100)])
    assert result.valid.tolist() == [True, True, False]
    assert np.array_equal(
        validate(pa.table({"x": pa.array([1.5])}), [Feature(name="x", type="int64")]).valid, [False]
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"key": "id", "features": [{"name": "id", "type": "double"}]},
        {
            "key": "k",
            "features": [{"name": "a", "type": "double"}, {"name": "a", "type": "double"}],
        },
        {"key": "k", "features": [{"name": "a", "type": "string", "min": 1}]},
        {"key": "k", "features": [{"name": "a", "type": "double", "min": 2, "max": 1}]},
        {"key": "k", "features": [{"name": "a", "type": "double"}], "input_mode": "tensor"},
    ],
)
def test_malformed_contracts_are_refused(bad: dict) -> None:
    base = {"output": Output(score_output="p").model_dump(), "onnx_sha256": "0" * 64}
    with pytest.raises(ContractError, match="invalid"):
        Contract.from_json(json.dumps({**base, **bad}))
