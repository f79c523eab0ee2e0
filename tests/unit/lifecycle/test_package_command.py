"""`scoring model package` on the command line: --print-contract, and refusals as exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scoring.cli import app
from scoring.dev.demo.train import TrainedModel
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from typer.testing import CliRunner

runner = CliRunner()


def _package(*args: str | Path) -> list[str]:
    return ["model", "package", *map(str, args)]


def test_print_contract_prints_a_hints_file_and_registers_nothing(
    scoring_home: Path, trained: TrainedModel, tmp_path: Path
) -> None:
    args = _package(trained.model_file, "--sample", trained.sample_file)
    printed = runner.invoke(
        app, [*args, "--contract", str(trained.contract_file), "--print-contract"]
    )
    assert printed.exit_code == 0, printed.output
    hints = json.loads(printed.stdout)
    assert hints["key"] == "transaction_id" and hints["output"]["threshold"] == 0.1
    amount = hints["features"][0]
    assert amount == {
        "name": "amount",
        "type": "double",
        "nullable": False,
        "min": 0.0,
        "max": 50000.0,
    }
    assert "nothing registered (--print-contract)" in printed.stderr
    assert not (scoring_home / "mlflow.db").exists()

    # what it printed is a hints file that gives the same contract again
    (tmp_path / "hints.json").write_text(printed.stdout)
    again = runner.invoke(
        app, [*args, "--contract", str(tmp_path / "hints.json"), "--print-contract"]
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == hints


def test_package_needs_a_name_unless_it_only_prints(trained: TrainedModel) -> None:
    result = runner.invoke(app, _package(trained.model_file, "--sample", trained.sample_file))
    assert result.exit_code == 2
    assert "--name" in result.stderr


def test_a_conversion_refusal_exits_2_with_the_message_and_no_traceback(
    scoring_home: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": np.arange(50), "x": rng.random(50)})
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression())
    joblib.dump(model.fit(frame[["x"]], frame["x"] > 0.5), tmp_path / "model.pkl")
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "sample.parquet")
    result = runner.invoke(
        app,
        _package(
            tmp_path / "model.pkl",
            "--name",
            "m",
            "--sample",
            tmp_path / "sample.parquet",
            "--key",
            "id",
        ),
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: skl2onnx cannot convert step 'functiontransformer' (FunctionTransformer) to ONNX: "
    )
    assert "Traceback" not in result.output
    assert not (scoring_home / "mlflow.db").exists()


def test_a_hints_file_that_is_not_json_exits_2_saying_where(
    trained: TrainedModel, tmp_path: Path
) -> None:
    (tmp_path / "hints.json").write_text('{"key": "transaction_id",}')
    result = runner.invoke(
        app,
        _package(
            trained.model_file, "--sample", trained.sample_file,
            "--contract", tmp_path / "hints.json", "--print-contract",
        ),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "is not valid JSON: Expecting property name enclosed in double quotes at line 1, " in (
        result.stderr
    )


def test_help_names_every_model_file_it_takes() -> None:
    result = runner.invoke(app, ["model", "package", "--help"], env={"COLUMNS": "200"})
    assert ".onnx, scikit-learn (.joblib/.pkl/.skops), LightGBM (.txt) or XGBoost" in result.stdout
