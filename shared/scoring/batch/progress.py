"""What a batch run is doing while it runs: each phase on stderr, with its seconds.

The phases are the summary's ``timings`` (:class:`~scoring.batch.spec.Laps`): an engine
names each phase as it starts (:meth:`Progress.start`), reports rows while it scores
(:meth:`Progress.rows`) and ends it with a line of detail (:meth:`Progress.done`). Where
that goes is a display: on a terminal :class:`LiveDisplay` (a running line with the
elapsed time, rows and rows/s, under the finished phases, which stay on screen);
anywhere else (a scheduler, a pipe, spark-submit) :class:`LogLines`, one log line per
phase on the ``scoring.batch.progress`` logger, which the job shows at its default log
level (:func:`on_stderr`). Nothing here writes to stdout: its last line is the summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from scoring.batch import spec
from scoring.batch.spec import Laps
from scoring.masking import masked

if TYPE_CHECKING:
    from scoring.batch.spec import BatchJob
    from scoring.model.artifact import Artifact

__all__ = [
    "LOGGER",
    "Display",
    "LiveDisplay",
    "LogLines",
    "Progress",
    "model_line",
    "on_stderr",
    "plan_line",
    "rejects_line",
    "scored_line",
]

LOGGER = "scoring.batch.progress"
log = logging.getLogger(LOGGER)


class Display(Protocol):
    """Where a run's progress is shown."""

    # Seconds between two reports of the rows done in a phase.
    rows_every: float

    def started(self, phase: str) -> None: ...

    def rows(self, phase: str, rows: int, seconds: float) -> None: ...

    def finished(self, phase: str, seconds: float, detail: str, ok: bool = True) -> None: ...

    def note(self, text: str) -> None: ...


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:.0f} rows/s" if seconds > 0 else "- rows/s"


class LogLines:
    """One log line per finished phase, and the rows done every few seconds while scoring.

    For logs read later (a scheduler's, a pipe): a line only when there is news.
    """

    rows_every = 5.0

    def started(self, phase: str) -> None:
        pass

    def rows(self, phase: str, rows: int, seconds: float) -> None:
        log.info("%s: %s rows so far, %s, %.1f s", phase, rows, _rate(rows, seconds), seconds)

    def finished(self, phase: str, seconds: float, detail: str, ok: bool = True) -> None:
        if ok:
            log.info("%s %.2f s%s", phase, seconds, f": {detail}" if detail else "")
        else:
            log.warning("%s failed after %.2f s: %s", phase, seconds, detail)

    def note(self, text: str) -> None:
        log.info("%s", text)


class LiveDisplay:
    """On a terminal: finished phases as lines that stay, the running one below them.

    The running line (spinner, phase, elapsed seconds, rows and rows/s) is redrawn a few
    times a second and removed at the end, so the screen keeps one line per phase.
    """

    rows_every = 0.0

    def __init__(self, console: Console) -> None:
        self.console = console
        self._phase: str | None = None
        self._since = 0.0
        self._rows: int | None = None
        self._spinner = Spinner("dots")
        self._live = Live(
            self,
            console=console,
            transient=True,
            refresh_per_second=8,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __rich__(self) -> Spinner | Text:
        if self._phase is None:
            return Text("")
        self._spinner.update(text=Text(running_line(self._phase, self._since, self._rows)))
        return self._spinner

    def __enter__(self) -> LiveDisplay:
        self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is not None and self._phase is not None:
            seconds = time.monotonic() - self._since
            self.console.print(finished_line(self._phase, seconds, "failed", ok=False))
        self._live.stop()

    def started(self, phase: str) -> None:
        self._phase, self._since, self._rows = phase, time.monotonic(), None

    def rows(self, phase: str, rows: int, seconds: float) -> None:
        self._rows = rows

    def finished(self, phase: str, seconds: float, detail: str, ok: bool = True) -> None:
        self._phase = None
        self.console.print(finished_line(phase, seconds, detail, ok), soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(Text(masked(text), style="dim"), soft_wrap=True)


def running_line(phase: str, since: float, rows: int | None) -> str:
    """The live display's running line: phase, elapsed seconds, rows and rows/s so far."""
    seconds = time.monotonic() - since
    line = f"{phase:<30} {seconds:7.1f} s"
    if rows is not None:
        line += f"  {rows} rows, {_rate(rows, seconds)}"
    return line


def finished_line(phase: str, seconds: float, detail: str, ok: bool = True) -> Text:
    """A finished phase as the live display keeps it: mark, phase, seconds, detail."""
    mark = Text("✓ ", style="green") if ok else Text("✗ ", style="bold red")
    return Text.assemble(mark, f"{phase:<28} {seconds:7.2f} s  ", masked(detail))


class Progress:
    """The phases of one run: their seconds (the summary's ``timings``) and their display.

    Phases follow each other: a phase's seconds run from the end of the one before (as
    :class:`~scoring.batch.spec.Laps` counts them), so the timings add up to the run.
    """

    def __init__(self, display: Display | None = None) -> None:
        self.started = time.monotonic()
        self.display: Display = display or LogLines()
        self._laps = Laps(self.started)
        self._phase = ""
        self._phase_started = self._rows_shown = self.started
        self._rows = 0

    @property
    def timings(self) -> dict[str, float]:
        return self._laps.timings

    def start(self, phase: str) -> None:
        """``phase`` is now running."""
        self._phase = phase
        self._phase_started = self._rows_shown = time.monotonic()
        self._rows = 0
        self.display.started(phase)

    def rows(self, rows: int) -> None:
        """``rows`` are done in the running phase: shown when they changed, at most every
        ``rows_every`` seconds."""
        now = time.monotonic()
        if rows != self._rows and now - self._rows_shown >= self.display.rows_every:
            self._rows, self._rows_shown = rows, now
            self.display.rows(self._phase, rows, now - self._phase_started)

    def done(self, detail: str = "") -> None:
        """The running phase is over: its seconds are recorded, and shown with ``detail``."""
        self._laps(self._phase)
        self.display.finished(self._phase, self.timings[self._phase], detail)

    def failed(self, detail: str) -> None:
        """The running phase failed and the run goes on (a shadow's): shown, not timed."""
        seconds = time.monotonic() - self._phase_started
        self.display.finished(self._phase, seconds, detail, ok=False)

    def shadow(
        self, job: BatchJob, score: Callable[[Artifact, tuple[str, str]], dict[bool, int]]
    ) -> dict[str, Any] | None:
        """:func:`scoring.batch.spec.shadow` as the run's ``shadow_*`` phases (loading the
        challenger is part of ``shadow_plan``); a failure is shown, never raised."""
        if not job.shadow:
            return None
        self.start("shadow_plan")
        shadow = spec.shadow(job, score)
        if shadow["status"] == "failed":
            self.failed(f"the champion's output stands; {shadow['error']}")
        return shadow


def model_line(artifact: Artifact) -> str:
    """The model as progress lines name it: NAME vVERSION, or where it was loaded from."""
    if artifact.name is None:
        return artifact.source
    return f"{artifact.name} v{artifact.version}" if artifact.version else artifact.name


def plan_line(artifact: Artifact, how: str, job: BatchJob) -> str:
    """What the scoring phase will do: model, engine, and which rows."""
    rows = f"{job.date_column} = {job.date}" if job.date else "every row"
    return f"{model_line(artifact)} on {how}; {rows}"


def scored_line(counts: dict[bool, int], target: str) -> str:
    """The scoring phase's outcome, in the summary's numbers (rows_scored, rows_rejected,
    rows_read)."""
    read = counts[True] + counts[False]
    return f"scored {counts[True]} rows, refused {counts[False]} (read {read}); wrote {target}"


def rejects_line(counts: dict[bool, int], table: str) -> str:
    return f"wrote {counts[False]} refused rows to {table}"


@contextmanager
def on_stderr() -> Iterator[Display]:
    """The display for this process's stderr: live on a terminal, else log lines.

    The log lines are shown whatever the root logger's level (WARNING by default): the
    progress logger passes its INFO records to the root's handlers, which format and
    mask them like every other line.
    """
    console = Console(stderr=True)
    if console.is_terminal:
        with LiveDisplay(console) as live:
            yield live
        return
    log.setLevel(logging.INFO)
    yield LogLines()
