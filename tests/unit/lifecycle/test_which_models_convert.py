"""Which models convert: each row of the README's table, packaged and checked.

Every model is trained here on a small frame with missing numbers and strings (read the
way scoring reads them: ``scoring.model.features.model_frame``), saved as a user would
save it, packaged through :func:`~scoring.lifecycle.packaging.build` with a real parquet
sample, written as an artifact, loaded back and scored: the packaging check's measured
difference and the artifact's scores must both agree with the native model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scoring.errors import ConversionError, ConversionMismatchError, UnsupportedModelError
from scoring.lifecycle.convert import convert_booster
from scoring.lifecycle.loading import load_artifact
from scoring.lifecycle.packaging import DEFAULT_TOLERANCE, build, write_artifact
from scoring.model.contract import Feature
from scoring.model.features import model_frame
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)

ROWS = 400
NUMBERS = ["amount", "age"]
STRINGS = ["channel", "country"]
FEATURES = [Feature(name=n, type="double") for n in NUMBERS] + [
    Feature(name=n, type="string") for n in STRINGS
]


@dataclass(frozen=True)
class Data:
    table: pa.Table  # key "id", the features (with nulls), no label
    label: np.ndarray
    sample: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    rng = np.random.default_rng(7)
    amount = rng.gamma(2.0, 50.0, ROWS)
    age = rng.integers(18, 90, ROWS).astype(float)
    channel = rng.choice(["pos", "online", "atm"], ROWS)
    country = rng.choice(["US", "GB", "DE", "FR"], ROWS)
    label = ((amount > 120) ^ (channel == "online") ^ (rng.random(ROWS) < 0.1)).astype(int)
    holes = rng.random((ROWS, 3)) < 0.08  # missing amounts, ages and channels
    table = pa.table(
        {
            "id": np.arange(ROWS),
            "amount": pa.array(amount, mask=holes[:, 0]),
            "age": pa.array(age, mask=holes[:, 1]),
            "channel": pa.array(channel.tolist(), mask=holes[:, 2]),
            "country": country.tolist(),
        }
    )
    sample = tmp_path_factory.mktemp("convert") / "sample.parquet"
    pq.write_table(table, sample)
    return Data(table, label, sample)


def strings(encoder: Any) -> Pipeline:
    """A missing string enters as "": impute it, then encode."""
    imputer = SimpleImputer(missing_values="", strategy="constant", fill_value="missing")
    return make_pipeline(imputer, encoder)


def prep(numbers: Any = None, text: Any = None, remainder: str = "drop") -> ColumnTransformer:
    return ColumnTransformer(
        [
            ("num", numbers or make_pipeline(SimpleImputer(), StandardScaler()), NUMBERS),
            ("cat", text or strings(OneHotEncoder(handle_unknown="ignore")), STRINGS),
        ],
        remainder=remainder,
    )


def pipeline(classifier: Any, **kwargs: Any) -> Pipeline:
    return Pipeline([("prep", prep(**kwargs)), ("clf", classifier)])


def trees(classifier: Any, **kwargs: Any) -> Pipeline:
    """Tree ensembles read the numbers unscaled: a scaler computes in float64 natively and
    in float32 in the graph, and a value that lands on a split then goes the other way."""
    return pipeline(classifier, numbers=SimpleImputer(), **kwargs)


def lgbm() -> Any:
    import lightgbm

    return lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1)


def xgbc() -> Any:
    import xgboost

    return xgboost.XGBClassifier(n_estimators=20, max_depth=3)


def sklearn_file(make: Callable[[], Any], suffix: str = ".joblib") -> Any:
    """Fit ``make()`` on the frame and save it with joblib, as training code does."""

    def save(data: Data, folder: Path) -> tuple[Path, Any]:
        model = make().fit(model_frame(data.table, FEATURES), data.label)
        path = folder / f"model{suffix}"
        joblib.dump(model, path)
        return path, model

    return save


def numbers_matrix(data: Data) -> np.ndarray:
    return model_frame(data.table, FEATURES[:2]).to_numpy(dtype=np.float64)


def lightgbm_txt(data: Data, folder: Path) -> tuple[Path, Any]:
    import lightgbm

    booster = lightgbm.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1},
        lightgbm.Dataset(numbers_matrix(data), data.label, feature_name=NUMBERS),
        num_boost_round=20,
    )
    booster.save_model(str(folder / "model.txt"))
    return folder / "model.txt", booster


def xgboost_json(data: Data, folder: Path) -> tuple[Path, Any]:
    import xgboost

    matrix = xgboost.DMatrix(numbers_matrix(data), data.label, feature_names=NUMBERS)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 3}, matrix, 20)
    booster.save_model(str(folder / "model.json"))
    return folder / "model.json", booster


def booster_joblib(make: Callable[[], Any]) -> Any:
    """A scikit-learn-API booster fitted on a frame of the numeric columns, joblib-saved."""

    def save(data: Data, folder: Path) -> tuple[Path, Any]:
        model = make().fit(model_frame(data.table, FEATURES[:2]), data.label)
        joblib.dump(model, folder / "model.joblib")
        return folder / "model.joblib", model

    return save


def onnx_file(data: Data, folder: Path) -> tuple[Path, Any]:
    """A pipeline the user converted with skl2onnx: one named input per column."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    model = pipeline(LogisticRegression(max_iter=1000)).fit(
        model_frame(data.table, FEATURES), data.label
    )
    types = [(n, FloatTensorType([None, 1])) for n in NUMBERS]
    types += [(n, StringTensorType([None, 1])) for n in STRINGS]
    graph = convert_sklearn(model, initial_types=types, options={id(model): {"zipmap": False}})
    (folder / "model.onnx").write_bytes(graph.SerializeToString())
    return folder / "model.onnx", model


# README "Which models convert": one case per row (the id is the row's name).
CASES = {
    "SimpleImputer (numbers: mean, median)": sklearn_file(
        lambda: pipeline(
            LogisticRegression(max_iter=1000),
            numbers=ColumnTransformer(
                [
                    ("mean", SimpleImputer(strategy="mean"), [0]),
                    ("median", SimpleImputer(strategy="median"), [1]),
                ]
            ),
        )
    ),
    "SimpleImputer (numbers: most_frequent, constant)": sklearn_file(
        lambda: pipeline(
            LogisticRegression(max_iter=1000),
            numbers=ColumnTransformer(
                [
                    ("frequent", SimpleImputer(strategy="most_frequent"), [0]),
                    ("constant", SimpleImputer(strategy="constant", fill_value=0.0), [1]),
                ]
            ),
        )
    ),
    'SimpleImputer (strings, missing_values="", constant)': sklearn_file(
        lambda: pipeline(LogisticRegression(max_iter=1000))
    ),
    'SimpleImputer (strings, missing_values="", most_frequent)': sklearn_file(
        lambda: pipeline(
            LogisticRegression(max_iter=1000),
            text=make_pipeline(
                SimpleImputer(missing_values="", strategy="most_frequent"),
                OneHotEncoder(handle_unknown="ignore"),
            ),
        )
    ),
    "StandardScaler": sklearn_file(lambda: pipeline(LogisticRegression(max_iter=1000))),
    "MinMaxScaler": sklearn_file(
        lambda: pipeline(
            LogisticRegression(max_iter=1000),
            numbers=make_pipeline(SimpleImputer(), MinMaxScaler()),
        )
    ),
    'OneHotEncoder(handle_unknown="ignore")': sklearn_file(
        lambda: pipeline(
            LogisticRegression(max_iter=1000), text=OneHotEncoder(handle_unknown="ignore")
        )
    ),
    "OrdinalEncoder": sklearn_file(
        lambda: trees(
            RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0),
            text=OrdinalEncoder(),
        )
    ),
    'OrdinalEncoder(handle_unknown="use_encoded_value")': sklearn_file(
        lambda: trees(
            RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0),
            text=OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
        )
    ),
    'ColumnTransformer(remainder="passthrough")': sklearn_file(
        lambda: Pipeline(
            [
                (
                    "prep",
                    ColumnTransformer(
                        [("cat", strings(OneHotEncoder(handle_unknown="ignore")), STRINGS)],
                        remainder=make_pipeline(SimpleImputer(), StandardScaler()),
                    ),
                ),
                ("clf", LogisticRegression(max_iter=1000)),
            ]
        )
    ),
    "LogisticRegression": sklearn_file(lambda: pipeline(LogisticRegression(max_iter=1000))),
    "RandomForestClassifier": sklearn_file(
        lambda: trees(RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0))
    ),
    "GradientBoostingClassifier": sklearn_file(
        lambda: trees(GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0))
    ),
    "LGBMClassifier in a pipeline": sklearn_file(lambda: trees(lgbm())),
    "XGBClassifier in a pipeline": sklearn_file(lambda: trees(xgbc())),
    "LGBMClassifier (.joblib)": booster_joblib(lgbm),
    "XGBClassifier (.joblib)": booster_joblib(xgbc),
    "LightGBM booster (.txt)": lightgbm_txt,
    "XGBoost booster (.json)": xgboost_json,
    "scikit-learn pipeline (.pkl)": sklearn_file(
        lambda: pipeline(LogisticRegression(max_iter=1000)), ".pkl"
    ),
    "ONNX file, one named input per column (.onnx)": onnx_file,
}


def native_scores(model: Any, data: Data) -> np.ndarray:
    """The native model's positive-class probabilities for the sample."""
    if hasattr(model, "predict_proba"):
        columns = FEATURES if hasattr(model, "steps") else FEATURES[:2]
        return np.asarray(model.predict_proba(model_frame(data.table, columns)))[:, 1]
    if type(model).__module__.startswith("lightgbm"):
        return np.asarray(model.predict(numbers_matrix(data)))
    import xgboost

    return np.asarray(model.predict(xgboost.DMatrix(numbers_matrix(data), feature_names=NUMBERS)))


@pytest.mark.parametrize("case", list(CASES))
def test_it_converts_and_scores_as_the_native_model(case: str, data: Data, tmp_path: Path) -> None:
    path, native = CASES[case](data, tmp_path)
    packaged = build(path, data.sample, key="id")
    if path.suffix != ".onnx":  # an ONNX file has no native model to check against
        assert packaged.max_diff is not None and packaged.max_diff <= DEFAULT_TOLERANCE
    write_artifact(packaged, tmp_path / "artifact")
    scored = load_artifact(str(tmp_path / "artifact")).scorer().score(data.table)
    assert scored.rejected == 0, scored.reason
    expected = native_scores(native, data)
    assert np.max(np.abs(scored.score.to_numpy() - expected)) <= DEFAULT_TOLERANCE


class Doubler(BaseEstimator, TransformerMixin):
    """A user's own transformer: skl2onnx has no converter for it."""

    def fit(self, X: Any, y: Any = None) -> Doubler:
        return self

    def transform(self, X: Any) -> Any:
        return X * 2


def nan_strings(data: Data) -> pd.DataFrame:
    """The frame as pandas users often train on: a missing string is NaN, not ""."""
    frame = model_frame(data.table, FEATURES)
    frame[STRINGS] = frame[STRINGS].replace("", np.nan)
    return frame


def refusal(model: Any, data: Data, folder: Path, frame: pd.DataFrame | None = None) -> str:
    """Fit and save ``model``, package it: the ConversionError's message (exit code 2)."""
    model.fit(model_frame(data.table, FEATURES) if frame is None else frame, data.label)
    joblib.dump(model, folder / "model.joblib")
    with pytest.raises(ConversionError) as refused:
        build(folder / "model.joblib", data.sample, key="id")
    assert refused.value.exit_code == 2
    return str(refused.value)


def test_a_string_imputer_waiting_for_nan_is_refused_with_the_way_that_converts(
    data: Data, tmp_path: Path
) -> None:
    cat = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"),
        OneHotEncoder(handle_unknown="ignore"),
    )
    message = refusal(
        pipeline(LogisticRegression(max_iter=1000), text=cat), data, tmp_path, nan_strings(data)
    )
    assert message.startswith(
        "skl2onnx cannot convert step 'prep__cat__simpleimputer' (SimpleImputer) to ONNX: "
        "The converter is implemented when the missing values are string not <class 'float'>."
    )
    assert 'SimpleImputer(missing_values="", strategy="constant", fill_value="missing")' in message
    assert message.endswith("Nothing was registered.")


def test_a_function_transformer_is_refused(data: Data, tmp_path: Path) -> None:
    numbers = make_pipeline(SimpleImputer(), FunctionTransformer(np.log1p))
    message = refusal(pipeline(LogisticRegression(max_iter=1000), numbers=numbers), data, tmp_path)
    assert "step 'prep__num__functiontransformer' (FunctionTransformer)" in message
    assert "compute that column before the model" in message


def test_a_step_without_a_converter_is_refused(data: Data, tmp_path: Path) -> None:
    numbers = make_pipeline(SimpleImputer(), Doubler())
    message = refusal(pipeline(LogisticRegression(max_iter=1000), numbers=numbers), data, tmp_path)
    assert "step 'prep__num__doubler' (Doubler) to ONNX: Unable to find a shape calculator" in (
        message
    )
    assert "skl2onnx has no converter for Doubler" in message
    assert "update_registered_converter" in message and "package the .onnx file" in message


def test_hist_gradient_boosting_is_refused_on_purpose_with_what_to_use_instead(
    data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def converter(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("HistGradientBoosting reached the converter")

    # Refused before conversion, whatever protobuf is installed: not the converter's failure.
    monkeypatch.setattr("skl2onnx.convert_sklearn", converter)
    message = refusal(trees(HistGradientBoostingClassifier(max_iter=5)), data, tmp_path)
    assert "step 'clf' (HistGradientBoostingClassifier)" in message
    assert "which protobuf 7 rejects" in message and "refused on every install" in message
    assert "Use LGBMClassifier" in message


def test_hist_gradient_boosting_stays_refused_while_skl2onnx_writes_booleans(
    data: Data,
) -> None:
    """Why it is refused: skl2onnx gives every leaf of a HistGradientBoosting tree a Python
    bool in ``nodes_missing_value_tracks_true``, an integer attribute that protobuf 6 takes
    with a warning and protobuf 7 rejects. When this fails skl2onnx writes integers: drop
    the refusal (convert._refuse_on_purpose) and make HistGradientBoostingClassifier a
    row of CASES (under protobuf 6 it scored within 2e-7 of the native model, NaN included).
    """
    from skl2onnx.common.tree_ensemble import (
        add_tree_to_attribute_pairs_hist_gradient_boosting,
        get_default_tree_classifier_attribute_pairs,
    )

    model = HistGradientBoostingClassifier(max_iter=1).fit(numbers_matrix(data), data.label)
    pairs = get_default_tree_classifier_attribute_pairs()
    tree = model._predictors[0][0]
    add_tree_to_attribute_pairs_hist_gradient_boosting(
        pairs, True, tree, 0, 1.0, 0, False, False, dtype=np.float32
    )
    assert any(isinstance(v, bool) for v in pairs["nodes_missing_value_tracks_true"])


def test_a_scaler_in_front_of_trees_is_refused_by_the_check(data: Data, tmp_path: Path) -> None:
    forest = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0)
    model = pipeline(forest).fit(model_frame(data.table, FEATURES), data.label)
    joblib.dump(model, tmp_path / "model.joblib")
    with pytest.raises(ConversionMismatchError) as refused:
        build(tmp_path / "model.joblib", data.sample, key="id")
    assert refused.value.max_diff > DEFAULT_TOLERANCE


def test_a_model_file_that_does_not_load_says_so(data: Data, tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"not a pickle")
    with pytest.raises(UnsupportedModelError, match=r"Cannot read the model file .*model\.joblib"):
        build(tmp_path / "model.joblib", data.sample, key="id")


def test_a_booster_the_converter_refuses_is_named() -> None:
    with pytest.raises(ConversionError, match="onnxmltools cannot convert the LightGBM booster"):
        convert_booster("lightgbm", object(), 2)
