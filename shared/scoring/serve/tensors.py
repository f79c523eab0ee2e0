"""The Open Inference Protocol's tensors and KServe v1's instances, read into the contract's rows.

A v2 request carries one tensor per input: the contract's key and each feature, numbers
as ``FP64``/``INT64`` and categories as ``BYTES``, all of one length (shape ``[n]`` or
``[n, 1]``). They become one Arrow batch of the types the batch job reads from its
table, scored by the same :meth:`scoring.model.artifact.Scorer.score`, so a served row
gets the batch job's bits and, when refused, its reason. A JSON ``null`` in a tensor's
data is a missing value, checked like a null cell; so is a NaN in an ``FP64`` tensor,
since a binary tensor (gRPC's contents, REST's binary extension) cannot hold a null. A
request that is not of this shape (a missing input, another datatype, lengths that
differ) is refused whole with
:class:`kserve.errors.InvalidInput` (400) naming what to send.

A v1 request, ``{"instances": [{...}, ...]}``, is read record by record as the stream
reads events (:func:`scoring.model.decode.decode_records`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest

from scoring.errors import did_you_mean
from scoring.model.artifact import ScoredBatch
from scoring.model.contract import Contract, FeatureType

__all__ = [
    "NO_LABEL",
    "Rows",
    "Served",
    "TooLarge",
    "input_types",
    "output_types",
    "outputs",
    "read_instances",
    "read_v2",
]

# The v2 datatype of each feature type, and the Arrow type a column is read into.
DATATYPES: dict[FeatureType, str] = {"double": "FP64", "int64": "INT64", "string": "BYTES"}
_ARROW: dict[str, pa.DataType] = {"FP64": pa.float64(), "INT64": pa.int64(), "BYTES": pa.string()}
_KEY_DATATYPES = ("BYTES", "INT64")
_V2_FIELDS = ("name", "datatype", "shape", "data")
_V2_SHAPE = (
    'a v2 request is {"inputs": [{"name": ..., "datatype": ..., "shape": [n], "data": [...]}, '
    "...]}, one tensor per input of GET /v2/models/NAME"
)

# A refused row's label in an INT64 tensor, which cannot hold a null.
NO_LABEL = -1


class TooLarge(InvalidInput):
    """A request over a size limit: answered 413 with the limit."""


def input_types(contract: Contract) -> list[dict[str, Any]]:
    """The model metadata's inputs: the key (BYTES or INT64), then every feature."""
    key = {"name": contract.key, "datatype": "BYTES", "shape": [-1]}
    return [key] + [
        {"name": f.name, "datatype": DATATYPES[f.type], "shape": [-1]} for f in contract.features
    ]


def output_types(contract: Contract) -> list[dict[str, Any]]:
    """The model metadata's outputs, one value per input row."""
    names = [("score", "FP64")]
    if contract.output.task == "binary_classification":
        names.append(("label", "INT64"))
    names += [("reason", "BYTES"), ("reason_kind", "BYTES")]
    return [{"name": n, "datatype": d, "shape": [-1]} for n, d in names]


@dataclass(frozen=True)
class Rows:
    """A request's rows: the features as Arrow columns and each row's key."""

    batch: pa.RecordBatch
    keys: list[str | int]


def parse_v2(body: bytes, json_length: str | None, name: str) -> InferRequest:
    """A REST v2 request body as an InferRequest; raises InvalidInput for a malformed one.

    JSON is read straight into tensors (KServe's route validates it with pydantic and
    encodes the answer with FastAPI's encoder: most of a small request's time); a body in
    the binary extension (``json_length`` set) is read by KServe.
    """
    if json_length is not None:
        try:
            return InferRequest.from_bytes(body, int(json_length), name)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"not a binary v2 request: {exc}") from exc
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # Python's json writes a NaN as the bare token NaN, which orjson refuses
            document = json.loads(body)
        except ValueError:
            raise InvalidInput(f"the body is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise InvalidInput(_V2_SHAPE)
    tensors = []
    for tensor in document["inputs"]:
        if not isinstance(tensor, dict) or not all(k in tensor for k in _V2_FIELDS):
            raise InvalidInput(_V2_SHAPE)
        shape, datatype = tensor["shape"], tensor["datatype"]
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            raise InvalidInput(f"input {tensor['name']!r}: shape must be a list of integers")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input {tensor['name']!r}: datatype must be a string")
        tensors.append(InferInput(str(tensor["name"]), shape, datatype, tensor["data"]))
    request_id = document.get("id")
    return InferRequest(name, tensors, request_id=str(request_id) if request_id else None)


def read_v2(request: InferRequest, contract: Contract, max_rows: int) -> Rows:
    """The rows of a v2 infer request; raises InvalidInput (400) for a malformed one."""
    given = {tensor.name: tensor for tensor in request.inputs}
    expected = input_types(contract)
    wanted = [spec["name"] for spec in expected]
    unknown = sorted(set(given) - set(wanted))
    if unknown:
        raise InvalidInput(
            f"unknown input {unknown[0]!r}{did_you_mean(unknown[0], wanted)}; "
            f"this model's inputs are {', '.join(wanted)}"
        )
    missing = [name for name in wanted if name not in given]
    if missing:
        raise InvalidInput(
            f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)}: send one "
            f"tensor per input ({_described(expected)})"
        )
    columns: dict[str, list[Any] | np.ndarray] = {}
    for spec in expected:
        tensor = given[spec["name"]]
        allowed = _KEY_DATATYPES if spec["name"] == contract.key else (spec["datatype"],)
        if tensor.datatype not in allowed:
            raise InvalidInput(
                f"input {tensor.name!r} is {tensor.datatype}; send it as "
                f"{' or '.join(allowed)} ({_described(expected)})"
            )
        columns[tensor.name] = _values(tensor)
    lengths = {name: len(values) for name, values in columns.items()}
    n = lengths[contract.key]
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} {length}" for name, length in lengths.items())
        raise InvalidInput(f"every input must hold one value per row; lengths differ: {shown}")
    _check_rows(n, max_rows)
    arrays = []
    for feature in contract.features:
        datatype = DATATYPES[feature.type]
        values = columns[feature.name]
        if datatype == "BYTES":
            values = [_text(v, feature.name) for v in values]
        elif isinstance(values, list):
            _check_numbers(values, feature.name, datatype)
        # A tensor has no null but JSON's: in FP64 a NaN is the missing value (Arrow's
        # from_pandas reads it so, at five times the cost: only when there is one).
        nan = datatype == "FP64" and _has_nan(values)
        try:
            arrays.append(pa.array(values, _ARROW[datatype], from_pandas=nan))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
            raise InvalidInput(f"input {feature.name!r} is not all {datatype}: {exc}") from exc
        except UnicodeEncodeError as exc:  # JSON's "\ud800": a str that UTF-8 cannot hold
            raise InvalidInput(f"input {feature.name!r} is not all {datatype}: {exc}") from exc
    keys = [_key(v, contract.key) for v in columns[contract.key]]
    return Rows(pa.RecordBatch.from_arrays(arrays, names=contract.feature_names), keys)


def read_instances(payload: Mapping[str, Any], max_rows: int) -> list[Any]:
    """The records of a KServe v1 request; raises InvalidInput for a malformed one."""
    instances = payload.get("instances")
    if not isinstance(instances, list):
        raise InvalidInput(
            'send {"instances": [{...}, ...]} (KServe v1: a list of records holding the key '
            'and the features) or a v2 request with "inputs"'
        )
    _check_rows(len(instances), max_rows)
    return instances


@dataclass(frozen=True)
class Served:
    """One request's outcome per row, as numpy/lists, ready for either protocol."""

    keys: list[str | int | None]
    scores: np.ndarray  # float64, NaN where refused
    labels: np.ndarray | None  # int64, NO_LABEL where refused; None for a regression
    reasons: list[str | None]
    kinds: list[str | None]

    @classmethod
    def of(cls, keys: list[str | int], scored: ScoredBatch, contract: Contract) -> Served:
        scores = scored.score.to_numpy(zero_copy_only=False)
        labels = None
        if contract.output.task == "binary_classification":
            labels = scored.label.fill_null(NO_LABEL).to_numpy().astype(np.int64)
        return cls(list(keys), scores, labels, scored.reason.to_pylist(), list(scored.kinds))


def outputs(served: Served) -> list[InferOutput]:
    """The v2 response's tensors: ``score``, ``label``, ``reason``, ``reason_kind``.

    A refused row's score is NaN (``null`` in JSON), its label :data:`NO_LABEL`, its
    reason and kind the text the batch job writes; a scored row's reason is ``""``.
    """
    n = len(served.keys)
    result = [InferOutput("score", [n], "FP64", served.scores)]
    if served.labels is not None:
        result.append(InferOutput("label", [n], "INT64", served.labels))
    for name, texts in (("reason", served.reasons), ("reason_kind", served.kinds)):
        result.append(InferOutput(name, [n], "BYTES", np.array([t or "" for t in texts], object)))
    return result


def _values(tensor: Any) -> list[Any] | np.ndarray:
    """A tensor's values, flat; JSON data stays a list so that a null stays missing."""
    if tensor._raw_data is not None:  # gRPC raw_input_contents, REST binary extension
        try:
            return tensor.as_numpy().reshape(-1)
        except Exception as exc:  # a raw buffer whose size does not match its shape
            raise InvalidInput(f"input {tensor.name!r}: {exc}") from exc
    data = tensor.data
    if isinstance(data, np.ndarray):
        return data.reshape(-1)
    if not isinstance(data, list):
        raise InvalidInput(f"input {tensor.name!r}: data must be a list")
    if data and isinstance(data[0], list):  # shape [n, 1] written nested
        data = [v for row in data for v in (row if isinstance(row, list) else [row])]
    expected = math.prod(tensor.shape) if tensor.shape else len(data)
    if expected != len(data):
        raise InvalidInput(
            f"input {tensor.name!r} has {len(data)} values but its shape {tensor.shape} "
            f"says {expected}"
        )
    return data


def _check_numbers(values: list[Any], name: str, datatype: str) -> None:
    """What Arrow would let through: ``true`` read as 1.0, 1.5 truncated to an INT64's 1.

    The stream refuses both (a bool is not a number; 1.5 breaks an int64 feature).
    """
    kinds = set(map(type, values))  # one pass in C: most tensors hold no bool, no float
    if bool not in kinds and (datatype != "INT64" or float not in kinds):
        return
    for value in values:
        if isinstance(value, bool) or (
            datatype == "INT64" and isinstance(value, float) and not value.is_integer()
        ):
            raise InvalidInput(f"input {name!r} is not all {datatype}: it holds {value!r}")


def _has_nan(values: list[Any] | np.ndarray) -> bool:
    if isinstance(values, np.ndarray):
        return values.dtype.kind == "f" and bool(np.isnan(values).any())
    return any(v != v for v in values)  # NaN is the one value unequal to itself


def _text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | np.bytes_):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"input {name!r} holds bytes that are not UTF-8") from exc
    raise InvalidInput(f"input {name!r} is BYTES but holds {value!r}")


def _key(value: Any, name: str) -> str | int:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _text(value, name)
    if not text:
        raise InvalidInput(f"every row needs its key {name!r}; one is empty or null")
    return text


def _check_rows(n: int, max_rows: int) -> None:
    if n == 0:
        raise InvalidInput("the request holds no rows")
    if n > max_rows:
        raise TooLarge(f"the request holds {n} rows; the limit is {max_rows} (--max-rows)")


def _described(inputs: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{spec['name']} {spec['datatype']}" for spec in inputs)
