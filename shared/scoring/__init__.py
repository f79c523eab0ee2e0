"""Scoring: one ONNX model artifact, scored nightly on Spark + Delta and live on Kafka.

The public API, for code that embeds the scorer (see the README, "Embedding the scorer")::

    import scoring

    model = scoring.load_model("models:/fraud@champion")
    predictions = model.score_records([{"transaction_id": "t1", "amount": 12.5, ...}])
    model.name, model.version, predictions[0].score, predictions[0].reason

Everything else (``scoring.batch``, ``scoring.stream``, ``scoring.lifecycle``, ...) is the
jobs' own code. The API is imported on first use, so ``import scoring`` stays light: no
onnxruntime, pyarrow, Spark or MLflow until a model is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scoring.errors import ScoringError

if TYPE_CHECKING:
    from scoring.api import Model, Prediction, load_model
    from scoring.model.artifact import ScoredBatch

__all__ = ["Model", "Prediction", "ScoredBatch", "ScoringError", "load_model"]

# Where each lazily imported name lives.
_LAZY = {
    "Model": "scoring.api",
    "Prediction": "scoring.api",
    "load_model": "scoring.api",
    "ScoredBatch": "scoring.model.artifact",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scoring' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
