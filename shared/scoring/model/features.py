"""Turning Arrow columns into model inputs, the same way on every path.

ONNX tensors cannot hold nulls, so a missing number is fed as NaN and a missing string as
the empty string; the graph's own imputers take it from there. Training code, the
converter check, the batch job and the stream processor all go through these functions,
so there is exactly one convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from scoring.model.contract import Contract, Feature, cast_float64

__all__ = ["MISSING_STRING", "model_frame", "model_inputs"]

MISSING_STRING = ""


def _column(data: pa.RecordBatch | pa.Table, feature: Feature) -> np.ndarray:
    column = data.column(data.schema.names.index(feature.name))
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if feature.type == "string":
        if not pa.types.is_string(column.type):
            column = column.cast(pa.string())
        if column.null_count:
            column = pc.fill_null(column, MISSING_STRING)
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)
    if pa.types.is_integer(column.type):  # as contract._as_float64: Arrow's cast, cheaper
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.asarray(cast_float64(column).to_numpy(zero_copy_only=False), dtype=np.float64)


def model_inputs(
    data: pa.RecordBatch | pa.Table, contract: Contract, dtypes: dict[str, np.dtype]
) -> dict[str, np.ndarray]:
    """ONNX feeds for ``data``: one [n, 1] tensor per feature, or one [n, F] tensor.

    ``dtypes`` maps each graph input name to the numpy dtype the graph declares.
    """
    columns = [_column(data, f) for f in contract.features]
    if contract.input_mode == "tensor":
        assert contract.tensor_input is not None
        dtype = dtypes[contract.tensor_input]
        return {contract.tensor_input: np.column_stack([c.astype(dtype) for c in columns])}
    return {
        f.name: c.astype(dtypes[f.name], copy=False).reshape(-1, 1)
        for f, c in zip(contract.features, columns, strict=True)
    }


def model_frame(data: pa.RecordBatch | pa.Table, features: Sequence[Feature]) -> pd.DataFrame:
    """The same values as a DataFrame, for training and for checking a native model."""
    return pd.DataFrame({f.name: _column(data, f) for f in features})
