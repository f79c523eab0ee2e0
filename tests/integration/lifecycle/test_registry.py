"""The MLflow registry: package, resolve by version and alias, promote, roll back, list.

A real MLflow store (SQLite backend, local artifact folder) in a fresh data dir per test.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from scoring.cli import app
from scoring.dev.demo.train import TrainedModel
from scoring.errors import ChecksumMismatchError, ModelNotFoundError, RollbackError
from scoring.lifecycle import registry
from scoring.lifecycle.loading import load_artifact
from scoring.lifecycle.packaging import package
from typer.testing import CliRunner

from tests.integration.conftest import package_args

runner = CliRunner()


def _package(trained: TrainedModel) -> str:
    return package(
        trained.model_file, "fraud", trained.sample_file, spec_file=trained.contract_file
    ).version


def test_package_registers_a_loadable_verified_version(
    scoring_home: Path, trained: TrainedModel
) -> None:
    version = _package(trained)
    artifact = load_artifact(f"models:/fraud/{version}")
    assert (artifact.name, artifact.version) == ("fraud", version)
    assert artifact.contract.metrics["auc"] > 0.6
    assert (scoring_home / "mlflow.db").is_file()
    assert any((scoring_home / "mlartifacts").rglob("scoring.json"))


def test_alias_resolves_to_an_immutable_version_and_rolls_back(
    scoring_home: Path, trained: TrainedModel
) -> None:
    first, second = _package(trained), _package(trained)
    assert registry.promote("fraud", first) is None
    assert registry.promote("fraud", second) == first
    assert load_artifact("models:/fraud@champion").version == second
    assert registry.rollback("fraud") == first
    assert load_artifact("models:/fraud@champion").version == first
    with pytest.raises(RollbackError, match="nothing to roll back"):
        registry.rollback("fraud")


def test_alias_delete_clears_only_the_version_it_is_told(
    scoring_home: Path, trained: TrainedModel
) -> None:
    first, second = _package(trained), _package(trained)
    registry.promote("fraud", first)
    registry.promote("fraud", second, alias="challenger")
    delete = ["model", "alias", "delete", "fraud", "--alias", "challenger"]
    kept = runner.invoke(app, [*delete, "--if-version", first])
    assert kept.exit_code == 0 and "nothing deleted" in kept.output
    assert registry.resolve("models:/fraud@challenger").version == second
    done = runner.invoke(app, [*delete, "--if-version", second])
    assert done.exit_code == 0 and f"fraud@challenger ({second}) deleted" in done.output
    with pytest.raises(ModelNotFoundError):
        registry.resolve("models:/fraud@challenger")
    assert registry.resolve("models:/fraud@champion").version == first
    again = runner.invoke(app, delete)
    assert again.exit_code == 0 and "is not set: nothing deleted" in again.output


def test_unknown_models_and_aliases_say_so(scoring_home: Path) -> None:
    for uri in ("models:/nope/1", "models:/nope@champion", "models:/bad uri"):
        with pytest.raises(ModelNotFoundError, match="could not be resolved"):
            load_artifact(uri)


def test_a_graph_swapped_in_the_artifact_store_is_refused(
    scoring_home: Path, trained: TrainedModel
) -> None:
    version = _package(trained)
    contract = next((scoring_home / "mlartifacts").rglob("scoring.json"))
    # Rewrite both the graph and the contract's checksum: only the registry record is left
    # to notice, and it must.
    graph = contract.parent / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    import hashlib

    data = json.loads(contract.read_text())
    data["onnx_sha256"] = hashlib.sha256(graph.read_bytes()).hexdigest()
    contract.write_text(json.dumps(data))
    with pytest.raises(ChecksumMismatchError, match="registry record"):
        load_artifact(f"models:/fraud/{version}")


def test_cli_package_promote_list_rollback(scoring_home: Path, trained: TrainedModel) -> None:
    args = package_args(trained)
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip().splitlines()[-1] == "1"
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["model", "promote", "fraud", "1"]).exit_code == 0
    promoted = runner.invoke(app, ["model", "promote", "fraud", "2"])
    assert "fraud@champion: 1 -> 2" in promoted.stdout
    listing = runner.invoke(app, ["model", "list", "fraud"])
    assert listing.exit_code == 0 and "champion" in listing.stdout and "auc=" in listing.stdout
    back = runner.invoke(app, ["model", "rollback", "fraud"])
    assert back.exit_code == 0 and "fraud@champion -> 1" in back.stdout
    again = runner.invoke(app, ["model", "rollback", "fraud"])
    assert again.exit_code == 2 and "nothing to roll back" in again.stderr


def test_cli_refuses_a_mismatching_conversion_and_registers_nothing(
    scoring_home: Path, tmp_path: Path
) -> None:
    import joblib
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.linear_model import LinearRegression

    x = 1e7 + np.arange(100) * 0.01
    frame = pd.DataFrame({"id": [str(i) for i in range(100)], "x": x})
    joblib.dump(LinearRegression().fit(frame[["x"]], (x - 1e7) * 100), tmp_path / "m.joblib")
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "s.parquet")
    result = runner.invoke(
        app,
        [
            "model",
            "package",
            str(tmp_path / "m.joblib"),
            "--name",
            "lin",
            "--sample",
            str(tmp_path / "s.parquet"),
            "--key",
            "id",
        ],
    )
    assert result.exit_code == 1
    assert "disagrees with the native model" in result.stderr
    if (scoring_home / "mlflow.db").exists():
        with sqlite3.connect(scoring_home / "mlflow.db") as db:
            assert db.execute("select count(*) from model_versions").fetchone()[0] == 0
    shutil.rmtree(tmp_path)
