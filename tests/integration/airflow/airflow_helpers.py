"""Running the project's Airflow (its own venv, SQLite) from tests, as users run it.

Also the state the nightly DAG starts from: a champion and a first day scored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from scoring.batch.job import BatchJob, run
from scoring.dev.demo.train import TrainedModel
from scoring.lifecycle import registry
from scoring.lifecycle.packaging import package
from scoring.settings import PROJECT_ROOT

AIRFLOW_VENV = PROJECT_ROOT / ".venv-airflow"
MIGRATED_STAMP = ".db-migrated"  # written by infra/airflow/env.sh after a migration


def env_from_script(overrides: dict[str, str]) -> dict[str, str]:
    """The environment infra/airflow/env.sh produces on top of ``overrides``."""
    base = {
        k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}
    } | overrides
    dumped = subprocess.run(
        ["bash", "-c", 'source infra/airflow/env.sh && python3 -c "import json, os; '
         'print(json.dumps(dict(os.environ)))"'],
        cwd=PROJECT_ROOT, env=base, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(dumped.stdout)


class Airflow:
    """Runs `airflow ...` of .venv-airflow in one AIRFLOW_HOME."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(
        self, *args: str, timeout: int = 600, **variables: str
    ) -> subprocess.CompletedProcess[str]:
        env = self.env | {f"AIRFLOW_VAR_SCORING_{k.upper()}": v for k, v in variables.items()}
        return subprocess.run(
            [str(AIRFLOW_VENV / "bin" / "airflow"), *args],
            env=env,
            cwd=self.env["AIRFLOW_HOME"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def json(self, *args: str) -> list[dict]:
        """The JSON a listing command prints (its last line; warnings may come first)."""
        result = self(*args, "--output", "json")
        assert result.returncode == 0, result.stderr[-3000:]
        return list(json.loads(result.stdout.strip().splitlines()[-1]))

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        listed = self.json("tasks", "states-for-dag-run", dag_id, run_id)
        return {t["task_id"]: t["state"] for t in listed}

    def ran_one_engine(self, dag_id: str, run_id: str, skipped: set[str]) -> bool:
        """Whether the nightly run succeeded on one engine: ``skipped`` (the other engine's
        tasks) were skipped, every other task succeeded."""
        states = self.task_states(dag_id, run_id)
        return {t for t, s in states.items() if s == "skipped"} == skipped and {
            s for t, s in states.items() if t not in skipped
        } == {"success"}

    def last_run_id(self, dag_id: str) -> str:
        runs = sorted(self.json("dags", "list-runs", dag_id), key=lambda r: r["run_after"])
        return str(runs[-1]["run_id"])


# The nightly DAG's tasks of each path: the arrow engine, or spark-submit.
ARROW_TASKS = {"score_arrow"}
SPARK_TASKS = {"spark_conf", "score"}


def migrated_db(folder: Path) -> Path:
    """A metadata DB migrated in ``folder`` by sourcing env.sh, as a user's first run does.

    Migrating takes a good part of a minute; each test module's home starts from a copy.
    """
    env = env_from_script({"SCORING_HOME": str(folder)})
    home = Path(env["AIRFLOW_HOME"])
    assert (home / MIGRATED_STAMP).is_file(), (home / "db-migrate.log").read_text()[-3000:]
    return home


def seed_db(home: Path, migrated: Path) -> Path:
    """A copy of ``migrated``'s DB as the metadata DB of data dir ``home``; its AIRFLOW_HOME."""
    airflow_home = home / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    for name in ("airflow.db", MIGRATED_STAMP):  # the stamp's time tells env.sh it is done
        shutil.copy2(migrated / name, airflow_home / name)
    return airflow_home


def airflow_in(home: Path, migrated: Path) -> Airflow:
    """Airflow with its home inside the data dir ``home``, its DB a copy of ``migrated``'s."""
    if not (AIRFLOW_VENV / "bin" / "airflow").is_file():
        pytest.fail(f"No Airflow at {AIRFLOW_VENV}: create it with `make airflow`.")
    airflow_home = seed_db(home, migrated)
    runner = Airflow(env_from_script({"SCORING_HOME": str(home)}))
    assert runner.env["AIRFLOW_HOME"] == str(airflow_home)
    assert not (airflow_home / "db-migrate.log").exists(), "env.sh migrated the copy again"
    return runner


def nightly_reference(
    spark: SparkSession, trained: TrainedModel, name: str, source: str, prefix: str, day: str
) -> dict[str, str]:
    """``name@champion`` registered from ``trained``, ``day`` scored as the drift reference.

    Returns:
        The nightly DAG's table Variables: ``source`` and the predictions and rejects
        tables under ``prefix``.
    """
    version = package(
        trained.model_file, name, trained.sample_file, spec_file=trained.contract_file
    ).version
    registry.promote(name, version)
    tables = {
        "nightly_source": source,
        "nightly_predictions": f"{prefix}/fraud_scores",
        "nightly_rejects": f"{prefix}/fraud_scores_rejects",
    }
    job = BatchJob(
        f"models:/{name}@champion",
        source,
        tables["nightly_predictions"],
        tables["nightly_rejects"],
        date=day,
    )
    run(spark, job)
    return tables
