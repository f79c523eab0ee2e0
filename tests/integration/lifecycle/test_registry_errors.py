"""Errors about a model the registry lacks name the registry asked and how to ask another.

Commands run as a user runs them: the ``scoring`` console script or ``import scoring`` in
a fresh process, from a folder of the test's own, with no setting in the environment but
those a test gives. The registry is a real embedded MLflow store (SQLite, local artifacts).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from scoring.dev.demo.train import TrainedModel
from scoring.errors import ModelNotFoundError
from scoring.lifecycle.loading import load_artifact
from scoring.lifecycle.packaging import package
from scoring.settings import ENV

BIN = Path(sys.executable).parent
TO_ASK_ANOTHER = (
    "To ask another, set SCORING_HOME=DIR (the data dir whose mlflow.db holds your models) "
    "or MLFLOW_TRACKING_URI=URI (a tracking server or database)."
)


def _env(**settings: str) -> dict[str, str]:
    """This environment without any setting of the project's, plus ``settings``."""
    clean = {k: v for k, v in os.environ.items() if k not in ENV.values()}
    return {**clean, **settings}


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_a_command_from_another_folder_says_where_it_made_the_registry(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data_dir = elsewhere / ".scoring"
    listing = [str(BIN / "scoring"), "model", "list", "loans"]

    first = _run(listing, elsewhere, _env())
    assert first.returncode == 1 and first.stdout == ""
    notice, error = first.stderr.splitlines()
    assert notice.endswith(f"creating the data dir {data_dir} (SCORING_HOME is unset)")
    asked = (
        f"Asked the embedded registry {data_dir / 'mlflow.db'} (SCORING_HOME is unset, so the "
        f"data dir is .scoring in the current folder). {TO_ASK_ANOTHER}"
    )
    assert error == (
        "error: Model 'loans' could not be resolved: the registry has no model named 'loans'; "
        "it holds no models; this command created it (there was no mlflow.db before). "
        f"{asked}"
    )

    again = _run(listing, elsewhere, _env())
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.splitlines() == [
        "error: Model 'loans' could not be resolved: the registry has no model named 'loans'; "
        f"it holds no models. {asked}"
    ]


def test_errors_name_the_registry_and_what_it_holds(
    scoring_home: Path, trained: TrainedModel, tmp_path: Path
) -> None:
    package(trained.model_file, "fraud", trained.sample_file, spec_file=trained.contract_file)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(SCORING_HOME=str(scoring_home))
    asked = (
        f"Asked the embedded registry {scoring_home / 'mlflow.db'} (the data dir SCORING_HOME "
        f"names). {TO_ASK_ANOTHER}"
    )

    listing = _run([str(BIN / "scoring"), "model", "list", "loans"], elsewhere, env)
    assert listing.returncode == 1 and listing.stdout == ""
    assert listing.stderr.strip() == (
        "error: Model 'loans' could not be resolved: the registry has no model named 'loans'; "
        f"it holds fraud. {asked}"
    )
    assert not (elsewhere / ".scoring").exists()

    loading = "import scoring; scoring.load_model('models:/fraud@nope')"
    embedded = _run([sys.executable, "-c", loading], elsewhere, env)
    assert embedded.returncode == 1
    assert embedded.stderr.strip().splitlines()[-1] == (
        "scoring.errors.ModelNotFoundError: Model 'models:/fraud@nope' could not be resolved: "
        "Registered model alias nope not found. See its versions and aliases with "
        f"`scoring model list fraud`. {asked}"
    )

    with pytest.raises(ModelNotFoundError) as version:
        load_artifact("models:/fraud/9")
    assert "(name=fraud, version=9) not found" in str(version.value)
    assert str(version.value).endswith(asked)


def test_a_configured_registry_is_named_by_its_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ModelNotFoundError) as error:
        load_artifact("models:/fraud@champion")
    assert str(error.value) == (
        "Model 'models:/fraud@champion' could not be resolved: the registry has no model "
        f"named 'fraud'; it holds no models. Asked the registry at {uri} "
        f"(MLFLOW_TRACKING_URI). {TO_ASK_ANOTHER}"
    )
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    with pytest.raises(ModelNotFoundError, match=r"\(MLFLOW_REGISTRY_URI\)\. To ask another, "):
        load_artifact("models:/fraud@champion")
