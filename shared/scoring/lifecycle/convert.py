"""Native models in, ONNX graphs out: loading a trained model file and converting it.

Converters (skl2onnx for scikit-learn, onnxmltools for LightGBM and XGBoost) refuse some
models with their own exceptions and long tracebacks. Every refusal becomes one
:class:`~scoring.errors.ConversionError` that names the step it failed on, the
converter's reason, and the way to write that step so it converts.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx

from scoring.errors import ConversionError, UnsupportedModelError
from scoring.model.contract import Feature
from scoring.model.features import MISSING_STRING

__all__ = [
    "convert_booster",
    "convert_sklearn",
    "encoder_categories",
    "load_native",
]

SKLEARN_SUFFIXES = {".joblib", ".pkl", ".pickle", ".skops"}
LIGHTGBM_SUFFIXES = {".txt", ".lgb"}
XGBOOST_SUFFIXES = {".json", ".ubj", ".xgb"}
WHICH = "README: Which models convert"
EXPORT = "or export the model to ONNX yourself and package the .onnx file"


def load_native(path: Path) -> tuple[str, Any]:
    """The model's flavour ("onnx", "sklearn", "lightgbm", "xgboost") and the model."""
    suffix = path.suffix.lower()
    if suffix not in {".onnx"} | SKLEARN_SUFFIXES | LIGHTGBM_SUFFIXES | XGBOOST_SUFFIXES:
        raise UnsupportedModelError(
            f"Cannot tell what kind of model {path} is from its suffix {suffix!r}. Use .onnx, "
            ".joblib/.pkl/.skops (scikit-learn), .txt (LightGBM) or .json/.ubj (XGBoost)."
        )
    try:
        return _load(path, suffix)
    except UnsupportedModelError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"Cannot read the model file {path}: {_one_line(exc)}. A scikit-learn file is "
            "loaded with the classes it was saved with: package it where the training code "
            "and the same library versions import."
        ) from exc


def _load(path: Path, suffix: str) -> tuple[str, Any]:
    if suffix == ".onnx":
        return "onnx", onnx.load(str(path))
    if suffix == ".skops":
        import skops.io

        # The user vouches for their own file at packaging time; the registered artifact
        # that jobs load later is ONNX only.
        return "sklearn", skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    if suffix in SKLEARN_SUFFIXES:
        import joblib

        model = joblib.load(path)
        module = type(model).__module__
        if module.startswith("lightgbm"):
            return "lightgbm", model.booster_
        if module.startswith("xgboost"):
            return "xgboost", model.get_booster()
        return "sklearn", model
    if suffix in LIGHTGBM_SUFFIXES:
        lightgbm = boosters_module("lightgbm")
        return "lightgbm", lightgbm.Booster(model_file=str(path))
    xgboost = boosters_module("xgboost")
    booster = xgboost.Booster()
    booster.load_model(str(path))
    return "xgboost", booster


def boosters_module(name: str) -> Any:
    """A module of the optional ``boosters`` extra, or an error that says how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UnsupportedModelError(
            f"Packaging a LightGBM or XGBoost model needs {name}, which is not installed. "
            "Install the extra: pip install 'scoring[boosters]'."
        ) from exc


def _children(
    step: Any, columns: Sequence[str] | None
) -> list[tuple[str, Any, Sequence[str] | None]]:
    """(name, sub-step, the columns it reads where known) of a Pipeline, ColumnTransformer
    or FeatureUnion; nothing for a leaf step. A Pipeline's steps all read its columns
    (imputers and scalers keep them)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    if isinstance(step, Pipeline):
        return [(name, sub, columns) for name, sub in step.steps]
    if isinstance(step, ColumnTransformer):
        named: list[tuple[str, Any, Sequence[str] | None]] = []
        for name, sub, cols in getattr(step, "transformers_", step.transformers):
            by_name = isinstance(cols, list | tuple) and all(isinstance(c, str) for c in cols)
            named.append((name, sub, list(cols) if by_name else None))
        return named
    if isinstance(step, FeatureUnion):
        return [(name, sub, columns) for name, sub in step.transformer_list]
    return []


def _steps(
    model: Any, path: str = "", columns: Sequence[str] | None = None
) -> Iterator[tuple[str, Any, Sequence[str] | None]]:
    """Every step with its scikit-learn name (``prep__num__impute``) and its columns."""
    yield path, model, columns
    for name, sub, cols in _children(model, columns):
        yield from _steps(sub, f"{path}__{name}" if path else name, cols)


def encoder_categories(model: Any) -> dict[str, tuple[str, ...]]:
    """Categories a fitted OneHotEncoder learned, by input column, found in a pipeline.

    "" is left out: it is how a missing string enters the model, which the feature's
    nullability allows or refuses.
    """
    from sklearn.preprocessing import OneHotEncoder

    found: dict[str, tuple[str, ...]] = {}
    for _, step, columns in _steps(model):
        if isinstance(step, OneHotEncoder) and columns is not None:
            for column, cats in zip(columns, step.categories_, strict=False):
                named = tuple(str(c) for c in cats if c != MISSING_STRING)
                if named and all(isinstance(c, str) for c in cats):
                    found[column] = named
    return found


def convert_sklearn(model: Any, features: list[Feature]) -> onnx.ModelProto:
    """The pipeline as one ONNX graph with one input per feature, or a ConversionError."""
    from skl2onnx import convert_sklearn as to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types = [
        (f.name, StringTensorType([None, 1]) if f.type == "string" else FloatTensorType([None, 1]))
        for f in features
    ]
    _refuse_on_purpose(model)
    options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
    opset = _register_boosters(model)
    try:
        return to_onnx(model, initial_types=types, options=options, target_opset=opset)
    except Exception as exc:
        raise _refusal(model, exc) from exc


def _refuse_on_purpose(model: Any) -> None:
    """Refuse, before converting, the steps whose conversion is not to be relied on.

    HistGradientBoosting: skl2onnx (1.20) gives each leaf of its trees a Python bool in
    an integer attribute. protobuf 6 takes it with a DeprecationWarning, protobuf 7 rejects
    it, so the same model would package or not depending on the installed protobuf (the
    ``serve`` extra caps it below 7, the base install does not). Under protobuf 6 the graph
    scores as the native model, missing values included; drop this refusal once skl2onnx
    writes integers there (tests/unit/lifecycle/test_which_models_convert.py watches it).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    for path, step, _ in _steps(model):
        if isinstance(step, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
            import skl2onnx

            where = f"step {path!r}" if path else "the model"
            raise ConversionError(
                "skl2onnx",
                f"{where} ({type(step).__name__})",
                f"skl2onnx {skl2onnx.__version__} writes HistGradientBoosting trees with "
                "booleans where ONNX takes integers, which protobuf 7 rejects, so whether it "
                "converts depends on the installed protobuf; it is refused on every install",
                "Use LGBMClassifier (the same histogram boosting; it converts in a pipeline) "
                "or GradientBoostingClassifier, and package again.",
            )


def _register_boosters(model: Any) -> dict[str, int] | None:
    """Teach skl2onnx the LightGBM and XGBoost estimators a pipeline holds (their
    converters live in onnxmltools); the opsets to convert such a pipeline with."""
    modules = {type(step).__module__.split(".")[0] for _, step, _ in _steps(model)}
    if not modules & {"lightgbm", "xgboost"}:
        return None
    from skl2onnx import get_latest_tested_opset_version, update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes as classifier_shapes,
    )
    from skl2onnx.common.shape_calculator import (
        calculate_linear_regressor_output_shapes as regressor_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    if "lightgbm" in modules:
        lightgbm = boosters_module("lightgbm")
        convert = boosters_module(
            "onnxmltools.convert.lightgbm.operator_converters.LightGbm"
        ).convert_lightgbm
        update_registered_converter(
            lightgbm.LGBMClassifier, "LightGbmLGBMClassifier", classifier_shapes, convert,
            options=classifier_options,
        )  # fmt: skip
        update_registered_converter(
            lightgbm.LGBMRegressor, "LightGbmLGBMRegressor", regressor_shapes, convert,
            options={"split": None},
        )  # fmt: skip
    if "xgboost" in modules:
        xgboost = boosters_module("xgboost")
        convert = boosters_module(
            "onnxmltools.convert.xgboost.operator_converters.XGBoost"
        ).convert_xgboost
        update_registered_converter(
            xgboost.XGBClassifier, "XGBoostXGBClassifier", classifier_shapes, convert,
            options=classifier_options,
        )  # fmt: skip
        update_registered_converter(
            xgboost.XGBRegressor, "XGBoostXGBRegressor", regressor_shapes, convert
        )
    # onnxmltools writes the ai.onnx.ml tree operators of version 3 only.
    return {"": get_latest_tested_opset_version(), "ai.onnx.ml": 3}


def convert_booster(flavor: str, booster: Any, width: int) -> onnx.ModelProto:
    """A LightGBM or XGBoost booster as a graph over one [n, width] tensor ``input``."""
    onnxmltools = boosters_module("onnxmltools")
    FloatTensorType = boosters_module("onnxmltools.convert.common.data_types").FloatTensorType

    types = [("input", FloatTensorType([None, width]))]
    try:
        if flavor == "lightgbm":
            return onnxmltools.convert_lightgbm(booster, initial_types=types, zipmap=False)
        # The XGBoost converter only reads positional names (f0, f1, ...); the contract
        # keeps the real ones and feeds columns in that order.
        positional = booster.copy()
        positional.feature_names = None
        return onnxmltools.convert_xgboost(positional, initial_types=types)
    except Exception as exc:
        name = "LightGBM" if flavor == "lightgbm" else "XGBoost"
        raise ConversionError(
            "onnxmltools", f"the {name} booster", _one_line(exc), "Export it to ONNX yourself "
            "(with the options your booster needs) and package the .onnx file.",
        ) from exc  # fmt: skip


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """The exception's first line, short: converters put whole node dumps in theirs."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else type(exc).__name__
    # skl2onnx's "Unable to create node" lists every attribute after this; its cause
    # says what was wrong.
    text = text.split(" with name=")[0]
    if exc.__cause__ is not None:
        text += f" ({_one_line(exc.__cause__, limit).rstrip('.')})"
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _failed_step(exc: BaseException) -> Any:
    """The sklearn object skl2onnx was converting when it raised, from the innermost frame
    that holds one of its operators (``raw_operator`` is the fitted sklearn object)."""
    found = None
    trace = exc.__traceback__
    while trace is not None:
        for value in trace.tb_frame.f_locals.values():
            raw = getattr(value, "raw_operator", None)
            if raw is not None:
                found = raw
        trace = trace.tb_next
    return found


def _refusal(model: Any, exc: BaseException) -> ConversionError:
    step = _failed_step(exc)
    if step is None:
        where = f"the model ({type(model).__name__})"
    else:
        path = next((p for p, s, _ in _steps(model) if s is step), None)
        where = f"step {path!r}" if path else "the model"
        where += f" ({type(step).__name__})"
    return ConversionError("skl2onnx", where, _one_line(exc), _advice(step, exc))


def _advice(step: Any, exc: BaseException) -> str:
    """How to write ``step`` so that it converts, for the refusals we know."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import FunctionTransformer

    if isinstance(step, SimpleImputer) and not isinstance(step.missing_values, str):
        return (
            'A missing string enters the graph as "", not NaN: write it '
            'SimpleImputer(missing_values="", strategy="constant", fill_value="missing") '
            '(or strategy="most_frequent"), train it on frames where a missing string is "" '
            "(scoring.model.features.model_frame gives them), and package again."
        )
    if isinstance(step, FunctionTransformer):
        return (
            "A Python function cannot be translated into ONNX: compute that column before "
            f"the model (in the source table, so both paths read it), use a transformer that "
            f"converts ({WHICH}), {EXPORT}."
        )
    if "shape calculator" in str(exc) or "converter" in type(exc).__name__.lower():
        name = type(step).__name__ if step is not None else "a step of this pipeline"
        return (
            f"skl2onnx has no converter for {name}: use a step that has one ({WHICH}), "
            f"register one (skl2onnx.update_registered_converter), {EXPORT}."
        )
    return f"Replace that step with one that converts ({WHICH}), {EXPORT}."
