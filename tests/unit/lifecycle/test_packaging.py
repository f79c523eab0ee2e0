"""Packaging converts, verifies against the native model, and refuses what disagrees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scoring.dev.demo.data import CATEGORIES
from scoring.dev.demo.train import TrainedModel
from scoring.errors import ContractError, ConversionMismatchError, UnsupportedModelError
from scoring.lifecycle.loading import load_artifact
from scoring.lifecycle.packaging import build, write_artifact
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder


def test_sklearn_pipeline_is_converted_and_verified(trained: TrainedModel) -> None:
    spec = json.loads(trained.contract_file.read_text())
    packaged = build(trained.model_file, trained.sample_file, spec=spec)
    assert packaged.max_diff is not None and packaged.max_diff < 1e-5
    contract = packaged.contract
    assert contract.key == "transaction_id"
    assert contract.output.score_output == "probabilities"
    by_name = {f.name: f for f in contract.features}
    assert by_name["amount"].min == 0.0 and not by_name["amount"].nullable
    # categories come from the fitted encoder, not from the hints
    assert set(by_name["channel"].categories or ()) == set(CATEGORIES["channel"])
    assert contract.training_data is not None and contract.metrics["auc"] > 0.6


def test_a_conversion_that_disagrees_with_the_native_model_is_refused(tmp_path: Path) -> None:
    # The converted regressor computes in float32; around 1e7 float32 steps are 1.0 apart,
    # so the 0.01 steps this model relies on vanish and its scores move by whole units.
    x = 1e7 + np.arange(200) * 0.01
    frame = pd.DataFrame({"id": [str(i) for i in range(200)], "x": x})
    model = LinearRegression().fit(frame[["x"]], (x - 1e7) * 100)
    joblib.dump(model, tmp_path / "linear.joblib")
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "sample.parquet")
    with pytest.raises(ConversionMismatchError, match="disagrees with the native model") as exc:
        build(tmp_path / "linear.joblib", tmp_path / "sample.parquet", key="id")
    assert exc.value.max_diff >= 1.0


def test_raw_onnx_with_named_inputs_needs_only_the_key(artifact_dir: Path) -> None:
    # The key column is no graph input, so nothing in the file can name it.
    with pytest.raises(ContractError, match="Name the key column with --key"):
        build(artifact_dir / "model.onnx")
    packaged = build(artifact_dir / "model.onnx", key="transaction_id")
    assert packaged.contract.input_mode == "columns"
    assert len(packaged.contract.features) == 20


def _write_sample(tmp_path: Path, X: np.ndarray, names: list[str]) -> Path:
    """The first 500 rows of ``X`` as parquet, with an ``id`` key column."""
    sample = tmp_path / "sample.parquet"
    rows = X[:500]
    pq.write_table(
        pa.table({"id": np.arange(len(rows)), **{n: rows[:, i] for i, n in enumerate(names)}}),
        sample,
    )
    return sample


def _tensor_model(tmp_path: Path) -> tuple[Path, Path]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3))
    model = LogisticRegression().fit(X, X[:, 0] > 0)
    graph = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 3]))],
        options={id(model): {"zipmap": False}},
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(graph.SerializeToString())
    return path, _write_sample(tmp_path, X, ["a", "b", "c"])


def test_raw_onnx_with_one_tensor_input_needs_column_names(tmp_path: Path) -> None:
    path, sample = _tensor_model(tmp_path)
    with pytest.raises(ContractError, match="--features"):
        build(path, key="id")
    with pytest.raises(ContractError, match="expects 3 columns"):
        build(path, key="id", feature_names=["a", "b"])
    packaged = build(path, key="id", feature_names=["a", "b", "c"])
    assert packaged.contract.input_mode == "tensor"
    from_sample = build(path, sample, key="id")
    assert from_sample.contract.feature_names == ["a", "b", "c"]
    write_artifact(from_sample, tmp_path / "artifact")
    scored = load_artifact(str(tmp_path / "artifact")).scorer().score(pq.read_table(sample))
    assert scored.rejected == 0


def test_raw_onnx_without_hints_is_not_nullable_anywhere(tmp_path: Path) -> None:
    """A model that never saw a missing value gets its nulls refused, not scored."""
    path, _ = _tensor_model(tmp_path)
    packaged = build(path, key="id", feature_names=["a", "b", "c"])
    assert [f.nullable for f in packaged.contract.features] == [False, False, False]
    assert len(packaged.inferred) == 3
    assert packaged.inferred[0].startswith("a: double, not nullable: no sample and no imputer")
    assert '{"name": "a", "nullable": true} in --contract' in packaged.inferred[0]


def test_nullable_where_the_sample_has_nulls_or_the_contract_says_so(tmp_path: Path) -> None:
    path, sample = _tensor_model(tmp_path)
    table = pq.read_table(sample)
    b = table.column("b").to_pylist()
    holed = table.set_column(2, "b", pa.array([None, *b[1:]], pa.float64()))
    pq.write_table(holed, sample)
    packaged = build(
        path,
        sample,
        key="id",
        spec={"features": [{"name": "c", "nullable": True}]},
    )
    by_name = {f.name: f.nullable for f in packaged.contract.features}
    assert by_name == {"a": False, "b": True, "c": True}
    assert "the sample has 1 nulls" in packaged.inferred[1]
    assert packaged.inferred[2].endswith("as --contract says")


def test_a_graph_that_imputes_makes_its_inputs_nullable(artifact_dir: Path) -> None:
    # The demo pipeline imputes its numeric columns; without hints those become nullable,
    # the categorical ones (one-hot, no imputer) do not.
    packaged = build(artifact_dir / "model.onnx", key="transaction_id")
    by_name = {f.name: f.nullable for f in packaged.contract.features}
    assert by_name["amount"] is True
    assert by_name["channel"] is False
    assert any("the graph imputes it" in line for line in packaged.inferred)


def test_batch_and_stream_refuse_the_same_nulls(tmp_path: Path) -> None:
    """Parity on missing values: the batch job's Arrow function and the stream's stages."""
    from scoring.batch.job import REASON, _score_batches
    from scoring.model.decode import decode
    from scoring.model.live import LiveModel
    from scoring.stream.stages import score

    path, _ = _tensor_model(tmp_path)
    write_artifact(build(path, key="id", feature_names=["a", "b", "c"]), tmp_path / "artifact")
    artifact = load_artifact(str(tmp_path / "artifact"))
    rows = [
        {"id": 1, "a": 0.5, "b": 1.0, "c": -1.0},
        {"id": 2, "a": None, "b": 1.0, "c": -1.0},
        {"id": 3, "a": 0.1, "b": None, "c": 2.0},
    ]
    table = pa.Table.from_pylist(rows)
    batch_fn = _score_batches(
        artifact.contract.to_json(), lambda: artifact.onnx_bytes, ["id"], rows=None
    )
    (batch_out,) = list(batch_fn(iter(table.to_batches())))
    batch_reasons = batch_out.column(REASON).to_pylist()

    model = LiveModel.of(artifact)
    decoded = decode([json.dumps(r).encode() for r in rows], artifact.contract, 10_000)
    stream = score(decoded, model)
    assert batch_reasons[0] is None and stream.valid.tolist() == [True, False, False]
    assert [r is not None for r in batch_reasons] == (~stream.valid).tolist()
    assert stream.reason.to_pylist()[1:] == batch_reasons[1:]
    assert stream.kinds[1:] == ["null", "null"]
    assert stream.score.to_pylist()[0] == batch_out.column("score").to_pylist()[0]


def test_lightgbm_booster_is_converted_and_verified(tmp_path: Path) -> None:
    import lightgbm  # a dev dependency: missing, the test fails rather than skips

    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 4))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    names = ["f0", "f1", "f2", "f3"]
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 15},
        lightgbm.Dataset(X, y, feature_name=names),
        num_boost_round=20,
    )
    booster.save_model(str(tmp_path / "model.txt"))
    sample = _write_sample(tmp_path, X, names)
    packaged = build(tmp_path / "model.txt", sample, key="id")
    assert packaged.flavor == "lightgbm" and packaged.max_diff is not None
    assert packaged.contract.input_mode == "tensor"
    assert packaged.contract.output.task == "binary_classification"


def test_sklearn_model_without_sample_is_refused(trained: TrainedModel) -> None:
    with pytest.raises(ContractError, match="--sample"):
        build(trained.model_file, key="transaction_id")


def test_unknown_model_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(UnsupportedModelError, match="suffix"):
        build(tmp_path / "model.bin", key="id")


def test_contract_hints_must_name_real_features(trained: TrainedModel) -> None:
    with pytest.raises(ContractError, match="does not take"):
        build(
            trained.model_file,
            trained.sample_file,
            key="transaction_id",
            spec={"features": [{"name": "nope", "min": 0}]},
        )


def test_xgboost_booster_is_converted_and_verified(tmp_path: Path) -> None:
    import xgboost  # a dev dependency: missing, the test fails rather than skips

    rng = np.random.default_rng(2)
    X = rng.normal(size=(2000, 3))
    y = (X[:, 0] - X[:, 2] > 0).astype(int)
    names = ["a", "b", "c"]
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 3},
        xgboost.DMatrix(X, y, feature_names=names),
        num_boost_round=20,
    )
    booster.save_model(str(tmp_path / "model.json"))
    sample = _write_sample(tmp_path, X, names)
    packaged = build(tmp_path / "model.json", sample, key="id")
    assert packaged.flavor == "xgboost" and packaged.max_diff is not None
    assert packaged.contract.feature_names == names


def test_a_booster_without_the_extra_says_which_extra_to_install() -> None:
    from scoring.errors import UnsupportedModelError
    from scoring.lifecycle.convert import boosters_module as _boosters_module

    assert _boosters_module("json").dumps([]) == "[]"
    with pytest.raises(UnsupportedModelError, match=r"pip install 'scoring\[boosters\]'"):
        _boosters_module("scoring_no_such_booster")


@pytest.mark.parametrize(
    ("strings", "why"),
    [
        (
            SimpleImputer(missing_values="", strategy="most_frequent"),
            'the graph imputes it: its SimpleImputer replaces ""',
        ),
        (None, 'the graph encodes it: "", how a missing string enters, is a category'),
    ],
    ids=["imputer", "encoder"],
)
def test_a_string_the_pipeline_takes_missing_is_nullable_and_scored_when_null(
    tmp_path: Path, strings: Any, why: str
) -> None:
    """skl2onnx writes no Imputer node for strings; the column is nullable all the same, and
    a record without it is scored as the native model scores "" (how it enters)."""
    rng = np.random.default_rng(3)
    channel = rng.choice(["pos", "online", "atm"], 300).astype(object)
    x = rng.normal(size=300)
    trained_on = channel.copy()
    if strings is None:  # the encoder learns "" from missing values in training
        trained_on[::10] = ""
    frame = pd.DataFrame({"x": x, "channel": trained_on})
    encode = OneHotEncoder(handle_unknown="ignore")
    if strings is not None:
        encode = make_pipeline(strings, encode)
    model = Pipeline(
        [
            (
                "prep",
                ColumnTransformer([("num", "passthrough", ["x"]), ("cat", encode, ["channel"])]),
            ),
            ("clf", LogisticRegression()),
        ]
    ).fit(frame, (x > 0) ^ (channel == "online"))
    joblib.dump(model, tmp_path / "model.joblib")
    # the sample has no missing channel: the graph alone makes it nullable
    sample = pa.table({"id": np.arange(300), "x": x, "channel": channel.tolist()})
    pq.write_table(sample, tmp_path / "sample.parquet")
    packaged = build(tmp_path / "model.joblib", tmp_path / "sample.parquet", key="id")
    channel_feature = packaged.contract.features[1]
    assert channel_feature.nullable is True
    assert packaged.inferred[1].startswith(f"channel: string, nullable: {why}")
    assert "" not in (channel_feature.categories or ())  # "" is nullability's business

    write_artifact(packaged, tmp_path / "artifact")
    missing = pa.table({"id": [1, 2], "x": [0.5, -0.5], "channel": pa.array([None, "atm"])})
    scored = load_artifact(str(tmp_path / "artifact")).scorer().score(missing)
    assert scored.rejected == 0, scored.reason
    native = model.predict_proba(pd.DataFrame({"x": [0.5, -0.5], "channel": ["", "atm"]}))[:, 1]
    assert np.max(np.abs(scored.score.to_numpy() - native)) < 1e-5
