"""The embedded arrow engine beside Spark: tables either writes, the other continues.

Tables the arrow engine (delta-rs) wrote are read by Spark and continued by the Spark
engine, and the reverse; a Delta feature delta-rs cannot read or write safely is refused
before anything is written; the job runs on a bucket of a real S3 API server; and
``scoring batch run`` picks the arrow engine in a fresh process, with no JVM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from botocore.exceptions import ClientError
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring.batch.main import run_job
from scoring.batch.spec import BatchJob
from scoring.batch.tables import for_spark
from scoring.dev.services import S3Server
from scoring.errors import TableFeatureError

from tests.integration.conftest import DAYS, ROWS_PER_DAY, job_args

pytestmark = pytest.mark.integration

KEY = "transaction_id"
SCORING = str(Path(sys.executable).parent / "scoring")


def _job(model: Path, source: str, target: str, day: str, engine: str, **extra: str) -> BatchJob:
    return BatchJob(
        model=str(model),
        source=source,
        target=target,
        date=day,
        engine=engine,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


def _per_day(spark: SparkSession, table: str) -> dict[str, tuple[int, set[str]]]:
    """Rows and run ids per date, as Spark reads the table."""
    rows = spark.read.format("delta").load(for_spark(table)).toArrow().to_pylist()
    out: dict[str, tuple[int, set[str]]] = {}
    for row in rows:
        count, runs = out.get(row["ds"].isoformat(), (0, set()))
        out[row["ds"].isoformat()] = (count + 1, runs | {row["run_id"]})
    return out


@pytest.mark.parametrize(("first", "then"), [("arrow", "python"), ("python", "arrow")])
def test_one_engine_continues_the_tables_the_other_wrote(
    spark: SparkSession,
    source_table: str,
    artifact_dir: Path,
    tmp_path: Path,
    first: str,
    then: str,
) -> None:
    target = str(tmp_path / "scores")
    a = run_job(_job(artifact_dir, source_table, target, DAYS[0], first, run_id="a"), spark=spark)
    b = run_job(_job(artifact_dir, source_table, target, DAYS[1], then, run_id="b"), spark=spark)
    # The other engine re-runs the first date: replaced, never appended.
    again = run_job(
        _job(artifact_dir, source_table, target, DAYS[0], then, run_id="again"), spark=spark
    )
    assert again["rows_scored"] == a["rows_scored"]
    expected = {
        DAYS[0]: (again["rows_scored"], {"again"}),
        DAYS[1]: (b["rows_scored"], {"b"}),
    }
    assert _per_day(spark, target) == expected
    refused = _per_day(spark, f"{target}_rejects")
    assert refused == {
        DAYS[0]: (again["rows_rejected"], {"again"}),
        DAYS[1]: (b["rows_rejected"], {"b"}),
    }
    # delta-rs reads the same table the same way.
    scores = DeltaTable(target).to_pyarrow_table()
    assert scores.num_rows == again["rows_scored"] + b["rows_scored"]
    assert len(set(scores[KEY].to_pylist())) == scores.num_rows


def test_a_table_with_deletion_vectors_is_refused_before_anything_is_written(
    spark: SparkSession, source_table: str, artifact_dir: Path, tmp_path: Path
) -> None:
    """delta-rs cannot read deletion vectors: the arrow engine says so and names Spark."""
    with_dv = str(tmp_path / "with_dv")
    frame = spark.read.format("delta").load(source_table).where(F.col("ds") == DAYS[0])
    frame.write.format("delta").option("delta.enableDeletionVectors", "true").partitionBy(
        "ds"
    ).save(with_dv)
    spark.sql(f"DELETE FROM delta.`{with_dv}` WHERE hour = 3")

    target = str(tmp_path / "scores")
    with pytest.raises(TableFeatureError, match="deletionVectors") as refused:
        run_job(_job(artifact_dir, with_dv, target, DAYS[0], "arrow"))
    assert "--engine python" in str(refused.value)
    assert refused.value.exit_code == 3
    assert not Path(target).exists()

    # A target with deletion vectors: refused too, and left as it was.
    run_job(_job(artifact_dir, source_table, target, DAYS[0], "python"), spark=spark)
    spark.sql(
        f"ALTER TABLE delta.`{target}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)"
    )
    before = spark.sql(f"DESCRIBE HISTORY delta.`{target}` LIMIT 1").first()
    with pytest.raises(TableFeatureError, match="deletionVectors"):
        run_job(_job(artifact_dir, source_table, target, DAYS[1], "arrow"))
    assert spark.sql(f"DESCRIBE HISTORY delta.`{target}` LIMIT 1").first() == before
    assert not Path(f"{target}_rejects", "ds=" + DAYS[1]).exists()


def test_a_source_with_column_mapping_is_refused_not_read_as_nulls(
    spark: SparkSession, source_table: str, artifact_dir: Path, tmp_path: Path
) -> None:
    mapped = str(tmp_path / "mapped")
    frame = spark.read.format("delta").load(source_table).where(F.col("ds") == DAYS[0])
    frame.write.format("delta").option("delta.columnMapping.mode", "name").option(
        "delta.minReaderVersion", "2"
    ).option("delta.minWriterVersion", "5").partitionBy("ds").save(mapped)
    with pytest.raises(TableFeatureError, match="columnMapping"):
        run_job(_job(artifact_dir, mapped, str(tmp_path / "scores"), DAYS[0], "arrow"))
    assert not (tmp_path / "scores").exists()


def test_batch_run_scores_in_a_fresh_process_without_a_jvm_by_default(
    source_table: str, artifact_dir: Path, tmp_path: Path
) -> None:
    summary_file = tmp_path / "summary.json"
    args = job_args(artifact_dir, source_table, tmp_path / "scores", DAYS[2])
    done = subprocess.run(
        [SCORING, "batch", "run", *args, "--summary-file", str(summary_file)],
        capture_output=True,
        text=True,
        timeout=300,
        # No Java: a job that started a JVM would fail here.
        env={
            **os.environ,
            "JAVA_HOME": str(tmp_path / "no-java"),
            "PATH": str(Path(SCORING).parent),
        },
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()  # the summary alone: the progress is on stderr
    summary = json.loads(line)
    assert summary == json.loads(summary_file.read_text())
    assert summary["status"] == "ok"
    assert summary["engine"] == "arrow"
    assert "one machine" in summary["engine_reason"]
    assert summary["rows_read"] == ROWS_PER_DAY


def test_the_arrow_engine_on_a_bucket(
    spark: SparkSession, s3: S3Server, source_table: str, artifact_dir: Path, tmp_path: Path
) -> None:
    """A source and targets in a bucket: delta-rs's object store, the AWS_* variables only."""
    source = "s3://lake/arrow/transactions"
    spark.read.format("delta").load(source_table).where(F.col("ds") == DAYS[1]).write.format(
        "delta"
    ).partitionBy("ds").save(for_spark(source))
    target = "s3://lake/arrow/fraud_scores"
    args = [*job_args(artifact_dir, source, target, DAYS[1]), "--engine", "arrow"]
    runs = []
    for run_id in ("first", "rerun"):
        done = subprocess.run(
            [SCORING, "batch", "run", *args, "--run-id", run_id],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        for secret in (s3.env()["AWS_SECRET_ACCESS_KEY"], s3.env()["AWS_ACCESS_KEY_ID"]):
            assert secret not in done.stdout + done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[1]["rows_scored"] == runs[0]["rows_scored"] > 0
    assert _per_day(spark, target) == {DAYS[1]: (runs[1]["rows_scored"], {"rerun"})}
    local = run_job(_job(artifact_dir, source_table, str(tmp_path / "scores"), DAYS[1], "arrow"))
    on_disk = DeltaTable(str(tmp_path / "scores")).to_pyarrow_table().sort_by(KEY)
    in_bucket = spark.read.format("delta").load(for_spark(target)).toArrow().sort_by(KEY)
    assert local["rows_scored"] == in_bucket.num_rows
    assert on_disk["score"].equals(in_bucket["score"])
    assert pa.compute.all(pa.compute.equal(on_disk[KEY], in_bucket[KEY])).as_py()


def test_concurrent_arrow_writers_of_one_bucket_table_all_land(
    spark: SparkSession, s3: S3Server, source_table: str, artifact_dir: Path
) -> None:
    """delta-rs commits with S3's put-if-absent: writers racing for a version all land.

    The store must refuse a second put-if-absent of the same key (else the race is lost
    silently); once the table exists, three jobs write to it at the same time (a re-run of
    its first date and two new dates). Writers racing to create a table are another
    matter: all but one fail, and a retry then lands (ADR 0007).
    """
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name=s3.region)
    client.put_object(Bucket="lake", Key="race/probe", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket="lake", Key="race/probe", Body=b"2", IfNoneMatch="*")

    source = "s3://lake/race/transactions"
    spark.read.format("delta").load(source_table).write.format("delta").partitionBy("ds").save(
        for_spark(source)
    )
    target = "s3://lake/race/fraud_scores"

    def start(day: str) -> subprocess.Popen[str]:
        args = [*job_args(artifact_dir, source, target, day), "--engine", "arrow"]
        return subprocess.Popen(
            [SCORING, "batch", "run", *args, "--run-id", f"run-{day}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    created = start(DAYS[0])
    assert created.wait(timeout=300) == 0, created.stderr.read() if created.stderr else ""
    jobs = [start(day) for day in DAYS]
    summaries = {}
    for day, job in zip(DAYS, jobs, strict=True):
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
        summaries[day] = json.loads(out.strip().splitlines()[-1])
    assert _per_day(spark, target) == {
        day: (summaries[day]["rows_scored"], {f"run-{day}"}) for day in DAYS
    }
