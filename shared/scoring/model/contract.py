"""The scoring contract: what a model accepts, what it returns, and where it came from.

The contract travels beside the ONNX graph as ``scoring.json``. :func:`validate` checks
Arrow data against it row by row and never raises: every row comes back either valid or
with a human-readable reason, so the batch job can route it to a rejects table and the
stream processor to a dead-letter topic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scoring.errors import ContractError

__all__ = [
    "CONTRACT_FILE",
    "REASON_KINDS",
    "Contract",
    "Feature",
    "FeatureType",
    "Output",
    "TrainingData",
    "Validation",
    "cast_float64",
    "validate",
]

CONTRACT_FILE = "scoring.json"

FeatureType = Literal["double", "int64", "string"]

# Categories of refused rows: labels for metrics and dead-letter headers.
REASON_KINDS = (
    "missing_field",
    "null",
    "wrong_type",
    "not_finite",
    "out_of_range",
    "unknown_category",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Feature(_Frozen):
    """One input feature. ``min``/``max`` apply to numbers, ``categories`` to strings."""

    name: str = Field(min_length=1)
    type: FeatureType
    # Fail closed: a missing value is refused unless the contract allows it.
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _bounds_fit_type(self) -> Feature:
        numeric = self.type != "string"
        if not numeric and (self.min is not None or self.max is not None):
            raise ValueError(f"feature {self.name!r}: min/max apply only to numeric features")
        if numeric and self.categories is not None:
            raise ValueError(f"feature {self.name!r}: categories apply only to string features")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} is above max {self.max}")
        return self


class Output(_Frozen):
    """How the graph's outputs become ``score`` and ``label``.

    ``score_output`` names the graph output holding the score; for a binary classifier it
    is the probability matrix and ``score_index`` picks the positive class column. The
    label is ``score >= threshold`` (classifiers only), computed here rather than taken
    from the graph so that one threshold rules both paths.
    """

    task: Literal["binary_classification", "regression"] = "binary_classification"
    score_output: str
    score_index: int | None = 1
    threshold: float = 0.5


class TrainingData(_Frozen):
    table: str
    version: int | None = None


class Contract(_Frozen):
    """The machine-readable scoring contract stored as ``scoring.json``."""

    schema_version: Literal[1] = 1
    key: str = Field(min_length=1)
    features: tuple[Feature, ...] = Field(min_length=1)
    input_mode: Literal["columns", "tensor"] = "columns"
    tensor_input: str | None = None
    output: Output
    onnx_file: str = "model.onnx"
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    training_data: TrainingData | None = None
    code_commit: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if self.key in names:
            raise ValueError(f"the key column {self.key!r} cannot also be a feature")
        if self.input_mode == "tensor" and not self.tensor_input:
            raise ValueError("input_mode 'tensor' needs tensor_input (the graph input name)")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str, origin: str = "scoring.json") -> Contract:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ContractError(f"The scoring contract {origin} is invalid: {exc}") from exc

    @classmethod
    def read(cls, path: Path) -> Contract:
        return cls.from_json(path.read_text(), origin=str(path))


@dataclass(frozen=True)
class Validation:
    """Per-row outcome: ``valid[i]`` is True, or ``reasons[i]`` says why row i was refused.

    ``kinds[i]`` names the first problem's category (one of :data:`REASON_KINDS`), a
    bounded label for metrics and dead-letter headers where the reason text is free-form.
    """

    valid: np.ndarray
    reasons: list[str | None]
    kinds: list[str | None]


def validate(data: pa.RecordBatch | pa.Table, features: Sequence[Feature]) -> Validation:
    """Check every row against the contract's features. Never raises on any input data."""
    n = data.num_rows
    problems: list[tuple[np.ndarray, _Reason]] = []
    names = data.schema.names
    for feature in features:
        column = data.column(names.index(feature.name)) if feature.name in names else None
        problems.extend(_check(column, feature, n))
    bad = np.zeros(n, dtype=bool)
    for mask, _ in problems:
        bad |= mask
    reasons: list[str | None] = [None] * n
    kinds: list[str | None] = [None] * n
    for row in np.flatnonzero(bad):
        found = [reason for mask, reason in problems if mask[row]]
        reasons[row] = "; ".join(reason(int(row)) for reason in found)
        kinds[row] = found[0].kind
    return Validation(valid=~bad, reasons=reasons, kinds=kinds)


class _Reason:
    """Builds a row's reason text lazily: only rejected rows pay for formatting."""

    def __init__(
        self,
        name: str,
        kind: str,
        text: str,
        values: np.ndarray | pa.Array | pa.ChunkedArray | None = None,
    ) -> None:
        self.name, self.kind, self.text, self.values = name, kind, text, values

    def __call__(self, row: int) -> str:
        if self.values is None:
            return f"{self.name}: {self.text}"
        value = self.values[row]
        value = value.as_py() if isinstance(value, pa.Scalar) else value.item()
        return f"{self.name}: {self.text.format(value=_show(value))}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole_column(n: int, reason: _Reason) -> list[tuple[np.ndarray, _Reason]]:
    return [(np.ones(n, dtype=bool), reason)] if n else []


def _nulls(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if column.null_count == 0:  # the common case, and a small stream batch's fixed cost
        return np.zeros(len(column), dtype=bool)
    return np.asarray(pc.is_null(column, nan_is_null=False).to_numpy(zero_copy_only=False))


def _check(
    column: pa.Array | pa.ChunkedArray | None, feature: Feature, n: int
) -> list[tuple[np.ndarray, _Reason]]:
    name = feature.name
    if column is None:
        return _whole_column(n, _Reason(name, "missing_field", "missing"))
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    nulls = _nulls(column)
    out: list[tuple[np.ndarray, _Reason]] = []
    if not feature.nullable and nulls.any():
        out.append((nulls, _Reason(name, "null", "null where the contract requires a value")))
    if feature.type == "string":
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return out + _whole_column(
                n, _Reason(name, "wrong_type", f"expected string, got {kind}")
            )
        if feature.categories is not None:
            known = pc.is_in(column, value_set=pa.array(feature.categories, pa.string()))
            unknown = ~np.asarray(known.to_numpy(zero_copy_only=False), dtype=bool) & ~nulls
            if unknown.any():
                out.append(
                    (unknown, _Reason(name, "unknown_category", "unknown category {value}", column))
                )
        return out
    if not (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
    ):
        return out + _whole_column(
            n, _Reason(name, "wrong_type", f"expected {feature.type}, got {kind}")
        )
    values = _as_float64(column)
    present = ~nulls
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(values)
        not_finite = present & ~finite
        if not_finite.any():
            out.append(
                (not_finite, _Reason(name, "not_finite", "{value} is not a finite number", values))
            )
        checkable = present & finite
        if feature.type == "int64":
            fractional = checkable & (np.floor(values) != values)
            if fractional.any():
                out.append(
                    (fractional, _Reason(name, "wrong_type", "{value} is not an integer", values))
                )
        if feature.min is not None:
            low = checkable & (values < feature.min)
            if low.any():
                out.append(
                    (
                        low,
                        _Reason(
                            name, "out_of_range", f"{{value}} is below min {feature.min}", values
                        ),
                    )
                )
        if feature.max is not None:
            high = checkable & (values > feature.max)
            if high.any():
                out.append(
                    (
                        high,
                        _Reason(
                            name, "out_of_range", f"{{value}} is above max {feature.max}", values
                        ),
                    )
                )
    return out


def cast_float64(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Numbers as float64, each the nearest double to its value.

    Arrow's direct decimal-to-float cast is not always correctly rounded (11211.05 became
    11211.050000000001); Spark's cast is. Going through the exact decimal text and Arrow's
    correctly rounded parser gives the nearest double wherever the decimal is read.
    """
    if pa.types.is_float64(column.type):
        return column
    if pa.types.is_decimal(column.type):
        column = pc.cast(column, pa.string())
    return pc.cast(column, pa.float64(), safe=False)


def _as_float64(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Numbers as float64 with nulls as NaN; never raises (huge decimals become inf)."""
    if pa.types.is_integer(column.type):  # numpy's int to double: Arrow's cast, without
        # its dispatch (a fixed cost per call that a one-row request pays per feature)
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    try:
        cast = cast_float64(column)
        return np.asarray(cast.to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array(
            [math.nan if v is None else float(v) for v in column.to_pylist()], dtype=np.float64
        )
