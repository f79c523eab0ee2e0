"""At most one log line per kind of trouble every so often, with a count of the rest.

While a broker is down, each client reports the refused connection every few
milliseconds, and a shadow model that cannot load fails on every batch. One line per
kind every ``every_s`` seconds says the same, and the count says how often it happened.

The table of kinds is bounded: a report that embeds something new each time (an offset,
a transactional id) would otherwise add a kind per line for as long as the worker lives.
Kinds whose window has passed make room for new ones; when every one of ``max_kinds``
kinds is still in its window, further kinds share one entry, :data:`OTHER`, and are
logged once per window between them.

A known passing condition (:class:`TransientFilter`) is logged at INFO while it is new, and
at its own level only once it has lasted.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import OrderedDict

__all__ = ["OTHER", "LogLimit", "LogLimitFilter", "TransientFilter", "held_back", "kind_of"]

# The one entry that kinds beyond a full table share.
OTHER = "(other kinds)"

# The parts of a client's report that change between repeats of the same failure:
# "(after 3ms in state CONNECT)", "(after 0ms in state CONNECT, 4 identical error(s)
# suppressed)".
_VARYING = re.compile(r" \(after \d+ms in state \w+(?:, \d+ identical error\(s\) suppressed)?\)")


def kind_of(text: str) -> str:
    """``text`` without the parts that differ between repeats of the same report."""
    return _VARYING.sub("", text)


def held_back(count: int, since: float, entry: str | None = None) -> str:
    """The suffix a logged line carries for the ``count`` lines held back before it.

    ``entry``: what :meth:`LogLimit.admit_as` counted them under; :data:`OTHER`'s are
    lines of any kind, not repeats of this one.
    """
    if not count:
        return ""
    what = "lines of other kinds" if entry == OTHER else "times"
    return f" (and {count} {what} in the last {since:.0f} s)"


class LogLimit:
    """Lets each kind of line through once per ``every_s`` seconds; counts the others.

    At most ``max_kinds`` kinds are kept. The least recently seen goes first, once its
    window has passed: its next line would be let through anyway, so only the count of
    its lines held back is lost. A new kind that finds the table full of kinds still in
    their window is counted under :data:`OTHER`, one entry more, which lets one line of
    any such kind through per window.

    Thread-safe: librdkafka reports from whichever thread serves the client.
    """

    def __init__(self, every_s: float = 30.0, max_kinds: int = 256) -> None:
        if max_kinds < 1:
            raise ValueError(f"max_kinds must be at least 1, not {max_kinds}")
        self.every_s = every_s
        self.max_kinds = max_kinds
        # kind: (when logged, held back since), the least recently seen first.
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, kind: str) -> tuple[bool, int, float]:
        """Whether to log a line of ``kind`` now; the lines held back and the seconds
        since the last one logged."""
        admitted, held, since, _ = self.admit_as(kind)
        return admitted, held, since

    def admit_as(self, kind: str) -> tuple[bool, int, float, str]:
        """:meth:`admit`, and the entry the line counts under: ``kind`` or :data:`OTHER`."""
        now = time.monotonic()
        with self._lock:
            entry = kind if self._has_room(kind, now) else OTHER
            # Taken out and put back: the entry becomes the most recently seen.
            logged_at, held = self._last.pop(entry, (now - self.every_s, 0))
            if now - logged_at < self.every_s:
                self._last[entry] = (logged_at, held + 1)
                return False, held + 1, now - logged_at, entry
            self._last[entry] = (now, 0)
        return True, held, now - logged_at, entry

    def kinds(self) -> int:
        """How many entries the table holds: at most ``max_kinds``, plus :data:`OTHER`."""
        with self._lock:
            return len(self._last)

    def _has_room(self, kind: str, now: float) -> bool:
        """Whether ``kind`` has an entry of its own, made for it if a stale one can go."""
        last = self._last
        if kind in last:
            return True
        own = len(last) - (OTHER in last)
        while own >= self.max_kinds:
            oldest = next(k for k in last if k != OTHER)
            if now - last[oldest][0] < self.every_s:
                return False
            del last[oldest]
            own -= 1
        return True


class LogLimitFilter(logging.Filter):
    """A logging filter that applies a :class:`LogLimit` to a logger's records (by their
    text, see :func:`kind_of`) and adds the count of the ones held back to the next."""

    def __init__(self, limit: LogLimit) -> None:
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        admitted, held, since, entry = self.limit.admit_as(kind_of(text))
        if admitted and held:
            record.msg, record.args = text + held_back(held, since, entry), ()
        return admitted


class TransientFilter(logging.Filter):
    """Logs lines of a known passing condition at INFO until it has lasted ``persist_s``.

    A line above INFO whose text matches ``pattern`` is lowered to INFO (and dropped if the
    logger does not log INFO) unless the condition has been reported for ``persist_s``
    seconds or more: from then on it keeps its own level. A pause of more than
    ``persist_s`` seconds between two such lines ends the condition; the next line starts
    it anew.

    Add it before a :class:`LogLimitFilter` on the same logger: it must see the lines the
    limit holds back to know that the condition is still going on.
    """

    def __init__(self, pattern: re.Pattern[str], persist_s: float) -> None:
        super().__init__()
        self.pattern = pattern
        self.persist_s = persist_s
        self._started = self._seen = -math.inf
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO or not self.pattern.search(record.getMessage()):
            return True
        now = time.monotonic()
        with self._lock:
            if now - self._seen > self.persist_s:
                self._started = now
            self._seen = now
            lasted = now - self._started
        if lasted >= self.persist_s:
            return True
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)
