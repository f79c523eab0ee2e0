"""nightly_batch_scoring end to end with every table in a bucket and the registry on a server.

The real Airflow of `.venv-airflow` runs the DAG for one date; its Variables name
``s3://`` tables of the loopback S3 server and an MLflow tracking server with basic auth.
The worker's environment carries only the standard AWS and MLflow variables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from scoring.batch import lake
from scoring.batch.tables import for_spark
from scoring.dev.demo.train import TrainedModel
from scoring.dev.services import MlflowServer

from tests.integration.airflow.airflow_helpers import (
    SPARK_TASKS,
    Airflow,
    airflow_in,
    nightly_reference,
)
from tests.integration.conftest import DAYS

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
    airflow_s3: Airflow, variables: dict[str, str], on_server: MlflowServer
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
