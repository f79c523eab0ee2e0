"""Train the demo fraud model: imputation, scaling and one-hot encoding in one pipeline.

The whole pipeline is converted to ONNX by ``scoring model package``, so no
preprocessing lives outside the graph. Training reads its inputs through
:func:`scoring.model.features.model_frame`, the same input convention scoring uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from scoring.dev.demo.data import FEATURES, KEY, LABEL
from scoring.model.contract import validate
from scoring.model.features import model_frame

__all__ = ["TrainedModel", "build_pipeline", "train"]


@dataclass(frozen=True)
class TrainedModel:
    model_file: Path
    sample_file: Path
    contract_file: Path
    metrics: dict[str, float]


def build_pipeline() -> Pipeline:
    numeric = [f.name for f in FEATURES if f.type != "string"]
    categorical = [f.name for f in FEATURES if f.type == "string"]
    prep = ColumnTransformer(
        [
            (
                "num",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                numeric,
            ),
            ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    return Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=500))])


def train(table: pa.Table, out_dir: Path, source: str, source_version: int | None) -> TrainedModel:
    """Fit on the contract-valid rows of ``table``; write model, sample and contract hints."""
    table = table.filter(pa.array(validate(table, FEATURES).valid))
    holdout = pa.array(np.arange(table.num_rows) % 8 == 0)  # deterministic 1-in-8 split
    held, fit = table.filter(holdout), table.filter(pc.invert(holdout))
    pipeline = build_pipeline().fit(model_frame(fit, FEATURES), fit[LABEL].to_numpy())
    proba = pipeline.predict_proba(model_frame(held, FEATURES))[:, 1]
    labels = held[LABEL].to_numpy()
    metrics = {
        "auc": float(roc_auc_score(labels, proba)),
        "log_loss": float(log_loss(labels, proba)),
        "positive_rate": float(np.mean(labels)),
        "train_rows": float(fit.num_rows),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model_file, sample_file, contract_file = (
        out_dir / "model.joblib",
        out_dir / "sample.parquet",
        out_dir / "contract.json",
    )
    joblib.dump(pipeline, model_file)
    pq.write_table(held.slice(0, 2000).drop_columns([LABEL]), sample_file)
    contract_file.write_text(json.dumps(_contract_hints(source, source_version, metrics), indent=2))
    return TrainedModel(model_file, sample_file, contract_file, metrics)


def _contract_hints(source: str, version: int | None, metrics: dict[str, float]) -> dict[str, Any]:
    """What the trainer knows that a converter cannot infer: ranges, nullability, lineage."""
    return {
        "key": KEY,
        "features": [f.model_dump(exclude_none=True) for f in FEATURES],
        "output": {"threshold": 0.1},  # flags about the riskiest 1% of transactions
        "training_data": {"table": source, "version": version},
        "metrics": metrics,
    }
