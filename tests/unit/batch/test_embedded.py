"""The embedded arrow engine on real Delta tables written by delta-rs (no JVM)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake
from scoring.batch import embedded, lake
from scoring.batch.spec import BatchJob, choose_engine
from scoring.dev.demo.data import DATE, KEY, generate_day
from scoring.errors import ConfigError, SchemaMismatchError
from scoring.lifecycle.loading import load_artifact

DAYS = [dt.date(2026, 11, 1), dt.date(2026, 11, 2)]
ROWS = 2500


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two days of demo transactions (a few refused rows each), partitioned by date."""
    path = tmp_path_factory.mktemp("lake") / "transactions"
    for seed, day in enumerate(DAYS):
        write_deltalake(
            path, generate_day(day, ROWS, seed=seed), partition_by=[DATE], mode="append"
        )
    return str(path)


def _job(artifact_dir: Path, source: str, lake_dir: Path, day: dt.date, **extra: str) -> BatchJob:
    return BatchJob(
        model=str(artifact_dir),
        source=source,
        target=str(lake_dir / "scores"),
        date=day.isoformat(),
        engine="arrow",
        **extra,  # type: ignore[arg-type]
    )


def _day(table: str, day: dt.date) -> pa.Table:
    data = DeltaTable(table).to_pyarrow_dataset()
    return data.to_table(filter=pc.field(DATE) == pa.scalar(day, pa.date32())).sort_by(KEY)


@pytest.mark.parametrize("batch_rows", [97, 833])
def test_scores_equal_the_scorer_bit_for_bit_across_many_threaded_batches(
    artifact_dir: Path,
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch_rows: int,
) -> None:
    """Small batches: many are in flight on the threads, and the output keeps every row.

    With 833 rows a batch, the date's last batch holds one row, which onnxruntime would
    compute by another kernel path: its score must still be the one it gets among others.
    """
    assert ROWS % 833 == 1
    monkeypatch.setattr(embedded, "BATCH_ROWS", batch_rows)
    job = _job(artifact_dir, source, tmp_path, DAYS[1])
    summary = embedded.run(job, threads=2)

    rows = _day(source, DAYS[1])
    direct = load_artifact(str(artifact_dir)).scorer().score(rows)
    valid = pa.array(direct.valid)
    scores = _day(job.target, DAYS[1])
    assert scores[KEY].to_pylist() == rows.filter(valid)[KEY].to_pylist()
    expected = direct.score.filter(valid).to_numpy().view(np.int64)
    assert np.array_equal(scores["score"].to_numpy().view(np.int64), expected)
    assert scores["label"].to_pylist() == direct.label.filter(valid).to_pylist()
    rejects = _day(job.rejects_table, DAYS[1])
    assert rejects[KEY].to_pylist() == rows.filter(pc.invert(valid))[KEY].to_pylist()
    assert rejects["reason"].to_pylist() == [r for r in direct.reason.to_pylist() if r]
    assert summary["rows_read"] == ROWS
    assert summary["rows_rejected"] == direct.rejected > 0
    assert summary["rows_scored"] == ROWS - direct.rejected
    assert summary["engine"] == "arrow"
    assert summary["source_version"] == DeltaTable(source).version()
    assert set(summary["timings"]) == {
        "load_model",
        "pin_source",
        "plan",
        "score_and_write_predictions",
        "write_rejects",
    }
    lineage = scores.select(["model_name", "source_version", "run_id"]).to_pylist()
    assert {tuple(r.values()) for r in lineage} == {
        (str(artifact_dir), summary["source_version"], job.run_id)
    }


def test_a_rerun_replaces_its_date_in_one_commit_and_leaves_the_other_alone(
    artifact_dir: Path, source: str, tmp_path: Path
) -> None:
    first = embedded.run(_job(artifact_dir, source, tmp_path, DAYS[0]))
    other = embedded.run(_job(artifact_dir, source, tmp_path, DAYS[1]))
    target = str(tmp_path / "scores")
    before = DeltaTable(target).version()
    rerun = embedded.run(_job(artifact_dir, source, tmp_path, DAYS[0], run_id="rerun"))

    assert DeltaTable(target).version() == before + 1
    scores = DeltaTable(target).to_pyarrow_table()
    per_day = scores.group_by(DATE).aggregate([(KEY, "count")]).to_pylist()
    assert {r[DATE]: r[f"{KEY}_count"] for r in per_day} == {
        DAYS[0]: rerun["rows_scored"],
        DAYS[1]: other["rows_scored"],
    }
    assert rerun["rows_scored"] == first["rows_scored"]
    assert len(pc.unique(scores[KEY])) == scores.num_rows
    assert set(_day(target, DAYS[0])["run_id"].to_pylist()) == {"rerun"}
    assert set(_day(target, DAYS[1])["run_id"].to_pylist()) == {other["run_id"]}
    rejects = _day(str(tmp_path / "scores_rejects"), DAYS[0])
    assert rejects.num_rows == rerun["rows_rejected"] == first["rows_rejected"]
    # Every commit records the run and the pinned source version, as the Spark engines do.
    metadata = DeltaTable(target).history(1)[0]["userMetadata"]
    assert '"run_id": "rerun"' in metadata and f'"source_version": {rerun["source_version"]}' in (
        metadata
    )


def test_a_date_without_rows_writes_empty_slices(
    artifact_dir: Path, source: str, tmp_path: Path
) -> None:
    summary = embedded.run(_job(artifact_dir, source, tmp_path, dt.date(2026, 12, 25)))
    assert (summary["rows_read"], summary["rows_scored"], summary["rows_rejected"]) == (0, 0, 0)
    assert lake.count_rows(str(tmp_path / "scores"), "2026-12-25") == 0


def test_a_source_that_does_not_fit_the_contract_writes_nothing(
    artifact_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "narrow"
    write_deltalake(path, generate_day(DAYS[0], 50).drop_columns(["amount"]), partition_by=[DATE])
    with pytest.raises(SchemaMismatchError, match="missing column 'amount'") as raised:
        embedded.run(_job(artifact_dir, str(path), tmp_path, DAYS[0]))
    assert raised.value.exit_code == 3
    assert not (tmp_path / "scores").exists()


def test_a_target_with_other_columns_is_refused_before_anything_is_written(
    artifact_dir: Path, source: str, tmp_path: Path
) -> None:
    target = tmp_path / "scores"
    write_deltalake(
        target,
        pa.table({KEY: ["x"], DATE: pa.array([DAYS[0]], pa.date32()), "score": ["high"]}),
        partition_by=[DATE],
    )
    with pytest.raises(ConfigError, match=r"other columns than this run writes: score \(string"):
        embedded.run(_job(artifact_dir, source, tmp_path, DAYS[0]))
    assert DeltaTable(target).version() == 0
    assert not (tmp_path / "scores_rejects").exists()


def test_a_catalog_table_needs_spark(artifact_dir: Path, source: str) -> None:
    job = BatchJob(model=str(artifact_dir), source=source, target="lake.scores", engine="arrow")
    with pytest.raises(ConfigError, match="only Spark's metastore resolves"):
        embedded.run(job)


@pytest.mark.parametrize(
    ("job", "master", "environ", "engine", "why"),
    [
        (BatchJob("m", "/lake/t", "/lake/s"), None, {}, "arrow", "one machine"),
        (BatchJob("m", "/lake/t", "/lake/s", engine="arrow"), "local[1]", {}, "arrow", "--engine"),
        (BatchJob("m", "/lake/t", "/lake/s"), "spark://h:7077", {}, "python", "Spark master"),
        (BatchJob("m", "/lake/t", "/t2"), None, {"PYSPARK_GATEWAY_PORT": "1"}, "python", "-sub"),
        (BatchJob("m", "db.t", "/lake/s"), None, {}, "python", "catalog table 'db.t'"),
    ],
)
def test_the_engine_is_the_one_named_else_the_default_of_where_the_job_runs(
    job: BatchJob, master: str | None, environ: dict[str, str], engine: str, why: str
) -> None:
    chosen, reason = choose_engine(job, master, environ)
    assert chosen == engine
    assert why in reason
