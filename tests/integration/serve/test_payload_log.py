"""The payload log against the session's real broker, read back with kafka-python.

What the served traffic writes must be what the stream worker writes (key, value bytes,
headers), once per prediction, whichever request thread offered it; and a cluster that
cannot be reached costs the requests nothing and shows in the counts.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from scoring.dev.demo.data import KEY
from scoring.dev.kafka_broker import Broker, SecureListeners, free_port
from scoring.serve.payload_log import PayloadLog
from scoring.stream.events import H_MODEL_NAME, H_MODEL_VERSION, iso_millis, prediction_encoder
from scoring.stream.kafka_config import KafkaClientConfig

from tests.integration.kafka_helpers import Topics, kafka_python_options, read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MODEL = ("fraud", "7")
HEADERS = [(H_MODEL_NAME, b"fraud"), (H_MODEL_VERSION, b"7")]
EVENT_MS = 1_790_000_000_000


def offer_from_threads(
    log: PayloadLog, threads: int, requests: int, rows: int
) -> dict[bytes, bytes]:
    """Requests of ``rows`` rows from ``threads`` threads at once; the expected records.

    Half the threads send integer keys, half string keys (a contract's key is either).
    """
    expected: dict[bytes, bytes] = {}
    lock = threading.Lock()
    start = threading.Barrier(threads)
    encode = prediction_encoder(KEY)

    def client(t: int) -> None:
        rng = random.Random(t)
        start.wait()
        for r in range(requests):
            keys: list[str | int] = [(t * requests + r) * rows + i for i in range(rows)]
            if t % 2:
                keys = [f"tx-{key}" for key in keys]
            scores = [rng.random() for _ in keys]
            labels = [None if s < 0.1 else int(s > 0.5) for s in scores]
            event_ms, scored_ms = EVENT_MS + r, EVENT_MS + r + 3
            log.offer(keys, scores, labels, MODEL, event_ms, scored_ms)
            times = (iso_millis(event_ms), iso_millis(scored_ms))
            with lock:
                for key, score, label in zip(keys, scores, labels, strict=True):
                    expected[str(key).encode()] = encode(key, score, label, MODEL, *times)

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    return expected


def test_every_prediction_reaches_the_topic_once_in_the_streams_shape(
    kafka: Broker, topics: Topics
) -> None:
    registry = CollectorRegistry()
    log = PayloadLog(topics.output, KafkaClientConfig(kafka.bootstrap), KEY, registry=registry)
    expected = offer_from_threads(log, threads=4, requests=40, rows=20)
    final = log.close(timeout=30)
    assert len(expected) == 3200
    assert (final["sent"], final["dropped"], final["failed"], final["queued"]) == (3200, 0, 0, 0)
    assert registry.get_sample_value("scoring_serve_log_records_total") == 3200

    records = read_all(kafka.bootstrap, topics.output, len(expected), timeout=30)
    assert len(records) == len(expected)
    assert len({r.key for r in records}) == len(records)  # no duplicates
    for record in records:
        assert record.value == expected[record.key]
        assert list(record.headers) == HEADERS
    one = json.loads(records[0].value)
    assert set(one) == {KEY, "score", "label", "model_name", "model_version"} | {
        "event_time",
        "scored_time",
    }
    assert one["event_time"].startswith("2026-09-21T")


def test_the_client_properties_reach_the_producer_over_sasl_ssl(
    secure_kafka: SecureListeners, topics: Topics
) -> None:
    config = KafkaClientConfig.from_file(secure_kafka.sasl_ssl_config)
    log = PayloadLog(topics.output, config, KEY, registry=CollectorRegistry())
    expected = offer_from_threads(log, threads=2, requests=5, rows=10)
    assert log.close(timeout=30)["sent"] == len(expected) == 100

    options = kafka_python_options(config)
    records = read_all(config.bootstrap, topics.output, 100, timeout=30, **options)
    assert {r.key: r.value for r in records} == expected and len(records) == 100


@pytest.mark.parametrize("fault", ["closed port", "wrong password"])
def test_an_unreachable_cluster_costs_the_requests_nothing_and_shows_in_health(
    fault: str,
    secure_kafka: SecureListeners,
    topics: Topics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = f"Wrong-Pa55word-{uuid.uuid4().hex}"
    if fault == "closed port":
        config = KafkaClientConfig(f"127.0.0.1:{free_port()}")
    else:
        good = KafkaClientConfig.from_file(secure_kafka.sasl_ssl_config)
        config = replace(good, properties={**good.properties, "sasl.password": secret})
    config = replace(config, properties={**config.properties, "message.timeout.ms": "1500"})
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO):
        log = PayloadLog(topics.output, config, KEY, registry=registry)
        started = time.monotonic()
        for r in range(50):
            keys = list(range(r * 10, r * 10 + 10))
            log.offer(keys, [0.5] * 10, [1] * 10, MODEL, EVENT_MS, EVENT_MS)
        offered_in = time.monotonic() - started
        deadline = time.monotonic() + 15
        while log.health()["failed"] < 500 and time.monotonic() < deadline:
            time.sleep(0.1)
        health: dict[str, Any] = log.health()
        closing = time.monotonic()
        final = log.close(timeout=5)
    assert offered_in < 0.5, f"500 rows took {offered_in:.2f} s to offer"
    assert (health["failed"], health["sent"], health["queued"], health["dropped"]) == (500, 0, 0, 0)
    assert health["last_error"]
    timed_out = {"reason": "msg_timed_out"}
    assert registry.get_sample_value("scoring_serve_log_failures_total", timed_out) == 500
    assert final["failed"] == 500 and time.monotonic() - closing < 2
    assert "not delivered" in caplog.text
    assert secret not in caplog.text and secret not in json.dumps(final)
