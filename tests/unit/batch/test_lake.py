"""Delta reads without Spark, and the commands a scheduler runs on them (no JVM).

The tables are written with delta-rs here; tests/integration/test_airflow_nightly.py runs
the same commands on tables written by the Spark job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from scoring.batch import lake
from scoring.batch.checks import Thresholds, run_checks
from scoring.batch.report import Tables, observe, write_report
from scoring.cli import app
from scoring.errors import ConfigError, SourceNotFoundError
from typer.testing import CliRunner

from tests.delta_tables import DAYS, write_output, write_source

runner = CliRunner()


@pytest.fixture
def tables(tmp_path: Path) -> Tables:
    source = write_source(tmp_path / "transactions", {d: 500 for d in DAYS})
    write_output(tmp_path, DAYS[0], 495, 5, seed=1)
    write_output(tmp_path, DAYS[1], 490, 10, seed=2)
    return Tables(source, str(tmp_path / "scores"))


def test_counts_and_reads_one_date(tables: Tables) -> None:
    assert lake.count_rows(tables.source, DAYS[1]) == 500
    assert lake.count_rows(tables.source, "2026-12-01") == 0
    read = lake.read_date(tables.predictions, DAYS[1], ["transaction_id", "score"])
    assert read.num_rows == 490 and read.column_names == ["transaction_id", "score"]
    assert set(read["transaction_id"].to_pylist()) == {f"{DAYS[1]}-{i}" for i in range(490)}


def test_earlier_dates_come_from_the_partitions_newest_first(tables: Tables) -> None:
    assert lake.earlier_dates(tables.predictions, "2026-11-05") == [DAYS[1], DAYS[0]]
    assert lake.earlier_dates(tables.predictions, DAYS[1]) == [DAYS[0]]
    assert lake.earlier_dates(tables.predictions, DAYS[0]) == []


def test_string_date_columns_work_too(tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_deltalake(path, pa.table({"k": ["a", "b", "c"], "day": [DAYS[0], DAYS[0], DAYS[1]]}))
    assert lake.count_rows(str(path), DAYS[0], "day") == 2
    assert lake.earlier_dates(str(path), DAYS[2], "day") == [DAYS[1], DAYS[0]]


def test_missing_tables_columns_and_catalog_names_are_clear_errors(tables: Tables) -> None:
    with pytest.raises(SourceNotFoundError, match="no Delta table"):
        lake.count_rows(tables.source + "_nope", DAYS[0])
    with pytest.raises(ConfigError, match="no date column 'day'"):
        lake.count_rows(tables.source, DAYS[0], "day")
    with pytest.raises(ConfigError, match="catalog table name"):
        lake.count_rows("transactions", DAYS[0])


def test_observe_reads_counts_lineage_and_the_previous_date_as_reference(tables: Tables) -> None:
    observed = observe(tables, DAYS[1])
    assert (observed.source_rows, observed.predicted_rows, observed.rejected_rows) == (
        500,
        490,
        10,
    )
    assert observed.source_versions == (2,) and observed.prediction_run_ids == ("run-1",)
    assert observed.model_version == "1" and observed.scores.size == 490
    assert observed.reference_scores is not None and observed.reference_scores.size == 495
    assert observed.reference == f"{DAYS[0]} (model version 1)"


def test_the_reference_is_scored_by_the_same_model_version(tmp_path: Path) -> None:
    source = write_source(tmp_path / "transactions", {d: 100 for d in DAYS})
    write_output(tmp_path, DAYS[0], 100, 0, version="1")
    write_output(tmp_path, DAYS[1], 100, 0, version="2")
    write_output(tmp_path, DAYS[2], 100, 0, version="2")
    tables = Tables(source, str(tmp_path / "scores"))
    assert observe(tables, DAYS[2]).reference == f"{DAYS[1]} (model version 2)"
    first_of_v2 = observe(tables, DAYS[1])
    assert first_of_v2.reference_scores is None
    assert "scored by model version 2" in str(first_of_v2.reference)
    configured = observe(tables, DAYS[1], reference_date=DAYS[0])
    assert configured.reference == f"{DAYS[0]} (configured)"


def test_report_files(tables: Tables, tmp_path: Path) -> None:
    thresholds = Thresholds()
    report = run_checks(observe(tables, DAYS[1]), thresholds)
    files = write_report(report, tables, thresholds, tmp_path / "report", {"seconds": 1.5})
    document = json.loads(files["report"].read_text())
    assert document["status"] == "passed"
    assert [c["name"] for c in document["checks"]] == ["reconcile", "rejects_ratio", "drift"]
    assert document["tables"]["rejects"] == tables.predictions + "_rejects"
    assert len(document["psi_bins"]["current_share"]) == 10
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(files["summary"].read_text()) == {"seconds": 1.5}


def _cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_has_data_exit_codes_drive_a_sensor(tables: Tables) -> None:
    code, out, _ = _cli("batch", "has-data", "--source", tables.source, "--date", DAYS[2])
    assert code == 0 and json.loads(out)["rows"] == 500
    code, _, err = _cli("batch", "has-data", "--source", tables.source, "--date", "2026-11-04")
    assert code == 4 and "has no rows for ds = 2026-11-04 yet" in err
    code, _, err = _cli("batch", "has-data", "--source", tables.source + "_x", "--date", DAYS[0])
    assert code == 3 and "no Delta table" in err
    code, _, err = _cli("batch", "has-data", "--source", tables.source, "--date", "yesterday")
    assert code == 2


def test_check_command_passes_then_fails_naming_the_check(tables: Tables) -> None:
    args = ["batch", "check", "--source", tables.source, "--predictions", tables.predictions]
    code, out, err = _cli(*args, "--date", DAYS[1])
    assert code == 0, err
    assert json.loads(out)["status"] == "passed" and "passed reconcile" in err
    code, out, err = _cli(*args, "--date", DAYS[1], "--max-rejects-ratio", "0.01")
    assert code == 5
    assert json.loads(out)["status"] == "failed"
    assert "Output checks failed for ds = 2026-11-02" in err
    assert "- rejects_ratio: 10 of 500 rows rejected (2.00%) > max 1.00%" in err


def test_source_rows_are_counted_at_the_version_the_run_read(tables: Tables) -> None:
    # Rows for day 2 that land after the run (a fourth commit) are not the run's to score.
    write_source(Path(tables.source), {DAYS[1]: 7})
    assert lake.count_rows(tables.source, DAYS[1]) == 507
    assert observe(tables, DAYS[1]).source_rows == 500
    assert run_checks(observe(tables, DAYS[1])).passed


def test_check_command_finds_unscored_rows(tables: Tables) -> None:
    # The run recorded source version 2, where day 3 has 500 rows; it wrote 400 of them.
    write_output(Path(tables.predictions).parent, DAYS[2], 400, 0, seed=3)
    code, _, err = _cli(
        "batch", "check", "--source", tables.source, "--predictions", tables.predictions,
        "--date", DAYS[2],
    )  # fmt: skip
    assert code == 5
    assert "reconcile: source has 500 rows for 2026-11-03 (version 2) but predictions 400" in err
