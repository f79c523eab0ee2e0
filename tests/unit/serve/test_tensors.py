"""Reading v2 tensors into the contract's rows, and rows' outcomes into v2 tensors; no server."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kserve import InferInput, InferRequest
from kserve.errors import InvalidInput
from scoring.model.artifact import ScoredBatch
from scoring.model.contract import Contract, Feature, Output
from scoring.serve.tensors import (
    NO_LABEL,
    Rows,
    Served,
    TooLarge,
    output_types,
    outputs,
    read_v2,
)

CONTRACT = Contract(
    key="id",
    features=(
        Feature(name="amount", type="double", nullable=True, min=0),
        Feature(name="age", type="int64", nullable=True),
        Feature(name="country", type="string", nullable=True, categories=("US", "GB")),
    ),
    output=Output(score_output="probabilities"),
    onnx_sha256="0" * 64,
)
REGRESSION = CONTRACT.model_copy(
    update={"output": Output(task="regression", score_output="variable", score_index=None)}
)
MAX_ROWS = 5
GOOD: dict[str, tuple[str, list[Any]]] = {
    "id": ("BYTES", ["t-1", "t-2", "t-3"]),
    "amount": ("FP64", [1.5, None, 3.0]),
    "age": ("INT64", [40, None, 7]),
    "country": ("BYTES", ["US", None, "GB"]),
}


def tensor(name: str, datatype: str, data: Any, shape: list[int] | None = None) -> InferInput:
    """A tensor as KServe's REST endpoint makes it from JSON ``data``."""
    return InferInput(name, [len(data)] if shape is None else shape, datatype, data)


def binary(name: str, datatype: str, array: np.ndarray) -> InferInput:
    """A tensor as gRPC's raw contents or REST's binary extension carry it."""
    made = InferInput(name, list(array.shape), datatype)
    made.set_data_from_numpy(array, binary_data=True)
    assert made._raw_data is not None
    return made


def request(*replaced: InferInput, drop: tuple[str, ...] = ()) -> InferRequest:
    """GOOD's three rows as JSON tensors, with some tensors replaced or dropped."""
    given_ = {t.name: t for t in replaced}
    inputs = [
        given_.pop(name, None) or tensor(name, datatype, data)
        for name, (datatype, data) in GOOD.items()
        if name not in drop
    ]
    return InferRequest("model", [*inputs, *given_.values()])


def read(*replaced: InferInput, drop: tuple[str, ...] = ()) -> Rows:
    return read_v2(request(*replaced, drop=drop), CONTRACT, MAX_ROWS)


def refused(*replaced: InferInput, drop: tuple[str, ...] = ()) -> str:
    """The message of the InvalidInput a request is refused with."""
    with pytest.raises(InvalidInput) as caught:
        read(*replaced, drop=drop)
    return str(caught.value)


def column(rows: Rows, name: str) -> list[Any]:
    return rows.batch.column(name).to_pylist()


def test_json_tensors_become_the_arrow_rows_the_batch_job_reads() -> None:
    rows = read()
    assert rows.batch.schema == pa.schema(
        [("amount", pa.float64()), ("age", pa.int64()), ("country", pa.string())]
    )
    assert rows.batch.to_pylist() == [
        {"amount": 1.5, "age": 40, "country": "US"},
        {"amount": None, "age": None, "country": None},  # a JSON null is a missing value
        {"amount": 3.0, "age": 7, "country": "GB"},
    ]
    assert rows.keys == ["t-1", "t-2", "t-3"]


@pytest.mark.parametrize(
    "amount",
    [
        tensor("amount", "FP64", [1.5, math.nan, 3.0]),
        tensor("amount", "FP64", np.array([1.5, np.nan, 3.0])),
        binary("amount", "FP64", np.array([1.5, np.nan, 3.0])),
    ],
    ids=["json", "numpy", "binary"],
)
def test_a_nan_in_an_fp64_tensor_is_a_missing_value(amount: InferInput) -> None:
    values = column(read(amount), "amount")
    assert values == [1.5, None, 3.0]  # None, not NaN: checked as a null cell is


@pytest.mark.parametrize(
    "key",
    [tensor("id", "INT64", [7, 8, 9]), binary("id", "INT64", np.array([7, 8, 9], np.int64))],
    ids=["json", "binary"],
)
def test_an_int64_key_is_accepted_and_kept_as_an_int(key: InferInput) -> None:
    keys = read(key).keys
    assert keys == [7, 8, 9]
    assert all(type(k) is int for k in keys)  # not numpy's int64: the payload log writes it


def test_bytes_tensors_are_read_as_text_from_str_or_bytes() -> None:
    rows = read(
        binary("id", "BYTES", np.array([b"t-1", b"t-2", b"t-\xc3\xa9"], np.object_)),
        tensor("country", "BYTES", [b"US", "GB", None]),
    )
    assert rows.keys == ["t-1", "t-2", "t-é"]
    assert column(rows, "country") == ["US", "GB", None]
    rows = read(binary("country", "BYTES", np.array([b"GB", b"US", b"ZZ"], np.object_)))
    assert column(rows, "country") == ["GB", "US", "ZZ"]  # ZZ: the contract refuses the row


@pytest.mark.parametrize(
    "bad",
    [
        tensor("country", "BYTES", [b"US", b"\xff\xfe", None]),
        binary("country", "BYTES", np.array([b"US", b"\xff\xfe", b"GB"], np.object_)),
        binary("id", "BYTES", np.array([b"t-1", b"\xc3", b"t-3"], np.object_)),
    ],
    ids=["json", "binary", "key"],
)
def test_bytes_that_are_not_utf8_are_refused(bad: InferInput) -> None:
    assert f"input {bad.name!r} holds bytes that are not UTF-8" in refused(bad)


def test_text_json_cannot_encode_is_refused_not_a_server_error() -> None:
    # JSON's "\ud800" parses to a lone surrogate, which UTF-8 (and so Arrow) cannot hold.
    message = refused(tensor("country", "BYTES", ["US", "\ud800", "GB"]))
    assert "input 'country' is not all BYTES" in message


def test_a_shape_n_by_1_tensor_written_nested_is_flattened() -> None:
    rows = read(
        tensor("amount", "FP64", [[1.5], [None], [3.0]], shape=[3, 1]),
        tensor("id", "BYTES", [["t-1"], ["t-2"], ["t-3"]], shape=[3, 1]),
        binary("age", "INT64", np.array([[40], [41], [42]], np.int64)),
    )
    assert column(rows, "amount") == [1.5, None, 3.0]
    assert column(rows, "age") == [40, 41, 42]
    assert rows.keys == ["t-1", "t-2", "t-3"]


def test_values_that_do_not_fill_the_shape_are_refused() -> None:
    assert "'amount' has 3 values but its shape [4] says 4" in refused(
        tensor("amount", "FP64", [1.5, None, 3.0], shape=[4])
    )
    assert "'amount' has 3 values but its shape [3, 2] says 6" in refused(
        tensor("amount", "FP64", [[1.5], [None], [3.0]], shape=[3, 2])
    )
    short = InferInput("amount", [3], "FP64")
    short._raw_data = np.array([1.5, 2.5]).tobytes()  # gRPC: raw contents of 2 values
    assert "input 'amount'" in refused(short)
    assert "'amount': data must be a list" in refused(InferInput("amount", [3], "FP64"))


def test_an_unknown_input_is_refused_with_the_name_it_was_probably_meant_to_be() -> None:
    message = refused(tensor("amout", "FP64", [1.0, 2.0, 3.0]))
    assert "unknown input 'amout' (did you mean 'amount'?)" in message
    assert "this model's inputs are id, amount, age, country" in message


@pytest.mark.parametrize(
    ("drop", "words"),
    [
        (("id",), "missing input id: send one tensor per input (id BYTES, amount FP64, "),
        (("age", "country"), "missing inputs age, country"),
    ],
)
def test_a_missing_input_is_refused_naming_every_input(drop: tuple[str, ...], words: str) -> None:
    assert words in refused(drop=drop)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (tensor("amount", "FP32", [1.0, 2.0, 3.0]), "input 'amount' is FP32; send it as FP64"),
        (tensor("age", "FP64", [1.0, 2.0, 3.0]), "input 'age' is FP64; send it as INT64"),
        (tensor("id", "FP64", [1.0, 2.0, 3.0]), "input 'id' is FP64; send it as BYTES or INT64"),
        (tensor("amount", "FP64", ["1", "2", "3"]), "input 'amount' is not all FP64"),
        (tensor("age", "INT64", [1, "2", 3]), "input 'age' is not all INT64"),
        (tensor("country", "BYTES", ["US", 2, "GB"]), "input 'country' is BYTES but holds 2"),
    ],
)
def test_a_tensor_of_another_datatype_is_refused(bad: InferInput, words: str) -> None:
    assert words in refused(bad)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (tensor("amount", "FP64", [1.5, True, 3.0]), "input 'amount' is not all FP64"),
        (tensor("age", "INT64", [40, 1.5, 7]), "input 'age' is not all INT64"),
        (tensor("age", "INT64", [40, False, 7]), "input 'age' is not all INT64"),
    ],
    ids=["true-as-fp64", "fraction-as-int64", "false-as-int64"],
)
def test_a_bool_or_a_fraction_is_not_read_as_a_number(bad: InferInput, words: str) -> None:
    # The stream refuses both (decode: a bool is not a number; the contract: 1.5 is not an
    # int64); Arrow alone would read true as 1.0 and truncate 1.5 to 1.
    assert words in refused(bad)


def test_an_integral_float_is_read_as_an_int64() -> None:
    assert column(read(tensor("age", "INT64", [40.0, None, 7])), "age") == [40, None, 7]


def test_tensors_of_different_lengths_are_refused() -> None:
    message = refused(tensor("age", "INT64", [40, 41]))
    assert "lengths differ: id 3, amount 3, age 2, country 3" in message


def test_a_request_with_no_rows_is_refused() -> None:
    empty = [tensor(name, datatype, []) for name, (datatype, _) in GOOD.items()]
    assert "the request holds no rows" in refused(*empty)


def test_a_request_over_the_row_limit_is_too_large() -> None:
    n = MAX_ROWS + 1
    many = [tensor(name, datatype, (data * n)[:n]) for name, (datatype, data) in GOOD.items()]
    with pytest.raises(TooLarge, match="holds 6 rows; the limit is 5"):
        read(*many)


@pytest.mark.parametrize("key", [["t-1", "", "t-3"], ["t-1", None, "t-3"], [b"", b"a", b"b"]])
def test_every_row_needs_a_key(key: list[Any]) -> None:
    assert "every row needs its key 'id'; one is empty or null" in refused(
        tensor("id", "BYTES", key)
    )


# -- any data at all: refused as InvalidInput or read as what it stands for -------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=4),  # gRPC's bytes_contents
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)
# Values a tensor of each datatype should hold, so that whole requests are read too.
_FITTING = {
    "FP64": st.one_of(st.none(), st.floats(), st.integers(-(2**53), 2**53)),
    "INT64": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.integers(-9, 9).map(float)),
    "BYTES": st.one_of(st.none(), st.text(max_size=3), st.binary(max_size=3)),
}

# A value that may not belong: half the time a near miss.
_NEAR = [True, False, 1.5, math.nan, -math.inf, "", b"\xff", "\ud800", [], {}]
_ODD = st.one_of(
    st.sampled_from(_NEAR),
    st.one_of(
        st.floats(),
        st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),  # JSON's "\ud800"
        st.binary(min_size=1, max_size=3),
        _JSON,
    ),
)
_KEYS = {"BYTES": st.text(min_size=1, max_size=3), "INT64": st.integers(-(2**63), 2**63 - 1)}


@st.composite
def _requests(draw: st.DrawFn) -> tuple[InferRequest, dict[str, list[Any]]]:
    """A request with tensors of any JSON-like data; also the flat data of each tensor."""
    n = draw(st.integers(1, MAX_ROWS + 1))
    odd = draw(st.sampled_from([None, *GOOD]))  # the tensor holding one value of any kind
    inputs, flat = [], {}
    for name, (datatype, _) in GOOD.items():
        if name == "id":
            datatype = draw(st.sampled_from(["BYTES", "INT64"]))
        values = _KEYS[datatype] if name == "id" else _FITTING[datatype]
        # Mostly of one length and of the shape they say: the rarer cases are quickly refused.
        size = draw(st.sampled_from([n] * 9 + [n + 1]))
        data = draw(st.lists(values, min_size=size, max_size=size))
        if data and name == odd:
            data[draw(st.integers(0, len(data) - 1))] = draw(_ODD)
        layout = draw(st.sampled_from(["flat"] * 6 + ["nested"] * 3 + ["any"]))
        shape = [len(data)]
        if layout == "nested":
            data, shape = [[v] for v in data], [len(data), 1]
        elif layout == "any":
            shape = draw(st.lists(st.integers(-1, MAX_ROWS + 2), max_size=2))
        inputs.append(tensor(name, datatype, data, shape))
        nested = bool(data) and isinstance(data[0], list)
        flat[name] = (
            [w for v in data for w in (v if isinstance(v, list) else [v])] if nested else data
        )
    return InferRequest("model", inputs), flat


def _number(value: Any) -> bool:
    return type(value) in (int, float)


@settings(deadline=None)
@given(_requests())
def test_any_data_is_refused_as_invalid_input_or_read_as_the_values_it_holds(
    case: tuple[InferRequest, dict[str, list[Any]]],
) -> None:
    made, flat = case
    try:
        rows = read_v2(made, CONTRACT, MAX_ROWS)
    except InvalidInput:  # TooLarge is one; anything else fails the test
        return
    n = rows.batch.num_rows
    assert 0 < n <= MAX_ROWS and len(rows.keys) == n
    for value, got in zip(flat["amount"], column(rows, "amount"), strict=True):
        if value is None or (_number(value) and math.isnan(value)):
            assert got is None
        else:
            assert _number(value) and got == float(value), (value, got)
    for value, got in zip(flat["age"], column(rows, "age"), strict=True):
        assert got is None if value is None else _number(value) and got == value, (value, got)
    for value, got in zip(flat["country"], column(rows, "country"), strict=True):
        text = value.decode() if isinstance(value, bytes) else value
        assert got == text and (text is None or isinstance(text, str)), (value, got)
    for value, key in zip(flat["id"], rows.keys, strict=True):
        assert key == (value.decode() if isinstance(value, bytes) else value)
        assert type(key) is int or (isinstance(key, str) and key), key


@settings(deadline=None)
@given(
    st.sampled_from(list(GOOD)),
    st.sampled_from(["FP64", "INT64", "BYTES"]),
    st.binary(max_size=40),
    st.lists(st.integers(-1, 12), max_size=2),
)
def test_any_raw_buffer_is_refused_as_invalid_input_or_read(
    name: str, datatype: str, raw: bytes, shape: list[int]
) -> None:
    """gRPC's raw contents are bytes a client chose, of any length and shape."""
    buffer = InferInput(name, shape, datatype)
    buffer._raw_data = raw
    try:
        rows = read(buffer)
    except InvalidInput:
        return
    assert rows.batch.num_rows == len(rows.keys) == 3


# -- outcomes as tensors -------------------------------------------------------------------


def scored_batch(task: str) -> ScoredBatch:
    """Three rows as the Scorer returns them: the second refused (a null amount)."""
    invalid = np.array([False, True, False])
    label = (
        pa.array([0, 0, 1], pa.int32(), mask=invalid)
        if task == "binary_classification"
        else pa.nulls(3, pa.int32())
    )
    return ScoredBatch(
        score=pa.array([0.25, math.nan, 0.75], pa.float64(), mask=invalid),
        label=label,
        reason=pa.array([None, "amount: null where the contract requires a value", None]),
        valid=~invalid,
        kinds=[None, "null", None],
    )


def test_a_refused_row_is_answered_nan_no_label_and_its_reason() -> None:
    served = Served.of(["t-1", "t-2", "t-3"], scored_batch("binary_classification"), CONTRACT)
    answer = {o.name: o for o in outputs(served)}
    assert list(answer) == [o["name"] for o in output_types(CONTRACT)]
    assert [(o.datatype, o.shape) for o in answer.values()] == [
        ("FP64", [3]),
        ("INT64", [3]),
        ("BYTES", [3]),
        ("BYTES", [3]),
    ]
    score = answer["score"].as_numpy()
    assert score[0] == 0.25 and math.isnan(score[1]) and score[2] == 0.75
    assert answer["label"].as_numpy().tolist() == [0, NO_LABEL, 1]
    assert answer["label"].as_numpy().dtype == np.int64
    assert answer["reason"].data.tolist() == [
        "",
        "amount: null where the contract requires a value",
        "",
    ]
    assert answer["reason_kind"].data.tolist() == ["", "null", ""]
    assert served.keys == ["t-1", "t-2", "t-3"]


def test_a_regression_is_answered_without_a_label() -> None:
    served = Served.of(["t-1", "t-2", "t-3"], scored_batch("regression"), REGRESSION)
    assert served.labels is None
    names = [o.name for o in outputs(served)]
    assert names == ["score", "reason", "reason_kind"]
    assert names == [o["name"] for o in output_types(REGRESSION)]
    score = outputs(served)[0].as_numpy()
    assert score[0] == 0.25 and math.isnan(score[1])
