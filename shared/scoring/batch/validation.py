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

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_type

from scoring.model.contract import Feature

__all__ = ["SHOW_DOUBLE", "SHOW_STRING", "reason_columns"]

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
    checked = [_checks(schema, f) for f in features]
    problems = [p for _, found in checked for p in found]
    if not problems:
        return F.lit(None).cast("string"), F.lit(None).cast("string")
    # Every row goes through the cheap verdict; the texts are built for refused rows only.
    refused = ~reduce(operator.and_, [valid for valid, _ in checked])
    texts = [F.when(p.when, p.text) for p in problems]
    reason = F.when(refused, F.concat_ws("; ", *texts))
    kind = F.when(refused, F.coalesce(*[F.when(p.when, F.lit(p.kind)) for p in problems]))
    return reason, kind


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


def _checks(schema: T.StructType, feature: Feature) -> tuple[Column, list[_Problem]]:
    """The checks of :func:`scoring.model.contract._check`, in the same order, and the verdict.

    The verdict (True where the feature passes) is the same as "none of the problems", in
    a few comparisons: Spark orders NaN above every number, so ``value < inf`` (or
    ``<= max``) also refuses NaN. Over 20+ features the problems' conditions, or-ed
    together, made generated code too large for the JIT.
    """
    name = feature.name
    if name not in schema.names:
        return F.lit(False), [_Problem(F.lit(True), "missing_field", _text(feature, "missing"))]
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
            return F.lit(False), [
                *out,
                _Problem(
                    F.lit(True),
                    "wrong_type",
                    _text(feature, f"expected string, got {_arrow_name(kind)}"),
                ),
            ]
        passes = F.lit(True)
        if feature.categories is not None:
            known = column.isin(list(feature.categories)) if feature.categories else F.lit(False)
            passes = known
            out.append(
                _Problem(
                    column.isNotNull() & ~known,
                    "unknown_category",
                    _text(feature, "unknown category ", F.call_function(SHOW_STRING, column)),
                )
            )
        return _verdict(feature, column, passes), out
    if not isinstance(kind, _NUMBERS):
        return F.lit(False), [
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
    passes = (value > F.lit(float("-inf"))) & (value < F.lit(float("inf")))
    out.append(_Problem(not_finite, "not_finite", _text(feature, shown, " is not a finite number")))
    if feature.type == "int64":
        # Java's % on doubles is exact, so a finite value is whole exactly when this is 0.
        whole = (value % F.lit(1.0)) == F.lit(0.0)
        passes = passes & whole
        out.append(
            _Problem(checkable & ~whole, "wrong_type", _text(feature, shown, " is not an integer"))
        )
    if feature.min is not None:
        passes = passes & (value >= F.lit(feature.min))
        out.append(
            _Problem(
                checkable & (value < F.lit(feature.min)),
                "out_of_range",
                _text(feature, shown, f" is below min {feature.min}"),
            )
        )
    if feature.max is not None:
        passes = passes & (value <= F.lit(feature.max))
        out.append(
            _Problem(
                checkable & (value > F.lit(feature.max)),
                "out_of_range",
                _text(feature, shown, f" is above max {feature.max}"),
            )
        )
    return _verdict(feature, column, passes), out


def _verdict(feature: Feature, column: Column, passes: Column) -> Column:
    # Three-valued logic: on a null value ``passes`` is null, so this is the nullability.
    return (column.isNull() | passes) if feature.nullable else (column.isNotNull() & passes)
