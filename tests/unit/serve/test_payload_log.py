"""The payload log counts every row it is offered and never blocks a request; no broker.

The client points at a closed port (127.0.0.1:1): librdkafka queues the records and they
fail there, which is what these tests count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from scoring.errors import StreamError
from scoring.serve import payload_log
from scoring.serve.payload_log import PayloadLog
from scoring.stream.kafka_config import KafkaClientConfig

UNREACHABLE = "127.0.0.1:1"
MODEL = ("fraud", "7")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def logs(registry: CollectorRegistry) -> Iterator[list[PayloadLog]]:
    """Payload logs made by a test, closed after it."""
    made: list[PayloadLog] = []
    yield made
    for log in made:
        log.close(timeout=0.1)


def new_log(
    made: list[PayloadLog],
    registry: CollectorRegistry,
    max_queue: int = 1000,
    props: dict[str, str] | None = None,
) -> PayloadLog:
    log = PayloadLog(
        "served", KafkaClientConfig(UNREACHABLE, props or {}), "id", max_queue, registry
    )
    made.append(log)
    return log


def offer(log: PayloadLog, keys: list[Any]) -> None:
    n = len(keys)
    log.offer(keys, [0.25] * n, [1] * n, MODEL, 1_700_000_000_000, 1_700_000_000_123)


def accounted(health: dict[str, Any]) -> int:
    return int(health["sent"] + health["dropped"] + health["failed"] + health["queued"])


def metric(registry: CollectorRegistry, name: str, reason: str | None = None) -> float | None:
    return registry.get_sample_value(name, {"reason": reason} if reason else {})


def test_rows_past_the_queue_bound_are_dropped_and_the_request_does_not_wait(
    logs: list[PayloadLog], registry: CollectorRegistry
) -> None:
    log = new_log(logs, registry, max_queue=5)
    started = time.monotonic()
    offer(log, list(range(8)))
    assert time.monotonic() - started < 0.5
    health = log.health()
    assert (health["queued"], health["dropped"], health["sent"]) == (5, 3, 0)
    assert metric(registry, "scoring_serve_log_dropped_total", "queue_full") == 3
    assert metric(registry, "scoring_serve_log_queue") == 5

    # Unconfirmed at the deadline: purged and counted as failed, none left unaccounted.
    final = log.close(timeout=0.2)
    assert (final["queued"], final["failed"], accounted(final)) == (0, 5, 8)
    assert metric(registry, "scoring_serve_log_failures_total", "purge_queue") == 5


def test_offers_from_many_threads_are_counted_exactly(
    logs: list[PayloadLog], registry: CollectorRegistry
) -> None:
    log = new_log(logs, registry, max_queue=1000)
    threads, requests, rows = 8, 25, 10
    start = threading.Barrier(threads)

    def client(t: int) -> None:
        start.wait()
        for r in range(requests):
            offer(log, [f"{t}-{r}-{i}" for i in range(rows)])

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    health = log.health()
    assert (health["queued"], health["dropped"]) == (1000, threads * requests * rows - 1000)
    assert accounted(health) == threads * requests * rows


def test_undelivered_rows_are_failures_with_the_error_in_health(
    logs: list[PayloadLog], registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    log = new_log(logs, registry, props={"message.timeout.ms": "200"})
    with caplog.at_level(logging.WARNING, logger=payload_log.__name__):
        offer(log, [1, 2, 3, 4])
        deadline = time.monotonic() + 4
        while log.health()["failed"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    health = log.health()
    assert (health["failed"], health["queued"], health["sent"]) == (4, 0, 0)
    # The latest report: the refused connection, or the records' timeout it caused.
    assert "Connection refused" in health["last_error"] or "timed out" in health["last_error"]
    assert "not delivered: Local: Message timed out" in caplog.text
    assert metric(registry, "scoring_serve_log_failures_total", "msg_timed_out") == 4
    assert metric(registry, "scoring_serve_log_queue") == 0


def test_a_closed_log_drops_and_counts_what_it_is_offered(
    logs: list[PayloadLog], registry: CollectorRegistry
) -> None:
    log = new_log(logs, registry)
    first = log.close(timeout=0.1)
    assert log.close(timeout=0.1) == first  # idempotent
    offer(log, ["a", "b", "c"])
    assert log.health()["dropped"] == 3
    assert metric(registry, "scoring_serve_log_dropped_total", "closed") == 3


def test_a_row_that_cannot_be_sent_is_dropped_and_its_error_masked(
    logs: list[PayloadLog], registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hunter2-pw"
    log = new_log(logs, registry, props={"sasl.password": secret})
    unencodable = type(secret, (), {})()  # the encoder's error quotes its type's name
    with caplog.at_level(logging.WARNING, logger=payload_log.__name__):
        offer(log, ["ok", unencodable])
        log.offer(["a", "b"], [0.5], [None, None], MODEL, 0, 0)  # a caller's bug: no raise
    health = log.health()
    assert (health["queued"], health["dropped"]) == (1, 3)
    assert metric(registry, "scoring_serve_log_dropped_total", "error") == 3
    assert "unequal lengths" in health["last_error"]
    offer(log, [unencodable])
    assert "***" in log.health()["last_error"]
    assert secret not in log.health()["last_error"]
    assert "***" in caplog.text and secret not in caplog.text


def test_the_delivery_guarantee_cannot_be_turned_off(registry: CollectorRegistry) -> None:
    with pytest.raises(StreamError, match="acks"):
        PayloadLog("served", KafkaClientConfig(UNREACHABLE, {"acks": "1"}), "id", 10, registry)
    assert list(registry.collect()) == []  # refused before any metric was registered


def test_the_producer_has_the_guarantee_the_bound_and_the_users_properties(
    logs: list[PayloadLog], registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real = payload_log.clients.producer

    def spy(bootstrap: str, kafka: Any, defaults: Any, required: Any) -> Any:
        seen.update(bootstrap=bootstrap, kafka=kafka, defaults=defaults, required=required)
        return real(bootstrap, kafka, defaults, required)

    monkeypatch.setattr(payload_log.clients, "producer", spy)
    new_log(logs, registry, max_queue=42, props={"linger.ms": "20"})
    assert seen["bootstrap"] == UNREACHABLE and seen["kafka"] == {"linger.ms": "20"}
    assert seen["required"] == {"enable.idempotence": True, "acks": "all"}
    assert seen["defaults"]["queue.buffering.max.messages"] == 42
