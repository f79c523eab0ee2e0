"""Client reports and librdkafka's own lines are logged once per kind, then counted."""

from __future__ import annotations

import logging
import math
import time

import pytest
from confluent_kafka import KafkaError
from scoring.stream import clients, log_limit
from scoring.stream.log_limit import OTHER, LogLimit, LogLimitFilter


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake monotonic clock, and a table of reports of this test's own."""
    now = [1000.0]
    monkeypatch.setattr(log_limit.time, "monotonic", lambda: now[0])
    # Reports logged by earlier tests, on the real clock, must not count here.
    monkeypatch.setattr(clients._reports, "_last", {})
    monkeypatch.setattr(clients._coordinator_not_ready, "_seen", -math.inf)
    return now


def refused(after_ms: int) -> KafkaError:
    text = (
        "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused"
        f" (after {after_ms}ms in state CONNECT)"
    )
    return KafkaError(KafkaError._TRANSPORT, text)


def test_a_repeated_client_error_is_logged_once_then_counted(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="scoring.stream.clients"):
        for attempt in range(200):
            # The same failure, though librdkafka words each repeat a little differently.
            clients.log_error(refused(after_ms=attempt % 3))
            clock[0] += 0.05
        clients.log_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        clock[0] += 30
        clients.log_error(refused(after_ms=7))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "Connection refused" in lines[0] and "brokers are down" in lines[1]
    assert "(and 199 times in the last 40 s)" in lines[2]


def test_librdkafka_lines_are_limited_like_the_error_reports(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    def line(after_ms: int) -> None:
        # As confluent-kafka hands a librdkafka line to the client's logger.
        text = refused(after_ms).str()
        clients.librdkafka_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "w#consumer-1", text)

    with caplog.at_level(logging.INFO, logger="scoring.stream.librdkafka"):
        for attempt in range(50):
            line(after_ms=attempt)
            clock[0] += 0.1
        clock[0] += 30
        line(after_ms=2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("FAIL [w#consumer-1]") and "Connection refused" in lines[0]
    assert lines[1].endswith("(and 49 times in the last 35 s)")


def _coordinator_loading(error: str = "Coordinator load in progress") -> None:
    """The line librdkafka logs while a new coordinator loads its transaction log."""
    text = (
        "[thrd:main]: Failed to acquire transactional PID from broker TxnCoordinator/1: "
        f"Broker: {error}: retrying"
    )
    clients.librdkafka_log.log(logging.WARNING, "%s [%s] %s", "GETPID", "rdkafka#producer-2", text)


def test_a_coordinator_loading_is_info_until_it_has_lasted_30_s(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="scoring.stream.librdkafka"):
        for _ in range(50):  # retried for 35 s
            _coordinator_loading()
            clock[0] += 0.7
        clock[0] += 31  # loaded; later, another broker takes over
        _coordinator_loading("Not coordinator")
        other = "[thrd:main]: TxnCoordinator/1: Disconnected"
        clients.librdkafka_log.log(logging.WARNING, "%s [%s] %s", "FAIL", "w#producer-2", other)
    got = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in got] == ["INFO", "WARNING", "INFO", "WARNING"], got
    assert "Coordinator load in progress" in got[0][1]
    assert got[1][1].endswith("retrying (and 42 times in the last 30 s)")
    assert "Not coordinator" in got[2][1] and "Disconnected" in got[3][1]


def test_a_coordinator_loading_is_not_shown_where_info_is_not_logged(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="scoring.stream.librdkafka"):
        _coordinator_loading("Coordinator not available")
        clock[0] += 30
        _coordinator_loading()  # still not ready: it warns
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_a_real_client_logs_through_python_logging_not_stderr(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(clients._reports, "_last", {})
    # Nothing listens on port 1: librdkafka reports the refused connection over and over.
    consumer = clients.consumer(
        "127.0.0.1:1", required={"group.id": "log-test", "reconnect.backoff.ms": 10}
    )
    try:
        consumer.subscribe(["t"])
        with caplog.at_level(logging.INFO, logger="scoring.stream.librdkafka"):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                consumer.consume(10, timeout=0.2)  # client logs are served by consume()
    finally:
        consumer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "scoring.stream.librdkafka"]
    assert any("Connection refused" in line for line in lines), lines
    # One line per kind per client thread, however many attempts it made in 3 s.
    assert len(lines) == len(set(map(log_limit.kind_of, lines))), lines
    assert "Connection refused" not in capfd.readouterr().err


def test_each_kind_of_line_has_its_own_limit(clock: list[float]) -> None:
    limit = LogLimit(every_s=10)
    assert limit.admit("a") == (True, 0, 10)
    assert limit.admit("b")[0]
    clock[0] += 5
    assert limit.admit("a") == (False, 1, 5)
    clock[0] += 5
    assert limit.admit("a") == (True, 1, 10)


def test_the_table_of_kinds_is_bounded_and_kinds_beyond_it_share_one_entry(
    clock: list[float],
) -> None:
    limit = LogLimit(every_s=10, max_kinds=3)
    for kind in ("a", "b", "c"):
        assert limit.admit_as(kind) == (True, 0, 10, kind)
    # A flood of new kinds (each line its own text) while a, b and c are in their window:
    # one line of them is let through, the rest counted, and the table stays bounded.
    flood = [limit.admit_as(f"offset {i}") for i in range(10_000)]
    assert flood[0] == (True, 0, 10, OTHER)
    assert [admitted for admitted, *_ in flood].count(True) == 1
    assert flood[-1] == (False, 9999, 0, OTHER)
    assert limit.kinds() == 4  # a, b, c and OTHER
    # The kinds in the table keep their own limits meanwhile.
    assert limit.admit_as("a") == (False, 1, 0, "a")

    clock[0] += 10  # every window has passed: the least recently seen kinds make room
    assert limit.admit_as("d") == (True, 0, 10, "d")
    assert limit.admit_as("e") == (True, 0, 10, "e")
    assert limit.admit_as("a") == (True, 1, 10, "a")  # seen lately: kept, with its count
    assert limit.admit_as(OTHER)[:2] == (True, 9999)
    assert limit.kinds() == 4


def test_a_kind_still_in_its_window_is_not_pushed_out(clock: list[float]) -> None:
    limit = LogLimit(every_s=10, max_kinds=2)
    limit.admit("old")
    clock[0] += 9
    limit.admit("recent")
    assert limit.admit_as("new")[3] == OTHER  # "old" is within its window still
    clock[0] += 1
    assert limit.admit_as("newer")[3] == "newer"  # "old"'s window has passed: it went
    assert limit.admit_as("recent") == (False, 1, 1, "recent")


def test_a_line_let_through_for_other_kinds_says_what_it_counted(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test_log_limit.other")
    logger.addFilter(LogLimitFilter(LogLimit(every_s=10, max_kinds=1)))
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("first kind")
        for i in range(5):
            logger.info("failed at offset %d", i)
        clock[0] += 10
        logger.info("first kind")  # its own entry, in its window again
        logger.info("failed at offset %d", 99)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "first kind",
        "failed at offset 0",
        "first kind",
        "failed at offset 99 (and 4 lines of other kinds in the last 10 s)",
    ]
