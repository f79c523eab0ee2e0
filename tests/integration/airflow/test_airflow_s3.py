"""nightly_batch_scoring end to end with every table in a bucket and the registry on a server.

The real Airflow of `.venv-airflow` runs the DAG for one date; its Variables name
``s3://`` tables of the loopback S3 server and an MLflow tracking server with basic auth.
The worker's environment carries only the standard AWS and MLflow variables, whose secrets
are then looked for in everything the run left: Airflow's output, task logs and metadata
DB, the reports, the bucket's objects and the MLflow run. The same commands refused by the
bucket print no secret either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from scoring.batch import lake
from scoring.batch.tables import for_spark
from scoring.dev.demo.train import TrainedModel
from scoring.dev.services import MlflowServer, S3Server

from tests.integration.airflow.airflow_helpers import (
    SPARK_TASKS,
    Airflow,
    airflow_in,
    nightly_reference,
)
from tests.integration.conftest import DAYS, job_args

DAG_ID = "nightly_batch_scoring"
PREFIX = "s3://lake/airflow"


@pytest.fixture(scope="module")
def on_server(home: Path, mlflow_server: MlflowServer) -> Iterator[MlflowServer]:
    """After `home` (which clears MLFLOW_TRACKING_URI): every command uses the server."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in mlflow_server.env().items():
            patch.setenv(key, value)
        yield mlflow_server


@pytest.fixture(scope="module")
def variables(
    on_server: MlflowServer, trained: TrainedModel, spark: SparkSession, source_table: str
) -> dict[str, str]:
    """The source in the bucket, fraud_s3@champion on the server, DAYS[0] scored as reference."""
    source = f"{PREFIX}/transactions"
    spark.read.format("delta").load(source_table).write.format("delta").partitionBy("ds").save(
        for_spark(source)
    )
    tables = nightly_reference(spark, trained, "fraud_s3", source, PREFIX, DAYS[0])
    return {**tables, "model": "models:/fraud_s3@champion", "tracking_uri": on_server.uri}


@pytest.fixture(scope="module")
def airflow_s3(home: Path, on_server: MlflowServer, airflow_db: Path) -> Airflow:
    return airflow_in(
        home, airflow_db
    )  # its environment: this one, with the AWS and MLflow variables


def test_nightly_dag_scores_a_date_with_every_table_in_the_bucket(
    airflow_s3: Airflow,
    variables: dict[str, str],
    on_server: MlflowServer,
    s3: S3Server,
    home: Path,
    tmp_path: Path,
) -> None:
    result = airflow_s3("dags", "test", DAG_ID, DAYS[1], **variables)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    run_id = airflow_s3.last_run_id(DAG_ID)
    # The default engine: arrow, delta-rs's object store straight to the bucket.
    assert airflow_s3.ran_one_engine(DAG_ID, run_id, skipped=SPARK_TASKS), airflow_s3.task_states(
        DAG_ID, run_id
    )
    scored = lake.read_date(variables["nightly_predictions"], DAYS[1], ["run_id", "model_version"])
    assert scored.num_rows > 0 and set(scored["run_id"].to_pylist()) == {run_id}
    rejected = lake.count_rows(variables["nightly_rejects"], DAYS[1])
    assert scored.num_rows + rejected == lake.count_rows(variables["nightly_source"], DAYS[1])
    reports = MlflowClient(on_server.uri).search_runs(
        [MlflowClient(on_server.uri).get_experiment_by_name("nightly_batch_scoring").experiment_id],
        filter_string=f"tags.`scoring.batch_run_id` = '{run_id}'",
    )
    assert len(reports) == 1
    assert reports[0].data.tags["scoring.predictions"] == variables["nightly_predictions"]

    # No secret of the worker's environment in anything the run recorded. `dags test` runs
    # the tasks in its own process, so their logs are its output; under the data dir are
    # the metadata DB (XComs), the reports and summaries, and the task log files and
    # spark-submit output wherever an executor writes them.
    secrets = worker_secrets(s3, on_server)
    task_logs = result.stdout + result.stderr
    for task in ("wait_for_source", "score_arrow", "check_output", "report"):
        assert f"starting task_id={task}" in task_logs  # its log, the CLI's output in it
    assert_no_secret("the task logs (`airflow dags test`'s output)", task_logs, secrets)
    recorded = [file for file in home.rglob("*") if file.is_file()]
    assert {"airflow.db", "report.json", "batch_summary.json"} <= {f.name for f in recorded}
    for file in recorded:
        assert_no_secret(str(file), file.read_bytes().decode(errors="replace"), secrets)
    bucket = boto3.client("s3", endpoint_url=s3.endpoint, region_name=s3.region)
    for listed in bucket.list_objects_v2(Bucket="lake", Prefix="airflow/").get("Contents", []):
        body = bucket.get_object(Bucket="lake", Key=listed["Key"])["Body"].read()
        assert_no_secret(listed["Key"], body.decode(errors="replace"), secrets)
    client = MlflowClient(on_server.uri)
    assert_no_secret("the MLflow run", json.dumps(reports[0].to_dictionary()), secrets)
    artifacts = Path(client.download_artifacts(reports[0].info.run_id, "", str(tmp_path)))
    assert list(artifacts.rglob("*.json"))
    for file in artifacts.rglob("*"):
        if file.is_file():
            assert_no_secret(str(file), file.read_bytes().decode(errors="replace"), secrets)


def test_commands_refused_by_the_bucket_print_no_secret(
    variables: dict[str, str], artifact_dir: Path, s3: S3Server, on_server: MlflowServer
) -> None:
    """A bucket that does not exist, with the worker's real keys: a table's own error (exit
    3), and delta-rs's raw error, which only the command line's last resort catches (exit 1,
    its traceback logged)."""
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}"
    secrets = worker_secrets(s3, on_server)
    sensed = scoring("batch", "has-data", "--source", f"{missing}/t", "--date", DAYS[1])
    assert sensed.returncode == 3, sensed.stderr[-3000:]
    assert "NoSuchBucket" in sensed.stderr
    target = f"{missing}/scores"
    run = scoring("batch", "run", *job_args(artifact_dir, variables["nightly_source"], target))
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" in run.stderr and "NoSuchBucket" in run.stderr
    assert run.stderr.rstrip().splitlines()[-1].endswith("(the traceback is in the log above)")
    for result in (sensed, run):
        assert_no_secret("stdout", result.stdout, secrets)
        assert_no_secret("stderr", result.stderr, secrets)


def worker_secrets(s3: S3Server, server: MlflowServer) -> dict[str, str]:
    """The secret values of the worker's environment, by variable, and the AWS key id."""
    assert server.password
    return {
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "MLFLOW_TRACKING_PASSWORD": server.password,
    }


def assert_no_secret(where: str, text: str, secrets: dict[str, str]) -> None:
    for name, value in secrets.items():
        assert value not in text, f"{name}'s value is in {where}"


def scoring(*args: str) -> subprocess.CompletedProcess[str]:
    """The project's command line, in this (the worker's) environment."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("scoring")), *args],
        env=dict(os.environ), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
