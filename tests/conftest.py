"""Fixtures shared by unit and integration tests: a small trained demo model."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from scoring.dev.demo.data import generate_day
from scoring.dev.demo.train import TrainedModel, train
from scoring.lifecycle.packaging import build, write_artifact

DAY = date(2026, 11, 1)


@pytest.fixture(scope="session")
def demo_table() -> pa.Table:
    return generate_day(DAY, 6000)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_table: pa.Table) -> TrainedModel:
    return train(demo_table, tmp_path_factory.mktemp("trained"), "demo", 0)


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory, trained: TrainedModel) -> Path:
    """The demo model packaged into an artifact folder (no registry involved)."""
    import json

    packaged = build(
        trained.model_file, trained.sample_file, spec=json.loads(trained.contract_file.read_text())
    )
    directory = tmp_path_factory.mktemp("artifact") / "model"
    write_artifact(packaged, directory)
    return directory


@pytest.fixture
def scoring_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data dir (and so a fresh embedded MLflow registry) for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("SCORING_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home
