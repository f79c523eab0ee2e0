"""``scoring batch submit`` without Spark: what it runs and where spark-submit's lines go."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from scoring.cli import app
from scoring.cli.batch import _submit
from typer.testing import CliRunner


def test_submit_puts_spark_submits_lines_on_stderr_and_the_summary_alone_on_stdout(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """spark-submit merges the job's stderr into its stdout: the summary is picked out."""
    summary = {"status": "ok", "rows_read": 3}
    job = (
        "import json, sys\n"
        "print('INFO scoring.batch.progress load_model 0.10 s: fraud v3', flush=True)\n"
        "print('26/12/03 11:17:44 WARN NativeCodeLoader: ...', file=sys.stderr, flush=True)\n"
        f"print({json.dumps(summary)!r})\n"
        "print('{not a summary')\n"
        "sys.exit(3)\n"
    )
    assert _submit([sys.executable, "-c", job]) == 3
    out, err = capfd.readouterr()
    assert out.splitlines() == [json.dumps(summary)]
    # spark-submit's own stderr passes straight through (so its order against the rest
    # is the pipes', not the job's).
    assert sorted(err.splitlines()) == [
        "26/12/03 11:17:44 WARN NativeCodeLoader: ...",
        "INFO scoring.batch.progress load_model 0.10 s: fraud v3",
        "{not a summary",
    ]


@pytest.mark.parametrize(("flags", "level"), [([], "WARN"), (["-v"], "INFO")])
def test_submit_passes_the_log_level_to_spark_and_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], level: str
) -> None:
    (tmp_path / "delta-spark_2.13-4.4.0.jar").write_bytes(b"")
    monkeypatch.setenv("SCORING_JARS_DIR", str(tmp_path))
    monkeypatch.setenv("SCORING_HOME", str(tmp_path / "home"))
    job = ["--model", "m", "--source", "s", "--target", "t"]
    result = CliRunner().invoke(app, [*flags, "batch", "submit", "--dry-run", "--", *job])
    assert result.exit_code == 0, result.output
    command = shlex.split(result.stdout)
    assert f"spark.log.level={level}" in command
    assert command[-len(job) - (1 if flags else 0) :] == job + (["--verbose"] if flags else [])
