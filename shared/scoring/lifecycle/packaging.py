"""``scoring model package``: a trained model in, a verified and registered artifact out.

Converters have real bugs, so a converted graph is only registered after it has been run
through the same :class:`~scoring.model.artifact.Scorer` the jobs use and compared with the
native model on sample rows.

Nullability fails closed: a feature is nullable only when the sample shows nulls in it,
the graph was built for its missing values (an imputer reads it, or an encoder learned the
missing string "" as a category), or the user's ``--contract`` says so.
A model that never saw a missing value gets its nulls refused on both paths instead of
scored. :attr:`Packaged.inferred` says, feature by feature, what was decided and why.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq

from scoring.errors import ContractError, ConversionMismatchError, UnsupportedModelError
from scoring.lifecycle import hints
from scoring.lifecycle.convert import (
    convert_booster,
    convert_sklearn,
    encoder_categories,
    load_native,
)
from scoring.model.artifact import Scorer, read_artifact_dir, sha256_bytes
from scoring.model.contract import CONTRACT_FILE, Contract, Feature, FeatureType, Output
from scoring.model.features import model_frame

__all__ = ["DEFAULT_TOLERANCE", "Packaged", "build", "package", "prepare", "write_artifact"]

log = logging.getLogger(__name__)

# Graphs compute in float32; sklearn in float64. 1e-4 on a probability is far below any
# decision threshold's resolution and far above float32 rounding noise.
DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Packaged:
    """A converted, verified graph with its contract, ready to register."""

    onnx_model: onnx.ModelProto
    contract: Contract
    max_diff: float | None
    sample_rows: int
    flavor: str
    # What was inferred about the inputs and why, one line per feature, with how to change it.
    inferred: list[str] = field(default_factory=list)


def _read_sample(sample: Path | None, limit: int = 5000) -> pa.Table | None:
    if sample is None:
        return None
    table = pq.read_table(sample)
    return table.slice(0, limit) if table.num_rows > limit else table


def _feature_type(kind: pa.DataType) -> FeatureType:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
    ):
        return "double"
    raise UnsupportedModelError(f"sample column type {kind} is not supported as a feature")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _score_output(graph: onnx.ModelProto, classifier: bool) -> Output:
    names = [o.name for o in graph.graph.output]
    probability = [n for n in names if "prob" in n.lower()]
    if classifier or probability:
        if not probability:
            raise ContractError(f"no probability output among the graph outputs {names}")
        return Output(task="binary_classification", score_output=probability[0], score_index=1)
    return Output(task="regression", score_output=names[-1], score_index=None)


def _booster_is_classifier(flavor: str, booster: Any) -> bool:
    if flavor == "lightgbm":
        return str(booster.params.get("objective", "")).startswith(("binary", "cross"))
    config = json.loads(booster.save_config())
    return str(config["learner"]["objective"]["name"]).startswith("binary")


def _onnx_features(
    graph: onnx.ModelProto, names: Sequence[str] | None, sample: pa.Table | None, key: str | None
) -> tuple[list[Feature], str | None]:
    """Features of a raw ONNX graph: per-column named inputs, or one [n, F] tensor."""
    to_type: dict[int, FeatureType] = {
        onnx.TensorProto.STRING: "string",
        onnx.TensorProto.INT64: "int64",
        onnx.TensorProto.INT32: "int64",
    }
    inputs = list(graph.graph.input)
    initializers = {i.name for i in graph.graph.initializer}
    inputs = [i for i in inputs if i.name not in initializers]
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    if len(inputs) == 1 and not (len(dims) == 2 and dims[1] == 1):
        columns = (
            list(names)
            if names
            else ([c for c in sample.column_names if c != key] if sample is not None else None)
        )
        if not columns:
            raise ContractError(
                f"The graph takes one tensor {inputs[0].name!r}; name its columns with "
                "--features a,b,c or --sample FILE.parquet."
            )
        if len(dims) == 2 and dims[1] and dims[1] != len(columns):
            raise ContractError(f"The graph expects {dims[1]} columns, {len(columns)} named.")
        return [Feature(name=c, type="double") for c in columns], inputs[0].name
    features = [
        Feature(name=i.name, type=to_type.get(i.type.tensor_type.elem_type, "double"))
        for i in inputs
    ]
    return features, None


def _takes_missing(node: onnx.NodeProto) -> str | None:
    """Why ``node`` shows that the graph was built for missing values, or None.

    A missing number enters the graph as NaN, which an ``Imputer`` replaces. A missing
    string enters as "" (``scoring.model.features``): skl2onnx writes a string
    SimpleImputer as a ``LabelEncoder`` that tests for "" alone, and an encoder that
    learned "" in training lists it among its categories.
    """
    if node.op_type == "Imputer":
        return "the graph imputes it"
    if node.op_type not in {"LabelEncoder", "OneHotEncoder", "CategoryMapper"}:
        return None
    string_keys = {"keys_strings", "cats_strings"}
    keys = [k for a in node.attribute if a.name in string_keys for k in a.strings]
    if node.op_type == "LabelEncoder" and keys == [b""]:
        return 'the graph imputes it: its SimpleImputer replaces "", how a missing string enters'
    if b"" in keys:
        return 'the graph encodes it: "", how a missing string enters, is a category it learned'
    return None


def _imputed_inputs(graph: onnx.ModelProto) -> dict[str, str]:
    """Graph inputs whose values reach a node built for missing values, and why."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    imputed = {}
    for graph_input in graph.graph.input:
        seen, todo = set(), [graph_input.name]
        while todo and graph_input.name not in imputed:
            for node in consumers.get(todo.pop(0), []):
                why = _takes_missing(node)
                if why is not None:
                    imputed[graph_input.name] = why
                    break
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        todo.append(out)
    return imputed


def _nullability(
    features: list[Feature],
    graph: onnx.ModelProto,
    tensor_input: str | None,
    table: pa.Table | None,
    spec: dict[str, Any],
) -> tuple[list[Feature], list[str]]:
    """Decide each feature's nullability (fail closed) and say why, one line each."""
    imputed = _imputed_inputs(graph)
    given = {f.get("name"): f["nullable"] for f in spec.get("features", []) if "nullable" in f}
    decided, notes = [], []
    for feature in features:
        graph_input = tensor_input or feature.name
        nulls = (
            table.column(feature.name).null_count
            if table is not None and feature.name in table.column_names
            else 0
        )
        if feature.name in given:
            nullable, why = bool(given[feature.name]), "as --contract says"
        elif nulls:
            nullable, why = True, f"the sample has {nulls} nulls in it"
        elif graph_input in imputed:
            nullable, why = True, imputed[graph_input]
        else:
            nullable = False
            why = (
                "no nulls in the sample and no imputer in the graph"
                if table is not None
                else "no sample and no imputer in the graph"
            )
        decided.append(feature.model_copy(update={"nullable": nullable}))
        change = (
            ""
            if feature.name in given
            else f' (to change it: {{"name": "{feature.name}", '
            f'"nullable": {str(not nullable).lower()}}} in --contract)'
        )
        state = "nullable" if nullable else "not nullable"
        notes.append(f"{feature.name}: {feature.type}, {state}: {why}{change}")
    return decided, notes


def _features(
    flavor: str,
    native: Any,
    table: pa.Table | None,
    feature_names: Sequence[str] | None,
    key: str,
) -> tuple[list[Feature], str | None]:
    """The model's input features and, for a one-tensor model, that tensor's name."""
    if flavor == "onnx":
        return _onnx_features(native, feature_names, table, key)
    if flavor == "sklearn":
        if table is None:
            raise ContractError(
                "Packaging a scikit-learn model needs --sample FILE.parquet: "
                "its columns give the input types and the rows verify the "
                "conversion."
            )
        wanted = list(getattr(native, "feature_names_in_", [])) or [
            c for c in table.column_names if c != key
        ]
        missing = [c for c in wanted if c not in table.column_names]
        if missing:
            raise ContractError(f"The sample lacks the model's input columns {missing}.")
        categories = encoder_categories(native)
        features = [
            Feature(
                name=c, type=_feature_type(table.schema.field(c).type), categories=categories.get(c)
            )
            for c in wanted
        ]
        return features, None
    names = list(
        feature_names
        or (native.feature_name() if flavor == "lightgbm" else native.feature_names or [])
    )
    if not names:
        raise ContractError("Name the booster's features with --features or --sample.")
    return [Feature(name=n, type="double") for n in names], "input"


def build(
    path: Path,
    sample: Path | None = None,
    feature_names: Sequence[str] | None = None,
    key: str | None = None,
    spec: dict[str, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    origin: str = hints.FILE,
) -> Packaged:
    """Convert ``path`` to ONNX, write its contract, and check it against the native model.

    ``spec`` holds the --contract hints (:mod:`scoring.lifecycle.hints`); ``origin`` is how
    their errors name them.
    """
    spec = {} if spec is None else spec
    hints.check(spec, origin)
    key = key or spec.get("key")
    if not key:
        raise ContractError("Name the key column with --key (or 'key' in --contract).")
    flavor, native = load_native(path)
    table = _read_sample(sample)
    features, tensor_input = _features(flavor, native, table, feature_names, key)
    hints.check_against(spec, features, tensor_input, origin)
    if flavor == "onnx":
        graph, classifier = native, False
    elif flavor == "sklearn":
        graph, classifier = convert_sklearn(native, features), hasattr(native, "predict_proba")
    else:
        graph = convert_booster(flavor, native, len(features))
        classifier = _booster_is_classifier(flavor, native)
    features, inferred = _nullability(features, graph, tensor_input, table, spec)
    draft: dict[str, Any] = {
        "key": key,
        "features": [f.model_dump(exclude_none=True) for f in features],
        "input_mode": "tensor" if tensor_input else "columns",
        "tensor_input": tensor_input,
        "output": _score_output(graph, classifier).model_dump(),
        "onnx_sha256": sha256_bytes(graph.SerializeToString()),
        "code_commit": _git_commit(),
    }
    contract = hints.apply(draft, spec, origin)
    max_diff = _verify(flavor, native, graph, contract, table, tolerance)
    rows = 0 if table is None else table.num_rows
    return Packaged(graph, contract, max_diff, rows, flavor, inferred)


def _native_scores(flavor: str, native: Any, table: pa.Table, contract: Contract) -> np.ndarray:
    frame = model_frame(table, contract.features)
    if flavor == "sklearn":
        if contract.output.task == "binary_classification":
            return np.asarray(native.predict_proba(frame))[:, 1]
        return np.asarray(native.predict(frame), dtype=np.float64).reshape(-1)
    matrix = frame.to_numpy(dtype=np.float64)
    if flavor == "lightgbm":
        return np.asarray(native.predict(matrix), dtype=np.float64).reshape(-1)
    import xgboost

    dmatrix = xgboost.DMatrix(matrix, feature_names=contract.feature_names)
    return np.asarray(native.predict(dmatrix), dtype=np.float64).reshape(-1)


def _verify(
    flavor: str,
    native: Any,
    graph: onnx.ModelProto,
    contract: Contract,
    table: pa.Table | None,
    tolerance: float,
) -> float | None:
    """Score the sample through the real scoring path and compare with the native model."""
    scorer = Scorer(graph.SerializeToString(), contract)
    if table is None:
        return None
    converted = scorer.predict(table)
    if flavor == "onnx":
        return None
    expected = _native_scores(flavor, native, table, contract)
    diff = np.abs(converted - expected)
    diff[np.isnan(diff)] = np.inf
    worst = int(np.argmax(diff)) if diff.size else 0
    max_diff = float(diff[worst]) if diff.size else 0.0
    log.info(
        "converted graph vs native %s: max |diff| %.3g on %d rows", flavor, max_diff, table.num_rows
    )
    if max_diff > tolerance:
        raise ConversionMismatchError(max_diff, tolerance, table.num_rows, worst)
    return max_diff


def write_artifact(packaged: Packaged, directory: Path) -> Contract:
    """Write the MLflow model folder (ONNX flavour) plus ``scoring.json`` into ``directory``."""
    import mlflow.onnx

    # The graph needs onnx and onnxruntime only; MLflow would otherwise find that out by
    # loading the model in a subprocess, seconds per package.
    mlflow.onnx.save_model(
        packaged.onnx_model,
        str(directory),
        save_as_external_data=False,
        pip_requirements=mlflow.onnx.get_default_pip_requirements(),
    )
    contract = packaged.contract.model_copy(
        update={
            "onnx_sha256": sha256_bytes((directory / "model.onnx").read_bytes()),
            "onnx_file": "model.onnx",
        }
    )
    (directory / CONTRACT_FILE).write_text(contract.to_json())
    read_artifact_dir(directory, str(directory))  # what we register must load
    return contract


def prepare(
    path: Path,
    sample: Path | None = None,
    feature_names: Sequence[str] | None = None,
    key: str | None = None,
    spec_file: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    report: Callable[[str], None] | None = None,
) -> Packaged:
    """Read the hints file, build and verify; registers nothing.

    ``report`` receives one line per feature saying what was inferred about it.
    """
    spec = hints.read(spec_file) if spec_file else None
    packaged = build(path, sample, feature_names, key, spec, tolerance, hints.origin_of(spec_file))
    for line in packaged.inferred:
        log.info("inferred %s", line)
        if report is not None:
            report(line)
    return packaged


def package(
    path: Path,
    name: str,
    sample: Path | None = None,
    feature_names: Sequence[str] | None = None,
    key: str | None = None,
    spec_file: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    report: Callable[[str], None] | None = None,
) -> Any:
    """Build, verify, write and register; returns the registry's version record.

    ``report`` receives one line per feature saying what was inferred about it.
    """
    from scoring.lifecycle import registry

    packaged = prepare(path, sample, feature_names, key, spec_file, tolerance, report)
    with tempfile.TemporaryDirectory(prefix="scoring-package-") as tmp:
        directory = Path(tmp) / "model"
        contract = write_artifact(packaged, directory)
        params = {
            "flavor": packaged.flavor,
            "source_file": str(path),
            "sample_rows": packaged.sample_rows,
            "tolerance": tolerance,
        }
        metrics = {} if packaged.max_diff is None else {"conversion_max_diff": packaged.max_diff}
        return registry.register(directory, name, contract, params, metrics)
