"""Whether a worker's micro-batches commit: its ``degraded`` state and its stall limit.

While batches fail to commit (a broker out of reach, output the cluster refuses), the
worker is degraded: ``/health`` says why and since when, the ``scoring_stream_degraded``
gauge is 1. Past the stall limit it gives up rather than retry for ever (exit 4), so a
supervisor restarts it or someone looks. A commit that runs long without failing yet is
reported too.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge

from scoring.errors import StreamError
from scoring.masking import masked
from scoring.stream.delivery import Sending

__all__ = ["Progress"]


class Progress:
    """The commits of one worker. ``max_stall_s``: how long batches may fail before it gives up.

    ``slow_s``: a commit running longer than this is reported before it fails.
    """

    def __init__(self, max_stall_s: float, slow_s: float, degraded: Gauge, aborts: Counter) -> None:
        self.max_stall_s, self.slow_s = max_stall_s, slow_s
        self._degraded, self._aborts = degraded, aborts
        # Since when batches fail (the failing batch's hand-over: the last moment the
        # worker made progress), and the last failure.
        self.failing_since: float | None = None
        self._failure: str | None = None

    def failed(self, sending: Sending, failure: BaseException) -> float:
        """A batch failed to commit; returns when to give up (monotonic).

        Raises:
            StreamError: batches have failed for longer than the stall limit.
        """
        if self.failing_since is None:
            self.failing_since = sending.sent
        self._failure = str(failure)
        self._aborts.inc()
        self._degraded.set(1)
        stalled = time.monotonic() - self.failing_since
        if stalled > self.max_stall_s:
            raise StreamError(
                f"no micro-batch committed for {stalled:.0f} s (limit {self.max_stall_s:.0f} s, "
                f"--max-stall-seconds); the last failure: {failure}"
            ) from failure
        return self.failing_since + self.max_stall_s

    def committed(self) -> float | None:
        """A batch committed; returns for how long they had failed before, if they had."""
        if self.failing_since is None:
            return None
        failed_for = time.monotonic() - self.failing_since
        self.failing_since = self._failure = None
        self._degraded.set(0)
        return failed_for

    def problem(self, sending: Sending | None) -> str | None:
        """Why batches do not commit now, if they do not (``sending``: the one in flight)."""
        now = time.monotonic()
        if self.failing_since is not None:
            failing = now - self.failing_since
            return masked(f"micro-batches fail to commit for {failing:.0f} s: {self._failure}")
        if sending is not None and not sending.future.done() and now - sending.sent > self.slow_s:
            return f"a micro-batch's commit has run for {now - sending.sent:.0f} s"
        return None
