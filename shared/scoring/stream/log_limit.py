"""At most one log line per kind of trouble every so often, with a count of the rest.

While a broker is down, each client reports the refused connection every few
milliseconds, and a shadow model that cannot load fails on every batch. One line per
kind every ``every_s`` seconds says the same, and the count says how often it happened.
"""

from __future__ import annotations

import logging
import re
import threading
import time

__all__ = ["LogLimit", "LogLimitFilter", "held_back", "kind_of"]

# The parts of a client's report that change between repeats of the same failure:
# "(after 3ms in state CONNECT)", "(after 0ms in state CONNECT, 4 identical error(s)
# suppressed)".
_VARYING = re.compile(r" \(after \d+ms in state \w+(?:, \d+ identical error\(s\) suppressed)?\)")


def kind_of(text: str) -> str:
    """``text`` without the parts that differ between repeats of the same report."""
    return _VARYING.sub("", text)


def held_back(count: int, since: float) -> str:
    """The suffix a logged line carries for the ``count`` lines held back before it."""
    return f" (and {count} times in the last {since:.0f} s)" if count else ""


class LogLimit:
    """Lets each kind of line through once per ``every_s`` seconds; counts the others.

    Thread-safe: librdkafka reports from whichever thread serves the client.
    """

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}  # kind: when logged, held back since
        self._lock = threading.Lock()

    def admit(self, kind: str) -> tuple[bool, int, float]:
        """Whether to log a line of ``kind`` now; the lines held back and the seconds
        since the last one logged."""
        now = time.monotonic()
        with self._lock:
            logged_at, held = self._last.get(kind, (now - self.every_s, 0))
            if now - logged_at < self.every_s:
                self._last[kind] = (logged_at, held + 1)
                return False, held + 1, now - logged_at
            self._last[kind] = (now, 0)
        return True, held, now - logged_at


class LogLimitFilter(logging.Filter):
    """A logging filter that applies a :class:`LogLimit` to a logger's records (by their
    text, see :func:`kind_of`) and adds the count of the ones held back to the next."""

    def __init__(self, limit: LogLimit) -> None:
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        admitted, held, since = self.limit.admit(kind_of(text))
        if admitted and held:
            record.msg, record.args = text + held_back(held, since), ()
        return admitted
