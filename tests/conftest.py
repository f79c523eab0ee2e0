"""Fixtures shared by unit and integration tests: a small trained demo model.

Hypothesis runs the same examples on every CI run (``derandomize``, profile ``ci``, chosen
when ``CI`` is set), so a red build is reproducible; ``make explore`` runs many more,
random examples to look for new failures (profile ``explore``).

The unit tier runs in a random order (pytest-randomly; ``--randomly-seed=N`` replays
one, ``-p no:randomly`` turns it off), so no unit test can lean on another's
leftovers. The integration tier keeps its files' order: its expensive fixtures (a Spark
session, brokers, servers) are shared and the order is chosen to start each once.
"""

from __future__ import annotations

import itertools
import os
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import settings
from scoring.dev.demo.data import generate_day
from scoring.dev.demo.train import TrainedModel, train
from scoring.lifecycle.packaging import build, write_artifact

DAY = date(2026, 11, 1)
INTEGRATION = Path(__file__).parent / "integration"
_COLLECTED = pytest.StashKey[int]()
_ORDER = itertools.count()  # the order items are collected in

# 300 examples a property unless a test asks for fewer (a slow one); explore: ten times more.
settings.register_profile("default", max_examples=300)
settings.register_profile("ci", max_examples=300, derandomize=True)
settings.register_profile("explore", max_examples=3000, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)


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


def pytest_itemcollected(item: pytest.Item) -> None:
    item.stash[_COLLECTED] = next(_ORDER)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """After pytest-randomly shuffled everything: the integration tier back in file order."""
    integration = [i for i in items if i.path.is_relative_to(INTEGRATION)]
    unit = [i for i in items if not i.path.is_relative_to(INTEGRATION)]
    items[:] = sorted(integration, key=lambda i: i.stash[_COLLECTED]) + unit
