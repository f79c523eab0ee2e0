"""The run report logged to a real MLflow store (SQLite, local artifacts), one run per output."""

from __future__ import annotations

import json
from pathlib import Path

from scoring.cli import app
from scoring.lifecycle.registry import tracking
from typer.testing import CliRunner

from tests.delta_tables import DAYS, write_output, write_source

runner = CliRunner()


def _report(tmp_path: Path, *extra: str) -> dict:
    result = runner.invoke(
        app,
        [
            "batch", "report",
            "--source", str(tmp_path / "transactions"),
            "--predictions", str(tmp_path / "scores"),
            "--date", DAYS[1],
            "--out-dir", str(tmp_path / "report"),
            "--experiment", "nightly_test",
            *extra,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_report_is_one_mlflow_run_per_output_with_metrics_and_files(
    scoring_home: Path, tmp_path: Path
) -> None:
    write_source(tmp_path / "transactions", {d: 400 for d in DAYS})
    write_output(tmp_path, DAYS[0], 396, 4, seed=1, run="night-1")
    write_output(tmp_path, DAYS[1], 392, 8, seed=2, run="night-2")
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"status": "ok", "run_id": "night-2", "seconds": 12.5}))

    first = _report(tmp_path, "--summary-file", str(summary))
    again = _report(tmp_path, "--summary-file", str(summary))
    assert first["mlflow_run_id"] == again["mlflow_run_id"]  # the same output, the same run

    mlc, experiment = tracking("nightly_test")
    runs = mlc.search_runs([experiment])
    assert [r.info.run_id for r in runs] == [first["mlflow_run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["scoring.date"] == DAYS[1]
    assert run.data.tags["scoring.batch_run_id"] == "night-2"
    assert run.data.tags["scoring.checks"] == "passed"
    metrics = run.data.metrics
    assert (metrics["source_rows"], metrics["predicted_rows"], metrics["rejected_rows"]) == (
        400,
        392,
        8,
    )
    assert metrics["rejects_ratio"] == 8 / 400
    assert 0 <= metrics["psi"] < 0.2 and metrics["reference_rows"] == 396
    assert metrics["batch_seconds"] == 12.5
    files = {a.path for a in mlc.list_artifacts(run.info.run_id, "report")}
    assert files == {
        "report/report.json",
        "report/score_distribution.png",
        "report/batch_summary.json",
    }
    assert (scoring_home / "mlartifacts").is_dir()  # beside the registry's artifacts


def test_failed_checks_are_reported_as_a_failed_run_without_failing_the_report(
    scoring_home: Path, tmp_path: Path
) -> None:
    write_source(tmp_path / "transactions", {d: 400 for d in DAYS})
    write_output(tmp_path, DAYS[1], 300, 100, run="night-2")
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"status": "ok", "run_id": "another-run"}))
    result = _report(tmp_path, "--summary-file", str(summary), "--max-rejects-ratio", "0.1")
    assert result["status"] == "failed"
    mlc, _ = tracking("nightly_test")
    run = mlc.get_run(result["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["scoring.checks"] == "failed"
    assert run.data.metrics["rejects_ratio"] == 0.25
    # A summary from another run of the date is not passed off as this output's.
    files = {a.path for a in mlc.list_artifacts(run.info.run_id, "report")}
    assert "report/batch_summary.json" not in files
