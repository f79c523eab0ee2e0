"""Delta tables in a bucket of a real S3 API server (moto, SigV4 checked) on loopback.

The batch job writes through Spark's S3A; the sensor, checks and report read through
delta-rs; credentials come only from the AWS_* variables the ``s3`` fixture sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring.batch.job import BatchJob, run, table_version
from scoring.batch.main import main
from scoring.batch.tables import for_spark
from scoring.dev.services import S3Server

from tests.integration.conftest import DAYS, job_args

PREFIX = "s3://lake/nightly"
SCORING = str(Path(sys.executable).parent / "scoring")


def _day(spark: SparkSession, table: str, day: str = DAYS[1]) -> pa.Table:
    frame = spark.read.format("delta").load(for_spark(table)).where(F.col("ds") == day)
    return frame.toArrow().sort_by("transaction_id")


def _objects(s3: S3Server, prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name=s3.region)
    listed = client.list_objects_v2(Bucket="lake", Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket="lake", Key=o["Key"])["Body"].read() for o in listed}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCORING, *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def runs(
    spark: SparkSession,
    source_table: str,
    artifact_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The source copied into the bucket, then DAYS[0] and DAYS[1] scored there (DAYS[1]
    twice) and DAYS[1] scored from local disk."""
    source = f"{PREFIX}/transactions"
    spark.read.format("delta").load(source_table).write.format("delta").partitionBy("ds").save(
        for_spark(source)
    )
    local = tmp_path_factory.mktemp("local-lake")
    target = f"{PREFIX}/fraud_scores"
    on_local = run(
        spark, BatchJob(str(artifact_dir), source_table, str(local / "scores"), date=DAYS[1])
    )
    run(spark, BatchJob(str(artifact_dir), source, target, date=DAYS[0]))
    first = run(spark, BatchJob(str(artifact_dir), source, target, date=DAYS[1]))
    before = table_version(spark, target)
    again = run(spark, BatchJob(str(artifact_dir), source, target, date=DAYS[1], run_id="rerun"))
    return {
        "source": source,
        "target": target,
        "local": on_local,
        "first": first,
        "again": again,
        "version_before_rerun": before,
    }


def test_scores_in_the_bucket_equal_the_local_disk_run_bit_for_bit(
    spark: SparkSession, runs: dict[str, Any]
) -> None:
    in_bucket = _day(spark, runs["target"])
    on_disk = _day(spark, runs["local"]["target"])
    assert in_bucket.num_rows == on_disk.num_rows > 0
    assert in_bucket["transaction_id"].to_pylist() == on_disk["transaction_id"].to_pylist()
    assert np.array_equal(in_bucket["score"].to_numpy(), on_disk["score"].to_numpy())
    assert in_bucket["label"].to_pylist() == on_disk["label"].to_pylist()
    rejects = _day(spark, runs["again"]["rejects"])
    local_rejects = _day(spark, runs["local"]["rejects"])
    assert rejects.num_rows == runs["local"]["rows_rejected"] > 0
    assert rejects["reason"].to_pylist() == local_rejects["reason"].to_pylist()
    assert runs["first"]["target"] == "s3://lake/nightly/fraud_scores"  # one spelling recorded


def test_rerunning_a_date_in_the_bucket_replaces_it_in_one_commit(
    spark: SparkSession, runs: dict[str, Any]
) -> None:
    target = runs["target"]
    assert table_version(spark, target) == runs["version_before_rerun"] + 1
    day = _day(spark, target)
    assert set(day["run_id"].to_pylist()) == {"rerun"}
    assert day.num_rows == runs["first"]["rows_scored"] == runs["again"]["rows_scored"]
    assert len(set(day["transaction_id"].to_pylist())) == day.num_rows
    assert _day(spark, target, DAYS[0]).num_rows > 0  # the other date is untouched


def test_sensor_checks_and_report_read_the_bucket_and_no_secret_is_recorded(
    runs: dict[str, Any], s3: S3Server, tmp_path: Path, spark: SparkSession
) -> None:
    env = {**os.environ, "SCORING_HOME": str(tmp_path / "home")}
    tables = ["--source", runs["source"], "--predictions", runs["target"], "--date", DAYS[1]]
    sensed = _cli("batch", "has-data", "--source", runs["source"], "--date", DAYS[1], env=env)
    assert sensed.returncode == 0, sensed.stderr
    assert json.loads(sensed.stdout)["rows"] == runs["first"]["rows_read"]
    missing = _cli("batch", "has-data", "--source", runs["source"], "--date", "2027-01-01", env=env)
    assert missing.returncode == 4, missing.stderr
    checked = _cli("batch", "check", *tables, env=env)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout.strip().splitlines()[-1])["status"] == "passed"
    out_dir = tmp_path / "report"
    reported = _cli("batch", "report", *tables, "--out-dir", str(out_dir), env=env)
    assert reported.returncode == 0, reported.stderr
    run_id = json.loads(reported.stdout.strip().splitlines()[-1])["mlflow_run_id"]

    from mlflow.tracking import MlflowClient

    mlflow_run = MlflowClient(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}").get_run(run_id)
    assert mlflow_run.data.tags["scoring.source"] == runs["source"]
    history = spark.sql(f"DESCRIBE HISTORY delta.`{for_spark(runs['target'])}`").collect()
    recorded = [
        sensed.stdout + sensed.stderr,
        checked.stdout + checked.stderr,
        reported.stdout + reported.stderr,
        (out_dir / "report.json").read_text(),
        json.dumps(runs["first"]),
        json.dumps(mlflow_run.to_dictionary()),
        json.dumps([row["userMetadata"] for row in history]),
        *(body.decode(errors="replace") for body in _objects(s3, "nightly/").values()),
    ]
    for text in recorded:
        assert s3.secret_access_key not in text
        assert s3.access_key_id not in text


def test_a_wrong_secret_key_exits_3_with_a_clear_message_and_writes_nothing(
    runs: dict[str, Any], artifact_dir: Path, s3: S3Server
) -> None:
    wrong = "wrong" + s3.secret_access_key[5:]
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": wrong}
    target = f"{PREFIX}/refused_scores"
    result = _cli("batch", "run", *job_args(artifact_dir, runs["source"], target, DAYS[1]), env=env)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "refused access to s3://lake/nightly/transactions" in result.stderr
    assert "AWS_SECRET_ACCESS_KEY" in result.stderr  # says what to check
    assert wrong not in result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["error"] == "StorageAccessError"
    assert _objects(s3, "nightly/refused_scores") == {}
    sensed = _cli("batch", "has-data", "--source", runs["source"], "--date", DAYS[1], env=env)
    assert sensed.returncode == 3 and "refused access" in sensed.stderr


def test_a_relative_path_means_the_same_table_to_every_command(
    spark: SparkSession,
    source_table: str,
    artifact_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    spark.read.format("delta").load(source_table).write.format("delta").partitionBy("ds").save(
        str(tmp_path / "lake" / "transactions")
    )
    code = main(job_args(artifact_dir, "lake/transactions", "./lake/scores", DAYS[2]))
    assert code == 0
    assert spark.read.format("delta").load(str(tmp_path / "lake" / "scores")).count() > 0
    sensed = _cli("batch", "has-data", "--source", "lake/transactions", "--date", DAYS[2])
    assert sensed.returncode == 0, sensed.stderr
