"""The contract compiled into Spark SQL refuses the same rows, for the same reasons, as Python.

Hypothesis draws contracts (numeric and string features, nullable or not, ranges,
categories) and tables whose columns hold nulls, NaN, infinities, boundary values and
their neighbours, huge and fractional numbers, unknown categories and columns of the
wrong type. Every row's reason text and kind from the SQL validator must equal the
Python validator's (:func:`scoring.model.contract.validate`) on the same data.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import SparkSession
from scoring.batch import jvm
from scoring.batch.validation import reason_columns
from scoring.model.contract import Feature, validate

pytestmark = pytest.mark.integration

# Printable and unprintable ASCII, quotes and backslashes (repr escapes them), accented
# letters, a no-break space and a zero-width joiner (printable or not by category).
ALPHABET = st.sampled_from(list("abcAB z'\"\\\t\n\x00\x7féß€\u00a0\u200d✓"))
BOUNDS = st.sampled_from([-1e6, -10.0, -1.5, 0.0, 0.25, 3.0, 7.5, 1e15, 2.5e17])
_FLOAT_TYPES = {"double": pa.float64(), "float": pa.float32()}
_INT_TYPES = {"long": pa.int64(), "int": pa.int32()}


def _near(value: float) -> list[float]:
    return [value, math.nextafter(value, -math.inf), math.nextafter(value, math.inf)]


@st.composite
def _feature(draw: st.DrawFn, index: int) -> tuple[Feature, str]:
    """A contract feature and the Spark-side type of its column (sometimes the wrong one)."""
    name = f"f{index}"
    nullable = draw(st.booleans())
    kind = draw(st.sampled_from(["double", "int64", "string"]))
    if kind == "string":
        categories = draw(
            st.none() | st.lists(st.text(ALPHABET, max_size=4), max_size=4, unique=True).map(tuple)
        )
        column = draw(st.sampled_from(["string", "string", "string", "long"]))
        return Feature(name=name, type="string", nullable=nullable, categories=categories), column
    low, high = draw(st.none() | BOUNDS), draw(st.none() | BOUNDS)
    if low is not None and high is not None and low > high:
        low, high = high, low
    column = draw(
        st.sampled_from(
            ["double", "double", "float", "long", "int", "boolean", "decimal", "string"]
        )
    )
    feature = Feature(name=name, type=kind, nullable=nullable, min=low, max=high)
    return feature, column


def _values(draw: st.DrawFn, feature: Feature, column: str, rows: int) -> pa.Array:
    edges: list[float] = [0.0, -0.0, 0.5, -2.0, 1e16, 1e-5, 123456789.125]
    for bound in (feature.min, feature.max):
        if bound is not None:
            edges += _near(bound)
    maybe_null = st.none()
    if column in _FLOAT_TYPES:
        width = 32 if column == "float" else 64
        value = st.floats(width=width) | st.sampled_from(edges)
        kind = _FLOAT_TYPES[column]
    elif column in _INT_TYPES:
        limit = 2**63 if column == "long" else 2**31
        value = st.integers(-limit, limit - 1) | st.sampled_from(
            [int(e) for e in edges if -limit <= e < limit]
        )
        kind = _INT_TYPES[column]
    elif column == "boolean":
        value, kind = st.booleans(), pa.bool_()
    elif column == "decimal":
        value = st.decimals(-(10**6), 10**6, places=2, allow_nan=False, allow_infinity=False)
        kind = pa.decimal128(12, 2)
    elif feature.categories:
        value = st.sampled_from(feature.categories) | st.text(ALPHABET, max_size=70)
        kind = pa.string()
    else:
        value, kind = st.text(ALPHABET, max_size=70), pa.string()
    cells: list[Any] = draw(st.lists(maybe_null | value, min_size=rows, max_size=rows))
    if column == "float":  # a float32 column holds float32 values
        cells = [None if c is None else float(pa.scalar(c, pa.float32()).as_py()) for c in cells]
    if column == "decimal":
        cells = [None if c is None else Decimal(c) for c in cells]
    return pa.array(cells, kind)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Feature], pa.Table]:
    drawn = [draw(_feature(i)) for i in range(draw(st.integers(1, 4)))]
    rows = draw(st.integers(1, 12))
    columns = {"row": pa.array(range(rows), pa.int64())}
    for feature, column in drawn:
        columns[feature.name] = _values(draw, feature, column, rows)
    return [f for f, _ in drawn], pa.table(columns)


@pytest.fixture(scope="module")
def functions(spark: SparkSession) -> SparkSession:
    jvm.register(spark)
    return spark


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_sql_validator_gives_the_python_reasons_row_by_row(
    functions: SparkSession, case: tuple[list[Feature], pa.Table]
) -> None:
    features, table = case
    frame = functions.createDataFrame(table).coalesce(1)
    reason, kind = reason_columns(frame.schema, features)
    sql = frame.select("row", reason.alias("reason"), kind.alias("kind")).toArrow().sort_by("row")
    # The Python validator sees the rows as Spark hands them to a Python worker.
    python = validate(frame.toArrow().sort_by("row"), features)
    assert sql["reason"].to_pylist() == python.reasons
    assert sql["kind"].to_pylist() == python.kinds


def test_the_reasons_quote_values_as_python_writes_them(functions: SparkSession) -> None:
    """A few fixed rows whose texts a reader can check by eye."""
    features = [
        Feature(name="amount", type="double", nullable=False, min=0.0, max=1e16),
        Feature(name="count", type="int64", nullable=True),
        Feature(name="country", type="string", nullable=True, categories=("FR", "DE")),
        Feature(name="ratio", type="double", nullable=True),
    ]
    table = pa.table(
        {
            "row": [0, 1, 2, 3, 4, 5, 6],
            "amount": [None, -0.5, 3e16, math.inf, 1.0, 1.0, 1e16],
            "count": [1.5, 2.0, None, 1e-05, 2.0, None, -3.0],
            "country": ["FR", "it's", "x" * 70, None, "DE", None, "FR"],
            "ratio": [None, 0.5, None, None, math.inf, math.nan, -1e300],
        }
    )
    frame = functions.createDataFrame(table)
    reason, kind = reason_columns(frame.schema, features)
    got = frame.select("row", reason.alias("r"), kind.alias("k")).toArrow().sort_by("row")
    assert got["r"].to_pylist() == [
        "amount: null where the contract requires a value; count: 1.5 is not an integer",
        'amount: -0.5 is below min 0.0; country: unknown category "it\'s"',
        "amount: 3e+16 is above max 1e+16; country: unknown category '" + "x" * 56 + "...",
        "amount: inf is not a finite number; count: 1e-05 is not an integer",
        # No range on ratio: infinities and NaN are refused all the same.
        "ratio: inf is not a finite number",
        "ratio: nan is not a finite number",
        None,
    ]
    assert got["k"].to_pylist() == [
        "null",
        "out_of_range",
        "out_of_range",
        "not_finite",
        "not_finite",
        "not_finite",
        None,
    ]
