"""The batch job on real Spark and Delta: scores, idempotence, schema checks, rejects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring.batch import job as job_module
from scoring.batch.job import BatchJob, run, table_version
from scoring.batch.main import main
from scoring.lifecycle.loading import load_artifact
from scoring.model.contract import Feature, validate

from tests.integration.conftest import DAYS, ROWS_PER_DAY, START, job_args, write_demo_table


def _job(artifact_dir: Path, source: str, lake: Path, date: str | None = DAYS[1]) -> BatchJob:
    return BatchJob(
        model=str(artifact_dir),
        source=source,
        target=str(lake / "scores"),
        rejects=str(lake / "rejects"),
        date=date,
    )


def _features(artifact_dir: Path) -> tuple[Feature, ...]:
    return load_artifact(str(artifact_dir)).contract.features


def _day(spark: SparkSession, table: str, day: str) -> pa.Table:
    return spark.read.format("delta").load(table).where(F.col("ds") == day).toArrow()


def test_scores_equal_direct_onnxruntime_scores_bit_for_bit(
    spark: SparkSession, source_table: str, artifact_dir: Path, lake: Path
) -> None:
    summary = run(spark, _job(artifact_dir, source_table, lake))
    source = _day(spark, source_table, DAYS[1]).sort_by("transaction_id")
    direct = load_artifact(str(artifact_dir)).scorer().score(source)
    scored = _day(spark, summary["target"], DAYS[1]).sort_by("transaction_id")
    valid = pa.array(direct.valid)
    assert (
        scored["transaction_id"].to_pylist() == source.filter(valid)["transaction_id"].to_pylist()
    )
    assert np.array_equal(scored["score"].to_numpy(), direct.score.filter(valid).to_numpy())
    assert scored["label"].to_pylist() == direct.label.filter(valid).to_pylist()
    assert summary["rows_read"] == ROWS_PER_DAY
    assert summary["rows_scored"] + summary["rows_rejected"] == ROWS_PER_DAY


def test_rerunning_a_date_replaces_it_without_duplicates(
    spark: SparkSession, source_table: str, artifact_dir: Path, lake: Path
) -> None:
    job = _job(artifact_dir, source_table, lake)
    first = run(spark, job)
    other = run(spark, _job(artifact_dir, source_table, lake, DAYS[2]))
    before = table_version(spark, job.target)
    second = run(spark, BatchJob(**{**job.__dict__, "run_id": "rerun"}))
    scores = spark.read.format("delta").load(job.target)
    assert table_version(spark, job.target) == before + 1  # one atomic commit per run
    per_day = {r["ds"].isoformat(): r["count"] for r in scores.groupBy("ds").count().collect()}
    # The other date is untouched by the re-run: its count is the one its own run scored,
    # which is the source's rows of that date less the ones the contract refuses.
    refused = int(
        (~validate(_day(spark, source_table, DAYS[2]), _features(artifact_dir)).valid).sum()
    )
    assert other["rows_scored"] == ROWS_PER_DAY - refused
    assert per_day == {DAYS[1]: first["rows_scored"], DAYS[2]: other["rows_scored"]}
    assert scores.select("transaction_id").distinct().count() == scores.count()
    day = scores.where(F.col("ds") == DAYS[1])
    assert {r["run_id"] for r in day.select("run_id").distinct().collect()} == {"rerun"}
    rejects = spark.read.format("delta").load(job.rejects_table).where(F.col("ds") == DAYS[1])
    assert rejects.count() == second["rows_rejected"] == first["rows_rejected"]


def test_rejected_rows_land_in_rejects_with_reasons(
    spark: SparkSession, source_table: str, artifact_dir: Path, lake: Path
) -> None:
    summary = run(spark, _job(artifact_dir, source_table, lake))
    source = _day(spark, source_table, DAYS[1])
    checked = validate(source, load_artifact(str(artifact_dir)).contract.features)
    expected = {
        k: r
        for k, r, ok in zip(
            source["transaction_id"].to_pylist(), checked.reasons, checked.valid, strict=True
        )
        if not ok
    }
    rejects = spark.read.format("delta").load(summary["rejects"]).collect()
    assert len(expected) > 0
    assert {r["transaction_id"]: r["reason"] for r in rejects} == expected
    row = rejects[0]
    features = json.loads(row["features_json"])
    assert "amount" in features and row["model_version"] is None  # local artifact: no version


def test_lineage_columns(
    spark: SparkSession, source_table: str, artifact_dir: Path, lake: Path
) -> None:
    job = _job(artifact_dir, source_table, lake)
    summary = run(spark, job)
    rows = (
        spark.read.format("delta")
        .load(job.target)
        .select("model_name", "model_version", "source_version", "run_id", "scored_at")
        .distinct()
        .collect()
    )
    assert len(rows) == 1
    assert rows[0]["source_version"] == table_version(spark, source_table)
    assert rows[0]["run_id"] == job.run_id
    assert rows[0]["model_name"] == str(artifact_dir)
    assert rows[0]["scored_at"] is not None
    assert summary["source_version"] == rows[0]["source_version"]
    history = spark.sql(f"DESCRIBE HISTORY delta.`{job.target}` LIMIT 1").first()
    assert json.loads(history["userMetadata"])["run_id"] == job.run_id


def test_source_is_read_at_a_pinned_version(
    spark: SparkSession,
    artifact_dir: Path,
    lake: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit that lands after the job pinned its version is not scored."""
    source = str(tmp_path / "moving")
    write_demo_table(spark, source, days=1, rows_per_day=500, start=START)
    pinned = table_version(spark, source)
    late_keys = [f"late-{i}" for i in range(50)]

    def pin_then_commit(spark_: SparkSession, table: str) -> int:
        version = table_version(spark_, table)
        if table == source:  # another writer appends to the date while the job runs
            late = spark_.read.format("delta").load(source).limit(len(late_keys)).toArrow()
            late = late.set_column(
                late.schema.get_field_index("transaction_id"),
                "transaction_id",
                pa.array(late_keys, late.schema.field("transaction_id").type),
            )
            spark_.createDataFrame(late).write.format("delta").mode("append").save(source)
        return version

    monkeypatch.setattr(job_module, "table_version", pin_then_commit)
    summary = run(spark, _job(artifact_dir, source, lake, START.isoformat()))

    assert table_version(spark, source) == pinned + 1  # the late commit did land
    assert summary["source_version"] == pinned
    assert summary["rows_read"] == 500  # not 550: the rows at the pinned version only
    scored = spark.read.format("delta").load(summary["target"]).select("transaction_id")
    rejected = spark.read.format("delta").load(summary["rejects"]).select("transaction_id")
    keys = {r[0] for r in scored.union(rejected).collect()}
    assert len(keys) == 500 and not keys & set(late_keys)


@pytest.fixture
def broken_source(spark: SparkSession, source_table: str, lake: Path) -> str:
    path = str(lake / "broken")
    spark.read.format("delta").load(source_table).drop("amount").withColumn(
        "country", F.lit(7)
    ).write.format("delta").save(path)
    return path


@pytest.mark.parametrize(("engine", "int_type"), [("arrow", "int32"), ("python", "int")])
def test_schema_mismatch_exits_non_zero_and_writes_nothing(
    broken_source: str,
    artifact_dir: Path,
    lake: Path,
    capsys: pytest.CaptureFixture[str],
    engine: str,
    int_type: str,
) -> None:
    args = job_args(artifact_dir, broken_source, lake / "scores", DAYS[1])
    code = main([*args, "--engine", engine])
    out = capsys.readouterr()
    assert code == 3
    assert "missing column 'amount'" in out.err
    # Each engine names the column's type as its own schema does.
    assert f"column 'country' is {int_type}, expected string" in out.err
    assert json.loads(out.out.strip().splitlines()[-1])["status"] == "failed"
    assert not (lake / "scores").exists() and not (lake / "scores_rejects").exists()


def test_job_entry_point_prints_a_json_summary_last(
    source_table: str, artifact_dir: Path, lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(job_args(artifact_dir, source_table, lake / "scores", DAYS[0]))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["status"] == "ok"
    assert summary["rows_read"] == ROWS_PER_DAY and summary["rows_per_second"] > 0
    assert summary["rejects"] == str(lake / "scores") + "_rejects"


def test_missing_source_is_a_clear_error(
    artifact_dir: Path, lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(job_args(artifact_dir, str(lake / "nope"), lake / "scores"))
    assert code == 3 and "could not be read" in capsys.readouterr().err


def test_catalog_table_names_work_like_paths(
    spark: SparkSession, source_table: str, artifact_dir: Path
) -> None:
    spark.read.format("delta").load(source_table).write.format("delta").mode(
        "overwrite"
    ).saveAsTable("transactions_catalog")
    summary = run(
        spark,
        BatchJob(
            model=str(artifact_dir),
            source="transactions_catalog",
            target="fraud_scores_catalog",
            date=DAYS[2],
        ),
    )
    assert summary["source_version"] == table_version(spark, "transactions_catalog")
    assert spark.table("fraud_scores_catalog").count() == summary["rows_scored"] > 0
    assert spark.table("fraud_scores_catalog_rejects").count() == summary["rows_rejected"]


def test_summary_file_carries_the_outcome_for_a_scheduler(
    broken_source: str, artifact_dir: Path, lake: Path, tmp_path: Path
) -> None:
    summary = tmp_path / "reports" / "summary.json"
    args = job_args(artifact_dir, broken_source, lake / "scores", DAYS[1])
    assert main([*args, "--summary-file", str(summary)]) == 3
    written = json.loads(summary.read_text())
    assert written["status"] == "failed" and written["error"] == "SchemaMismatchError"
    assert "missing column 'amount'" in written["message"]
