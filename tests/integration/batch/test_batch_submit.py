"""The batch job as production runs it: spark-submit, on local[2] and on a standalone cluster.

The standalone master and worker are started by the project's own script on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scoring.batch.spark import submit_command
from scoring.settings import PROJECT_ROOT

from tests.integration.conftest import DAYS, ROWS_PER_DAY, job_args, standalone_cluster

SCORE = PROJECT_ROOT / "jobs" / "batch" / "score.py"


def _submit(
    master: str, artifact_dir: Path, source: str, target: Path, env: dict[str, str]
) -> dict:
    job = job_args(artifact_dir, source, target, DAYS[0])
    result = subprocess.run(
        submit_command(SCORE, job, master=master, conf={"spark.executor.memory": "1g"}),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def submit_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SCORING_HOME": str(tmp_path / "home"), "PYSPARK_PYTHON": sys.executable}


def test_spark_submit_local(
    artifact_dir: Path, source_table: str, lake: Path, submit_env: dict[str, str]
) -> None:
    summary = _submit("local[2]", artifact_dir, source_table, lake / "scores", submit_env)
    assert summary["status"] == "ok" and summary["rows_read"] == ROWS_PER_DAY


def test_spark_submit_without_the_jars_says_how_to_launch(
    artifact_dir: Path, source_table: str, lake: Path, submit_env: dict[str, str]
) -> None:
    spark_submit = Path(sys.executable).parent / "spark-submit"
    result = subprocess.run(
        [
            str(spark_submit),
            "--master",
            "local[1]",
            str(SCORE),
            *job_args(artifact_dir, source_table, lake / "scores"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=submit_env,
    )
    assert result.returncode == 1
    # spark-submit merges the Python driver's stderr into its own stdout
    assert "scoring batch submit" in result.stdout + result.stderr
    assert not (lake / "scores").exists()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("spark-cluster")
    with standalone_cluster(state, {**os.environ, "PYTHON": sys.executable}) as master:
        yield master


@pytest.mark.cluster
def test_spark_submit_on_a_standalone_cluster(
    cluster: str, artifact_dir: Path, source_table: str, lake: Path, submit_env: dict[str, str]
) -> None:
    assert cluster.startswith("spark://127.0.0.1:")
    summary = _submit(cluster, artifact_dir, source_table, lake / "scores", submit_env)
    assert summary["status"] == "ok" and summary["rows_read"] == ROWS_PER_DAY
    assert summary["rows_scored"] > 0
