"""The batch job as production runs it: spark-submit, on local[2] and on a standalone cluster.

The standalone master and worker are started by the project's own script on loopback.
``scoring batch submit`` runs it: stdout is the summary alone, stderr the job's phases
without Spark's INFO lines.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from scoring.lifecycle.loading import load_artifact
from scoring.settings import PROJECT_ROOT

from tests.integration.conftest import DAYS, ROWS_PER_DAY, job_args, standalone_cluster
from tests.unit.batch.test_progress import PHASES, assert_counts_match, phases_shown

SCORE = PROJECT_ROOT / "jobs" / "batch" / "score.py"
SCORING = str(Path(sys.executable).parent / "scoring")
# A line of Spark's own log at INFO (its log4j2 pattern: yy/MM/dd HH:mm:ss LEVEL).
SPARK_INFO = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d INFO ", re.M)


def _submit(
    master: str, artifact_dir: Path, source: str, target: Path, env: dict[str, str]
) -> dict:
    """``scoring batch submit`` of one date: its summary, once its output is checked."""
    job = job_args(artifact_dir, source, target, DAYS[0])
    result = subprocess.run(
        [SCORING, "batch", "submit", "--master", master, "--", *job],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    [line] = result.stdout.splitlines()
    summary = json.loads(line)
    assert list(phases_shown(result.stderr)) == ["start_spark", *PHASES]
    assert list(summary["timings"]) == PHASES
    assert_counts_match(result.stderr, summary)
    assert not SPARK_INFO.findall(result.stderr), result.stderr[-4000:]
    return summary


def _assert_scored(summary: dict, artifact_dir: Path, source: str, target: Path) -> None:
    """The summary's counts, and the table's rows: every valid source row of the day, its
    score the artifact's own, with the version and run that made it."""
    ds = dt.date.fromisoformat(DAYS[0])
    day = DeltaTable(source).to_pyarrow_table(filters=[("ds", "=", ds)])
    direct = load_artifact(str(artifact_dir)).scorer().score(day)
    valid = pa.array(direct.valid)
    expected = dict(
        zip(
            day.column("transaction_id").filter(valid).to_pylist(),
            direct.score.filter(valid).to_pylist(),
            strict=True,
        )
    )
    assert summary["status"] == "ok" and summary["rows_read"] == ROWS_PER_DAY == day.num_rows
    assert summary["rows_scored"] == len(expected) > 0
    assert summary["rows_rejected"] == ROWS_PER_DAY - len(expected)
    written = DeltaTable(str(target)).to_pyarrow_table()
    scores = dict(
        zip(written["transaction_id"].to_pylist(), written["score"].to_pylist(), strict=True)
    )
    assert scores == expected
    assert set(written["run_id"].to_pylist()) == {summary["run_id"]}
    assert set(written["source_version"].to_pylist()) == {summary["source_version"]}
    assert np.unique(written["ds"].to_numpy().astype(str)).tolist() == [DAYS[0]]


@pytest.fixture
def submit_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SCORING_HOME": str(tmp_path / "home"), "PYSPARK_PYTHON": sys.executable}


def test_spark_submit_local(
    artifact_dir: Path, source_table: str, lake: Path, submit_env: dict[str, str]
) -> None:
    summary = _submit("local[2]", artifact_dir, source_table, lake / "scores", submit_env)
    _assert_scored(summary, artifact_dir, source_table, lake / "scores")


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
    _assert_scored(summary, artifact_dir, source_table, lake / "scores")
