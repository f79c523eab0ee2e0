"""The ``--contract`` hints file: what a trainer knows that a converter cannot infer.

A hints file is the scoring contract without what ``package`` derives from the graph:
the key, per feature its nullability and its range (``min``/``max``) or ``categories``,
the output's threshold, the training-data reference and metrics. A whole written
contract (an artifact's ``scoring.json``) is accepted too: the keys that describe one
graph (its checksum, file name, creation time) are recomputed, and the ones the graph
decides (``input_mode``, ``tensor_input``, each feature's ``type``) must agree with it.

Every problem is found before the model is converted and reported at once, naming the
file and saying what is valid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeGuard, get_args

from pydantic import ValidationError

from scoring.errors import ContractError, did_you_mean
from scoring.model.contract import Contract, Feature, FeatureType

__all__ = ["FILE", "apply", "check", "check_against", "from_contract", "read"]

FILE = "The --contract file"
TOP_KEYS = ("key", "features", "output", "training_data", "metrics", "code_commit")
# A scoring.json's keys that package computes for the graph it writes: ignored.
RECOMPUTED = ("schema_version", "onnx_file", "onnx_sha256", "created_at")
# ... and the ones the graph decides: accepted when they agree with it.
FROM_GRAPH = ("input_mode", "tensor_input")
FEATURE_KEYS = ("name", "type", "nullable", "min", "max", "categories")
OUTPUT_KEYS = ("task", "score_output", "score_index", "threshold")
TASKS = ("binary_classification", "regression")
TRAINING_KEYS = ("table", "version")
GUIDE = (
    "See README: The --contract hints file; `scoring model package ... --print-contract` "
    "prints one for your model to start from."
)


def origin_of(path: Path | None) -> str:
    return f"{FILE} {path}" if path is not None else FILE


def read(path: Path) -> Any:
    """The JSON in ``path``; :func:`check` judges what it says."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(
            f"{origin_of(path)} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}. {GUIDE}"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ContractError(f"{origin_of(path)} cannot be read: {exc}.") from exc
    return data


def _raise(problems: list[str], origin: str) -> None:
    if problems:
        count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ContractError(f"{origin} has {count}:\n{lines}\n{GUIDE}")


def check(spec: Any, origin: str = FILE) -> None:
    """Refuse hints with unknown keys or values of the wrong kind, listing every problem."""
    _raise(list(_problems(spec)), origin)


def check_against(
    spec: dict[str, Any],
    features: Sequence[Feature],
    tensor_input: str | None,
    origin: str = FILE,
) -> None:
    """Refuse hints that do not fit the model: features it does not take, another type,
    a range on a string or categories on a number, another input layout."""
    _raise(list(_misfits(spec, features, tensor_input)), origin)


def _unknown(
    keys: Sequence[str], valid: Sequence[str], where: str, accepted: Sequence[str] = ()
) -> Iterator[str]:
    for key in keys:
        if key not in valid and key not in accepted:
            hint = did_you_mean(key, valid)
            yield f"{where}unknown key {key!r}{hint}; the valid keys are {', '.join(valid)}"


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _problems(spec: Any) -> Iterator[str]:
    if not isinstance(spec, dict):
        yield f"the file holds {type(spec).__name__}, not a JSON object {{...}}"
        return
    yield from _unknown(list(spec), TOP_KEYS, "", accepted=RECOMPUTED + FROM_GRAPH)
    if "key" in spec and not (isinstance(spec["key"], str) and spec["key"]):
        yield f"'key' must be the key column's name, not {spec['key']!r}"
    if spec.get("code_commit") is not None and not isinstance(spec["code_commit"], str):
        yield "'code_commit' must be a string"
    if "schema_version" in spec and spec["schema_version"] != 1:
        version = spec["schema_version"]
        yield f"'schema_version' must be 1 (the one this version reads), not {version!r}"
    yield from _output_problems(spec.get("output", {}))
    yield from _lineage_problems(spec)
    features = spec.get("features", [])
    if not isinstance(features, list):
        yield "'features' must be a list of objects, one per feature"
        return
    seen: set[str] = set()
    for index, feature in enumerate(features):
        yield from _feature_problems(index, feature, seen)


def _output_problems(output: Any) -> Iterator[str]:
    if not isinstance(output, dict):
        yield "'output' must be an object like {\"threshold\": 0.5}"
        return
    yield from _unknown(list(output), OUTPUT_KEYS, "output: ")
    threshold = output.get("threshold", 0.5)
    if not (_is_number(threshold) and 0 <= threshold <= 1):
        yield f"output: 'threshold' must be a number from 0 to 1, not {threshold!r}"
    if "task" in output and output["task"] not in TASKS:
        yield f"output: 'task' is one of {', '.join(TASKS)}, not {output['task']!r}"
    if "score_output" in output and not isinstance(output["score_output"], str):
        yield "output: 'score_output' must be the name of a graph output"
    index = output.get("score_index")
    if index is not None and not (isinstance(index, int) and not isinstance(index, bool)):
        yield f"output: 'score_index' must be a column number or null, not {index!r}"


def _lineage_problems(spec: dict[str, Any]) -> Iterator[str]:
    data = spec.get("training_data")
    if data is not None:
        if not isinstance(data, dict) or not isinstance(data.get("table"), str):
            yield '\'training_data\' must be an object like {"table": "...", "version": 3}'
        else:
            yield from _unknown(list(data), TRAINING_KEYS, "training_data: ")
            version = data.get("version")
            if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
                yield f"training_data: 'version' must be a Delta table version, not {version!r}"
    metrics = spec.get("metrics", {})
    if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
        yield "'metrics' must be an object of numbers, like {\"auc\": 0.91}"


def _feature_problems(index: int, feature: Any, seen: set[str]) -> Iterator[str]:
    if not isinstance(feature, dict) or not isinstance(feature.get("name"), str):
        yield f'features[{index}] must be an object with a \'name\', like {{"name": "amount"}}'
        return
    name = feature["name"]
    where = f"feature {name!r}: "
    if name in seen:
        yield f"{where}listed twice"
    seen.add(name)
    yield from _unknown(list(feature), FEATURE_KEYS, where)
    types = get_args(FeatureType)
    if "type" in feature and feature["type"] not in types:
        yield f"{where}'type' is one of {', '.join(types)}, not {feature['type']!r}"
    if "nullable" in feature and not isinstance(feature["nullable"], bool):
        yield f"{where}'nullable' must be true or false, not {feature['nullable']!r}"
    for bound in ("min", "max"):
        if feature.get(bound) is not None and not _is_number(feature[bound]):
            yield f"{where}{bound!r} must be a finite number, not {feature[bound]!r}"
    low, high = feature.get("min"), feature.get("max")
    if _is_number(low) and _is_number(high) and low > high:
        yield f"{where}'min' {low} is above 'max' {high}"
    categories = feature.get("categories")
    if categories is not None and not (
        isinstance(categories, list | tuple)
        and categories
        and all(isinstance(c, str) for c in categories)
        and len(set(categories)) == len(categories)
    ):
        yield f"{where}'categories' must be a non-empty list of distinct strings"


def _misfits(
    spec: dict[str, Any], features: Sequence[Feature], tensor_input: str | None
) -> Iterator[str]:
    takes = {f.name: f for f in features}
    for given in spec.get("features", []):
        name = given["name"]
        model = takes.get(name)
        if model is None:
            hint = did_you_mean(name, takes)
            yield (
                f"feature {name!r}{hint}: the model does not take it; it takes "
                f"{', '.join(sorted(takes))}"
            )
            continue
        where = f"feature {name!r}: "
        if "type" in given and given["type"] != model.type:
            yield f"{where}'type' {given['type']!r}, but the model takes it as {model.type!r}"
        ranged = given.get("min") is not None or given.get("max") is not None
        if model.type == "string" and ranged:
            yield f"{where}'min'/'max' apply to numbers; it is a string: give 'categories'"
        if model.type != "string" and given.get("categories") is not None:
            yield f"{where}'categories' apply to strings; it is a {model.type}: give 'min'/'max'"
    layout = "tensor" if tensor_input else "columns"
    if spec.get("input_mode", layout) != layout:
        yield (
            f"'input_mode' {spec['input_mode']!r}, but the graph takes {layout!r} "
            "(another model's contract?); drop the key, package derives it"
        )
    if spec.get("tensor_input", tensor_input) != tensor_input:
        yield (
            f"'tensor_input' {spec['tensor_input']!r}, but the graph's is {tensor_input!r}; "
            "drop the key, package derives it"
        )


def apply(contract: dict[str, Any], spec: dict[str, Any], origin: str = FILE) -> Contract:
    """The drafted contract with the (checked) hints laid over it."""
    derived = set(RECOMPUTED) | set(FROM_GRAPH) | {"features", "output"}
    merged = {**contract, **{k: v for k, v in spec.items() if k not in derived}}
    by_name = {f["name"]: dict(f) for f in contract["features"]}
    for given in spec.get("features", []):
        by_name[given["name"]].update(given)
    merged["features"] = list(by_name.values())
    merged["output"] = {**contract["output"], **spec.get("output", {})}
    try:
        return Contract.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(map(str, e["loc"]))
            + ": " * bool(e["loc"])
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ContractError(
            f"The model's contract is invalid: {problems}. Check --key and "
            f"{origin[0].lower()}{origin[1:]}."
        ) from exc


def from_contract(contract: Contract) -> dict[str, Any]:
    """A hints file that gives ``contract`` again: what package printed, to edit."""
    hints: dict[str, Any] = {
        "key": contract.key,
        "features": [f.model_dump(mode="json", exclude_none=True) for f in contract.features],
        "output": contract.output.model_dump(mode="json"),
    }
    if contract.training_data is not None:
        hints["training_data"] = contract.training_data.model_dump(mode="json")
    if contract.metrics:
        hints["metrics"] = contract.metrics
    return hints
