"""The scoring contract compiled into Spark SQL column expressions.

:func:`reason_columns` gives, for a DataFrame, the refusal reason and reason kind of every
row as two columns, with the same text and kind as the Python validator
(:func:`scoring.model.contract.validate`), so the JVM engine never sends a row to Python
just to check it. The expressions are built once per job from the contract and the
source schema; Spark evaluates them inside the executors.

Two SQL functions of the JVM engine jar (registered by :func:`scoring.batch.jvm.register`)
write values the way Python's ``repr`` does, since the reasons quote the offending value:
``scoring_show_double`` and ``scoring_show_string``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_type

from scoring.model.contract import Feature

__all__ = ["SHOW_DOUBLE", "SHOW_STRING", "reason_columns", "valid_column"]

SHOW_DOUBLE = "scoring_show_double"
SHOW_STRING = "scoring_show_string"

_NUMBERS = (T.NumericType, T.BooleanType)


@dataclass(frozen=True)
class _Problem:
    """One check of one feature: the rows it refuses and the reason text for them."""

    when: Column
    kind: str
    text: Column


def reason_columns(schema: T.StructType, features: Sequence[Feature]) -> tuple[Column, Column]:
    """``(reason, kind)`` columns: both null on a valid row.

    The reason joins every problem of the row with ``"; "`` in feature order; the kind is
    the first problem's, as in :class:`scoring.model.contract.Validation`.
    """
    problems = [p for f in features for p in _problems(schema, f)]
    if not problems:
        return F.lit(None).cast("string"), F.lit(None).cast("string")
    refused = ~valid_column(schema, features)
    texts = [F.when(p.when, p.text) for p in problems]
    reason = F.when(refused, F.concat_ws("; ", *texts))
    kind = F.when(refused, F.coalesce(*[F.when(p.when, F.lit(p.kind)) for p in problems]))
    return reason, kind


def valid_column(schema: T.StructType, features: Sequence[Feature]) -> Column:
    """True where a row passes every check: the cheap test every row goes through.

    The same verdict as "no problem from :func:`_problems`", in a few comparisons per
    feature: Spark orders NaN above every number, so ``value < inf`` (or ``<= max``) also
    refuses NaN, and the reasons are only built for the rows this refuses.
    """
    valid = F.lit(True)
    for feature in features:
        valid = valid & _valid(schema, feature)
    return valid


def _valid(schema: T.StructType, feature: Feature) -> Column:
    if feature.name not in schema.names:
        return F.lit(False)
    column = F.col(f"`{feature.name}`")
    kind = schema[feature.name].dataType
    if feature.type == "string":
        if not isinstance(kind, T.StringType):
            return F.lit(False)
        # isin() is null on a null value: the null test below decides those rows.
        checks = (
            F.lit(True)
            if feature.categories is None
            else (column.isin(list(feature.categories)) if feature.categories else F.lit(False))
        )
    elif not isinstance(kind, _NUMBERS):
        return F.lit(False)
    else:
        value = column.cast("double")
        checks = (value > F.lit(float("-inf"))) & (value < F.lit(float("inf")))
        if feature.type == "int64":
            checks = checks & ((value % F.lit(1.0)) == F.lit(0.0))
        if feature.min is not None:
            checks = checks & (value >= F.lit(feature.min))
        if feature.max is not None:
            checks = checks & (value <= F.lit(feature.max))
    # Three-valued logic: on a null value the checks are null, so this is the nullability.
    return (column.isNull() | checks) if feature.nullable else (column.isNotNull() & checks)


def _text(feature: Feature, *parts: str | Column) -> Column:
    pieces = [F.lit(p) if isinstance(p, str) else p for p in parts]
    return F.concat(F.lit(f"{feature.name}: "), *pieces)


def _show_double(value: Column) -> Column:
    return F.call_function(SHOW_DOUBLE, value)


def _arrow_name(kind: T.DataType) -> str:
    """How the Python validator names a column type: its Arrow type as Spark ships it."""
    try:
        return str(to_arrow_type(kind))
    except Exception:  # a type Spark cannot ship to Arrow; the name is only for the reason
        return kind.simpleString()


def _problems(schema: T.StructType, feature: Feature) -> list[_Problem]:
    """The checks of :func:`scoring.model.contract._check`, in the same order."""
    name = feature.name
    if name not in schema.names:
        return [_Problem(F.lit(True), "missing_field", _text(feature, "missing"))]
    column = F.col(f"`{name}`")
    kind = schema[name].dataType
    out: list[_Problem] = []
    if not feature.nullable:
        out.append(
            _Problem(
                column.isNull(), "null", _text(feature, "null where the contract requires a value")
            )
        )
    if feature.type == "string":
        if not isinstance(kind, T.StringType):
            return [
                *out,
                _Problem(
                    F.lit(True),
                    "wrong_type",
                    _text(feature, f"expected string, got {_arrow_name(kind)}"),
                ),
            ]
        if feature.categories is not None:
            known = column.isin(list(feature.categories)) if feature.categories else F.lit(False)
            out.append(
                _Problem(
                    column.isNotNull() & ~known,
                    "unknown_category",
                    _text(feature, "unknown category ", F.call_function(SHOW_STRING, column)),
                )
            )
        return out
    if not isinstance(kind, _NUMBERS):
        return [
            *out,
            _Problem(
                F.lit(True),
                "wrong_type",
                _text(feature, f"expected {feature.type}, got {_arrow_name(kind)}"),
            ),
        ]
    value = column.cast("double")
    present = column.isNotNull()
    not_finite = present & (F.isnan(value) | (F.abs(value) == F.lit(float("inf"))))
    checkable = present & ~not_finite
    shown = _show_double(value)
    out.append(_Problem(not_finite, "not_finite", _text(feature, shown, " is not a finite number")))
    if feature.type == "int64":
        # Java's % on doubles is exact, so a finite value is whole exactly when this is 0.
        fractional = checkable & ((value % F.lit(1.0)) != F.lit(0.0))
        out.append(_Problem(fractional, "wrong_type", _text(feature, shown, " is not an integer")))
    if feature.min is not None:
        out.append(
            _Problem(
                checkable & (value < F.lit(feature.min)),
                "out_of_range",
                _text(feature, shown, f" is below min {feature.min}"),
            )
        )
    if feature.max is not None:
        out.append(
            _Problem(
                checkable & (value > F.lit(feature.max)),
                "out_of_range",
                _text(feature, shown, f" is above max {feature.max}"),
            )
        )
    return out
