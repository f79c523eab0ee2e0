"""The nightly_batch_scoring DAG in a real Airflow (its own venv, SQLite metadata DB).

Every Airflow command runs as a subprocess of `.venv-airflow` in the environment that
`infra/airflow/env.sh` sets up (the one users source), pointed at a fresh data dir: the
model registered in its MLflow store, the demo transactions of the integration session
as the source. `airflow dags test` then runs the whole DAG for one date: the sensor and
checks through the project CLI, the batch job on its default engine (arrow, a plain task)
or, when the Variable says so, through spark-submit on local[2].
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring.dev.demo.train import TrainedModel
from scoring.lifecycle import registry

from tests.integration.airflow.airflow_helpers import (
    AIRFLOW_VENV,
    ARROW_TASKS,
    SPARK_TASKS,
    Airflow,
    nightly_reference,
)
from tests.integration.conftest import DAYS, ROWS_PER_DAY

DAG_ID = "nightly_batch_scoring"
DAY = DAYS[1]


@pytest.fixture(scope="module")
def lake(
    home: Path, trained: TrainedModel, spark: SparkSession, source_table: str
) -> dict[str, str]:
    """fraud@champion in the module's registry; the first day already scored as reference."""
    return nightly_reference(spark, trained, "fraud", source_table, str(home / "lake"), DAYS[0])


def _day(spark: SparkSession, table: str, day: str = DAY) -> list[tuple]:
    rows = spark.read.format("delta").load(table).where(F.col("ds") == day)
    return sorted(
        tuple(r) for r in rows.select("transaction_id", "score", "label", "run_id").collect()
    )


def _dags_test(airflow: Airflow, lake: dict[str, str], day: str = DAY) -> tuple[str, int, str]:
    """`airflow dags test` for ``day``: the run id, the exit code and the whole output."""
    result = airflow("dags", "test", DAG_ID, day, **lake)
    return airflow.last_run_id(DAG_ID), result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def first_run(
    airflow: Airflow, lake: dict[str, str], spark: SparkSession
) -> tuple[str, list[tuple]]:
    run_id, code, output = _dags_test(airflow, lake)
    assert code == 0, output[-5000:]
    return run_id, _day(spark, lake["nightly_predictions"])


def test_dag_bag_has_no_import_errors_and_every_dag_is_tagged_and_retried(
    airflow: Airflow,
) -> None:
    script = """
import json, os, sys
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag

folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
before = set(sys.modules)
bag = BundleDagBag(folder, bundle_path=folder, bundle_name="dags-folder")
print(json.dumps({
    "import_errors": bag.import_errors,
    "dags": {
        dag.dag_id: {
            "tags": sorted(dag.tags),
            "doc_md": bool(dag.doc_md),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "retries": {t.task_id: t.retries for t in dag.tasks},
        }
        for dag in bag.dags.values()
    },
    "imported": sorted({m.split(".")[0] for m in set(sys.modules) - before}),
}))
"""
    result = subprocess.run(
        [str(AIRFLOW_VENV / "bin" / "python"), "-c", script],
        env=airflow.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    bag = json.loads(result.stdout.strip().splitlines()[-1])
    assert bag["import_errors"] == {}
    assert {DAG_ID, "model_rollout"} <= set(bag["dags"])
    for dag_id, dag in bag["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        assert dag["doc_md"], f"{dag_id} has no doc_md"
        assert all(r >= 2 for r in dag["retries"].values()), (dag_id, dag["retries"])
    assert bag["dags"][DAG_ID]["catchup"] is False
    # One run at a time: one writer per table (Airflow's default would be 16).
    assert bag["dags"][DAG_ID]["max_active_runs"] == 1
    # Parsing the DAG files imports no heavy library and not the project itself.
    heavy = {"pyspark", "pandas", "mlflow", "onnxruntime", "deltalake", "scoring", "jobs"}
    assert heavy.isdisjoint(bag["imported"]), sorted(heavy & set(bag["imported"]))


def test_a_date_is_scored_checked_and_reported(
    first_run: tuple[str, list[tuple]],
    airflow: Airflow,
    lake: dict[str, str],
    home: Path,
    spark: SparkSession,
) -> None:
    run_id, rows = first_run
    assert airflow.ran_one_engine(DAG_ID, run_id, skipped=SPARK_TASKS), airflow.task_states(
        DAG_ID, run_id
    )
    rejects = spark.read.format("delta").load(lake["nightly_rejects"]).where(F.col("ds") == DAY)
    assert len(rows) + rejects.count() == ROWS_PER_DAY and len(rows) > 0
    assert len({r[0] for r in rows}) == len(rows)
    assert {r[3] for r in rows} == {run_id}  # lineage: the Airflow run that wrote them
    # The report: an MLflow run with the check numbers, drift against the day before.
    mlc, experiment = registry.tracking("nightly_batch_scoring")
    found = mlc.search_runs(
        [experiment],
        filter_string=f"tags.`scoring.date` = '{DAY}' and tags.`scoring.batch_run_id` = '{run_id}'",
    )
    assert len(found) == 1
    report = found[0]
    assert report.info.status == "FINISHED" and report.data.tags["scoring.checks"] == "passed"
    assert report.data.metrics["predicted_rows"] == len(rows)
    assert report.data.metrics["rejected_rows"] == rejects.count()
    assert report.data.tags["scoring.reference"].startswith(DAYS[0])
    assert 0 <= report.data.metrics["psi"] < 0.2
    assert report.data.metrics["batch_seconds"] > 0  # the job's own summary came along
    artifacts = {a.path for a in mlc.list_artifacts(report.info.run_id, "report")}
    assert "report/score_distribution.png" in artifacts
    assert "report/batch_summary.json" in artifacts
    reports = home / "reports" / DAG_ID / DAY
    assert json.loads((reports / "report.json").read_text())["status"] == "passed"


def test_rerunning_a_date_leaves_the_same_rows(
    first_run: tuple[str, list[tuple]],
    airflow: Airflow,
    lake: dict[str, str],
    spark: SparkSession,
) -> None:
    first_id, first_rows = first_run
    second_id, code, output = _dags_test(airflow, lake)
    assert code == 0, output[-5000:]
    assert second_id != first_id
    second_rows = _day(spark, lake["nightly_predictions"])
    assert [r[:3] for r in second_rows] == [r[:3] for r in first_rows]
    assert {r[3] for r in second_rows} == {second_id}  # replaced, not appended
    assert _day(spark, lake["nightly_predictions"], DAYS[0])  # other dates untouched


def test_a_failed_check_fails_its_task_naming_the_check_and_numbers(
    first_run: tuple[str, list[tuple]], airflow: Airflow, lake: dict[str, str]
) -> None:
    result = airflow(
        "tasks", "test", DAG_ID, "check_output", DAY,
        **lake, nightly_max_rejects_ratio="0.0001",
    )  # fmt: skip
    output = result.stdout + result.stderr
    # `tasks test` exits 0 whatever the task did: the task's final state tells.
    assert "new_state=failed" in output  # failed outright: a data check is not retried
    assert "AirflowFailException" in output
    assert "Output checks failed for ds = 2026-11-02" in output
    assert "- rejects_ratio: " in output and "> max 0.01%" in output


def test_the_spark_engines_run_through_spark_submit(
    airflow: Airflow, lake: dict[str, str], spark: SparkSession, home: Path
) -> None:
    on_spark = {
        **lake,
        "nightly_engine": "python",
        "nightly_predictions": str(home / "lake" / "spark_scores"),
        "nightly_rejects": str(home / "lake" / "spark_scores_rejects"),
    }
    run_id, code, output = _dags_test(airflow, on_spark, DAYS[2])
    assert code == 0, output[-5000:]
    assert airflow.ran_one_engine(DAG_ID, run_id, skipped=ARROW_TASKS), airflow.task_states(
        DAG_ID, run_id
    )
    rows = _day(spark, on_spark["nightly_predictions"], DAYS[2])
    rejected = spark.read.format("delta").load(on_spark["nightly_rejects"]).count()
    assert len(rows) + rejected == ROWS_PER_DAY and len(rows) > 0
    assert {r[3] for r in rows} == {run_id}


@pytest.mark.parametrize(
    ("engine", "task", "exit_message"),
    [("arrow", "score_arrow", "exited with code 3"), ("python", "score", "Error code is: 3")],
)
def test_a_source_with_a_broken_schema_fails_at_the_batch_task(
    airflow: Airflow,
    lake: dict[str, str],
    spark: SparkSession,
    home: Path,
    engine: str,
    task: str,
    exit_message: str,
) -> None:
    broken = str(home / "lake" / f"broken_transactions_{engine}")
    spark.read.format("delta").load(lake["nightly_source"]).drop("amount").withColumn(
        "country", F.lit(7)
    ).write.format("delta").partitionBy("ds").save(broken)
    broken_lake = {
        "nightly_engine": engine,
        "nightly_source": broken,
        "nightly_predictions": str(home / "lake" / f"broken_scores_{engine}"),
        "nightly_rejects": str(home / "lake" / f"broken_scores_rejects_{engine}"),
    }
    run_id, code, output = _dags_test(airflow, broken_lake)
    assert code != 0
    assert exit_message in output  # the job's exit code for a schema problem
    assert "missing column 'amount'" in output
    assert "column 'country' is int" in output and "expected string" in output
    states = airflow.task_states(DAG_ID, run_id)
    assert states["wait_for_source"] == "success" and states[task] == "failed"
    assert states["check_output"] == states["report"] == "upstream_failed"
    assert not Path(broken_lake["nightly_predictions"]).exists()
