"""Running the project's Airflow (its own venv, SQLite) from tests, as users run it.

Also the state the nightly DAG starts from: a champion and a first day scored.
"""

from __future__ import annotations

import json
import os
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


def airflow_in(home: Path) -> Airflow:
    """Airflow with its home (and metadata DB, migrated) inside the data dir ``home``."""
    if not (AIRFLOW_VENV / "bin" / "airflow").is_file():
        pytest.fail(f"No Airflow at {AIRFLOW_VENV}: create it with `make airflow`.")
    runner = Airflow(env_from_script({"SCORING_HOME": str(home)}))
    assert runner.env["AIRFLOW_HOME"] == str(home / "airflow")
    migrated = runner("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
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
