"""What the batch job shows while it runs: one line per phase on stderr, the summary alone on
stdout, counts that equal the summary's; live on a terminal, log lines elsewhere."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deltalake import write_deltalake
from rich.console import Console
from scoring.batch import embedded
from scoring.batch.progress import LiveDisplay, LogLines, Progress, running_line
from scoring.batch.spec import BatchJob
from scoring.dev.demo.data import DATE, generate_day

DAY = dt.date(2026, 11, 1)
SCORING = str(Path(sys.executable).parent / "scoring")
PHASES = ["load_model", "pin_source", "plan", "score_and_write_predictions", "write_rejects"]
# A phase's line: its name, then its seconds (LogLines and LiveDisplay alike).
PHASE_LINE = re.compile(r"(?:INFO scoring\.batch\.progress |✓ )(\w+) +(\d+\.\d\d) s")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One day of demo transactions (a few refused rows), written by delta-rs."""
    path = tmp_path_factory.mktemp("lake") / "transactions"
    write_deltalake(path, generate_day(DAY, 3000), partition_by=[DATE])
    return str(path)


def _run_args(artifact_dir: Path, source: str, tmp_path: Path) -> list[str]:
    return [
        *("batch", "run", "--model", str(artifact_dir), "--source", source),
        *("--target", str(tmp_path / "scores"), "--date", DAY.isoformat()),
    ]


def phases_shown(stderr: str) -> dict[str, float]:
    """Each phase line's phase and seconds, failing on a phase shown twice."""
    shown: dict[str, float] = {}
    for phase, seconds in PHASE_LINE.findall(stderr):
        assert phase not in shown, f"{phase} shown twice:\n{stderr}"
        shown[phase] = float(seconds)
    return shown


def assert_counts_match(stderr: str, summary: dict) -> None:
    """The progress lines' counts are the summary's."""
    scored = re.search(r"scored (\d+) rows, refused (\d+) \(read (\d+)\)", stderr)
    assert scored, stderr
    numbers = [int(n) for n in scored.groups()]
    assert numbers == [summary["rows_scored"], summary["rows_rejected"], summary["rows_read"]]
    assert f"wrote {summary['rows_rejected']} refused rows to {summary['rejects']}" in stderr


def test_a_run_shows_each_phase_once_on_stderr_and_only_the_summary_on_stdout(
    artifact_dir: Path, source: str, tmp_path: Path
) -> None:
    """Not a terminal (a scheduler's log): one log line per phase at the default level."""
    done = subprocess.run(
        [SCORING, *_run_args(artifact_dir, source, tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    shown = phases_shown(done.stderr)
    assert list(shown) == PHASES == list(summary["timings"])
    for phase, seconds in shown.items():
        assert seconds == pytest.approx(summary["timings"][phase], abs=0.006)
    assert "engine arrow: one machine" in done.stderr
    assert_counts_match(done.stderr, summary)
    assert summary["rows_rejected"] > 0


def test_on_a_terminal_the_phases_stay_on_screen_and_stdout_is_still_the_summary(
    artifact_dir: Path, source: str, tmp_path: Path
) -> None:
    screen, terminal = pty.openpty()
    job = subprocess.Popen(
        [SCORING, *_run_args(artifact_dir, source, tmp_path)],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(screen, 65536)
        except OSError:  # the job closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(screen)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, shown.decode()
    summary = json.loads(out)  # one line, no display codes
    assert "\x1b[" in shown.decode()  # drawn for a terminal, not logged
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode())
    assert list(phases_shown(text)) == PHASES
    assert_counts_match(text, summary)


def test_log_lines_report_rows_every_few_seconds_not_every_batch(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    progress = Progress(LogLines())
    progress.start("score_and_write_predictions")
    with caplog.at_level(logging.INFO, "scoring.batch.progress"):
        for rows in range(1000, 21000, 1000):  # a batch every half second
            now[0] += 0.5
            progress.rows(rows)
        now[0] += 0.5
        progress.rows(20000)  # nothing new: no line
        progress.done("scored 20000 rows, refused 0 (read 20000); wrote t")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "score_and_write_predictions: 10000 rows so far, 2000 rows/s, 5.0 s",
        "score_and_write_predictions: 20000 rows so far, 2000 rows/s, 10.0 s",
        "score_and_write_predictions 10.50 s: scored 20000 rows, refused 0 (read 20000); wrote t",
    ]
    assert progress.timings == {"score_and_write_predictions": 10.5}


def test_the_live_display_keeps_finished_phases_and_marks_the_one_that_failed() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    with pytest.raises(RuntimeError), LiveDisplay(console) as display:
        progress = Progress(display)
        progress.start("load_model")
        progress.done("fraud v3")
        progress.start("pin_source")
        raise RuntimeError("the table is gone")
    text = screen.getvalue()
    assert re.search(r"✓ load_model +\d+\.\d\d s  fraud v3", text)
    assert re.search(r"✗ pin_source +\d+\.\d\d s  failed", text)
    assert list(progress.timings) == ["load_model"]


def test_the_running_line_says_rows_and_rate_once_rows_are_known() -> None:
    since = time.monotonic() - 4.05
    assert re.fullmatch(r"plan +4\.\d s", running_line("plan", since, None))
    line = running_line("score_and_write_predictions", since, 8000)
    assert re.fullmatch(r"score_and_write_predictions +4\.\d s  8000 rows, 19\d\d rows/s", line)


def test_a_shadow_shows_its_phases_and_a_failed_one_says_the_champion_stands(
    artifact_dir: Path, source: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def job(shadow: str) -> BatchJob:
        return BatchJob(
            model=str(artifact_dir),
            source=source,
            target=str(tmp_path / "scores"),
            date=DAY.isoformat(),
            engine="arrow",
            shadow=shadow,
            shadow_target=str(tmp_path / "shadow_scores"),
        )

    with caplog.at_level(logging.INFO, "scoring.batch.progress"):
        summary = embedded.run(job(str(artifact_dir)))
    lines = [r.getMessage() for r in caplog.records if "rows so far" not in r.getMessage()]
    shown = [line.split()[0] for line in lines]
    assert shown == [*PHASES, *(f"shadow_{p}" for p in PHASES[2:])] == list(summary["timings"])
    assert_counts_match("\n".join(lines), summary)

    caplog.clear()
    with caplog.at_level(logging.INFO, "scoring.batch.progress"):
        summary = embedded.run(job(str(tmp_path / "no-model")))
    last = caplog.records[-1]
    assert last.levelname == "WARNING" and summary["shadow"]["status"] == "failed"
    assert last.getMessage().startswith("shadow_plan failed after ")
    assert "the champion's output stands; ArtifactIncompleteError" in last.getMessage()
