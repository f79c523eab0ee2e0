"""A second model with another cost profile: 30 numeric features, a gradient-boosted ensemble.

The demo pipeline is cheap per row (a linear model after imputation and one-hot
encoding); a tree ensemble spends most of its time in the graph. The benchmark and the
engine parity tests use both. Data are deterministic; a few rows per day break the
contract on purpose (out of range, NaN, null), so the rejects path is exercised too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.pipeline import Pipeline

from scoring.model.contract import Feature

__all__ = ["DATE", "FEATURES", "KEY", "TreeModel", "generate", "train_trees"]

KEY = "id"
DATE = "ds"
LABEL = "label"
FEATURES = tuple(
    Feature(name=f"x{i:02d}", type="double", nullable=False, min=-10.0, max=10.0) for i in range(30)
)


@dataclass(frozen=True)
class TreeModel:
    model_file: Path
    sample_file: Path
    contract_file: Path


def generate(
    rows: int, start: date, days: int = 1, seed: int = 11, bad_share: float = 0.001
) -> pa.Table:
    """``rows`` rows spread over ``days`` dates: key, date, 30 features and a label."""
    rng = np.random.default_rng(seed)
    # float32-exact values: the graph reads features as float, like the trees were fit.
    x = rng.normal(0.0, 2.0, size=(rows, len(FEATURES))).astype(np.float32).astype(np.float64)
    logit = x[:, 0] * x[:, 1] - np.abs(x[:, 2]) + np.sin(x[:, 3]) + 0.3 * x[:, 4:10].sum(axis=1)
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int32)
    bad = np.flatnonzero(rng.random(rows) < bad_share)
    x[bad[0::2], 5] = 42.0  # above max
    x[bad[1::2], 7] = np.nan  # not finite
    columns: dict[str, pa.Array] = {
        KEY: pa.array(np.arange(rows, dtype=np.int64)),
        DATE: pa.array(
            [start + timedelta(days=int(d)) for d in np.arange(rows) % days], pa.date32()
        ),
    }
    for i, feature in enumerate(FEATURES):
        columns[feature.name] = pa.array(x[:, i])
    columns[LABEL] = pa.array(label)
    return pa.table(columns)


def train_trees(table: pa.Table, out_dir: Path, trees: int = 200) -> TreeModel:
    """Fit a ``trees``-tree gradient-boosting classifier on the contract-valid rows."""
    names = [f.name for f in FEATURES]
    x = np.column_stack([table.column(n).to_numpy() for n in names])
    ok = np.isfinite(x).all(axis=1) & (np.abs(x) <= 10.0).all(axis=1)
    frame = table.select(names).filter(pa.array(ok)).to_pandas()
    # One named input per feature, like the demo pipeline; the column step only gathers them.
    model = Pipeline(
        [
            ("gather", ColumnTransformer([("x", "passthrough", names)])),
            ("trees", GradientBoostingClassifier(n_estimators=trees, max_depth=3, random_state=0)),
        ]
    )
    model.fit(frame, table.column(LABEL).filter(pa.array(ok)).to_numpy())
    out_dir.mkdir(parents=True, exist_ok=True)
    model_file, sample_file, contract_file = (
        out_dir / "model.joblib",
        out_dir / "sample.parquet",
        out_dir / "contract.json",
    )
    joblib.dump(model, model_file)
    pq.write_table(table.filter(pa.array(ok)).slice(0, 2000).select([KEY, *names]), sample_file)
    hints = {"key": KEY, "features": [f.model_dump(exclude_none=True) for f in FEATURES]}
    contract_file.write_text(json.dumps(hints, indent=2))
    return TreeModel(model_file, sample_file, contract_file)
