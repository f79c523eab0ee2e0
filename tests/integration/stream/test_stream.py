"""The stream processor against a real Kafka broker: results, dead letters, metrics.

The processor runs as a child process (``python -m scoring.stream.main``), as in
production; expected scores come from the same artifact scored directly on the table.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from kafka import KafkaConsumer, TopicPartition
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring.batch.main import run_job
from scoring.batch.spec import ENGINES, BatchJob
from scoring.dev import kafka_broker
from scoring.dev.demo.data import KEY, generate_day
from scoring.dev.kafka_broker import Broker
from scoring.lifecycle.loading import load_artifact
from scoring.stream import clients
from scoring.stream.events import to_events

from tests.integration.conftest import DAYS
from tests.integration.kafka_helpers import (
    PARTITIONS,
    ProcessorProcess,
    Topics,
    headers,
    outputs_by_key,
    produce,
    read_all,
)

pytestmark = pytest.mark.integration


def expected_scores(model: Path | str, table: pa.Table) -> tuple[dict[bytes, float], set[bytes]]:
    """Score of every valid row by Kafka key, and the keys of the rows the contract refuses.

    ``model`` is an artifact folder or a registry URI (``models:/NAME/VERSION``).
    """
    scored = load_artifact(str(model)).scorer().score(table)
    keys = [str(k).encode() for k in table.column(KEY).to_pylist()]
    scores = scored.score.to_pylist()
    valid = {k: s for k, s, ok in zip(keys, scores, scored.valid, strict=True) if ok}
    return valid, {k for k, ok in zip(keys, scored.valid, strict=True) if not ok}


def events_of(artifact_dir: Path, table: pa.Table) -> list[tuple[bytes, bytes]]:
    contract = load_artifact(str(artifact_dir)).contract
    return list(to_events(table, contract.key, contract.feature_names))


# A backlog: its events, the expected score of each valid one by key, the refused keys.
Backlog = tuple[list[tuple[bytes, bytes]], dict[bytes, float], set[bytes]]


def backlog_of(artifact_dir: Path, day: date, rows: int, seed: int) -> Backlog:
    """``rows`` demo events of ``day`` with their expected scores and refused keys."""
    table = generate_day(day, rows, seed=seed)
    valid, refused = expected_scores(artifact_dir, table)
    return events_of(artifact_dir, table), valid, refused


def test_every_valid_event_gets_exactly_one_prediction(
    kafka: Broker, topics: Topics, artifact_dir: Path, demo_table: pa.Table, tmp_path: Path
) -> None:
    events = events_of(artifact_dir, demo_table)
    valid, refused = expected_scores(artifact_dir, demo_table)
    assert refused, "the demo data carries some contract-breaking rows"
    processor = ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path)
    try:
        processor.wait_ready()
        produce(kafka.bootstrap, topics.input, events)
        out = read_all(kafka.bootstrap, topics.output, len(valid))
        dead = read_all(kafka.bootstrap, topics.dlq, len(refused))
        processor.wait_until(lambda h: h["events_in"] == len(events), what="all events counted")
        metrics = processor.metrics()
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    by_key = outputs_by_key(out)
    assert set(by_key) == set(valid)
    assert all(len(predictions) == 1 for predictions in by_key.values())
    threshold = load_artifact(str(artifact_dir)).contract.output.threshold
    for key, (prediction,) in by_key.items():
        assert prediction[KEY].encode() == key
        assert prediction["score"] == valid[key]  # bit for bit: floats round-trip exactly
        assert prediction["label"] == int(prediction["score"] >= threshold)
        assert (prediction["model_name"], prediction["model_version"]) == ("model", "local")
        assert (
            prediction["event_time"].endswith("Z")
            and prediction["scored_time"] >= prediction["event_time"][:19]
        )
    assert {headers(r)["model_version"] for r in out} == {"local"}

    assert {r.key for r in dead} == refused
    assert {headers(r)["reason_kind"] for r in dead} <= {
        "not_finite",
        "out_of_range",
        "null",
        "unknown_category",
    }

    assert f"scoring_stream_events_in_total {float(len(events))}" in metrics
    assert f"scoring_stream_events_out_total {float(len(valid))}" in metrics
    assert 'scoring_stream_model_version{model="model"}' in metrics
    assert "scoring_stream_end_to_end_seconds_count" in metrics
    assert "scoring_stream_consumer_lag" in metrics


def _bad_corpus(good: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes | None, str]]:
    """(key, value, expected reason kind) for every way an event can be bad."""
    template = json.loads(good[0][1])

    def variant(**changes: object) -> bytes:
        event = {**template, **changes}
        return json.dumps({k: v for k, v in event.items() if v is not _DROP}).encode()

    cases: list[tuple[bytes | None, str]] = [
        (b"", "empty"),
        (None, "empty"),
        (b"x" * 70_000, "oversized"),
        (b"{not json", "not_json"),
        (b"\xff\xfe\x00", "not_json"),
        (b"[" * 5_000, "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"a string"', "not_object"),
        (variant(**{KEY: _DROP}), "missing_key"),
        (variant(**{KEY: None}), "missing_key"),
        (variant(amount=_DROP), "missing_field"),
        (variant(amount="12.5"), "wrong_type"),
        (variant(amount=True), "wrong_type"),
        (variant(country=3), "wrong_type"),
        (variant(amount=float("nan")), "not_finite"),
        (variant(amount=float("inf")), "not_finite"),
        (variant(amount=-5.0), "out_of_range"),
        (variant(hour=24.0), "out_of_range"),
        (variant(country="XX"), "unknown_category"),
        (variant(amount=None), "null"),
    ]
    return [(f"bad-{i}".encode(), value, kind) for i, (value, kind) in enumerate(cases)]


_DROP = object()


def test_bad_events_go_to_the_dead_letter_topic_and_the_rest_is_scored(
    kafka: Broker, topics: Topics, artifact_dir: Path, demo_table: pa.Table, tmp_path: Path
) -> None:
    table = demo_table.slice(0, 400)
    valid, refused = expected_scores(artifact_dir, table)
    good = events_of(artifact_dir, table)
    bad = _bad_corpus(good)
    # Interleave: a bad event after every 20 good ones, in one stream.
    mixed: list[tuple[bytes | None, bytes | None]] = []
    for i, event in enumerate(good):
        mixed.append(event)
        if i % 20 == 0 and i // 20 < len(bad):
            mixed.append(bad[i // 20][:2])
    assert len(mixed) == len(good) + len(bad)

    processor = ProcessorProcess(
        kafka.bootstrap, artifact_dir, topics, tmp_path, extra=["--batch-size", "50"]
    )
    try:
        processor.wait_ready()
        produce(kafka.bootstrap, topics.input, mixed)
        out = read_all(kafka.bootstrap, topics.output, len(valid))
        dead = read_all(kafka.bootstrap, topics.dlq, len(refused) + len(bad))
        processor.wait_until(lambda h: h["events_in"] == len(mixed), what="all events counted")
        inputs = read_all(kafka.bootstrap, topics.input, len(mixed), settle=0)
        metrics = processor.metrics()
        assert processor.health() is not None  # alive after all of it
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    assert set(outputs_by_key(out)) == set(valid)
    origin = {(r.partition, r.offset): r for r in inputs}
    by_key = {r.key: r for r in dead}
    assert set(by_key) == refused | {key for key, _, _ in bad}
    assert len(dead) == len(by_key)
    for key, value, kind in bad:
        record = by_key[key]
        h = headers(record)
        assert h["reason_kind"] == kind, (key, h)
        assert h["reason"]
        assert h["origin_topic"] == topics.input
        source = origin[(int(h["origin_partition"]), int(h["origin_offset"]))]
        assert source.key == key
        assert record.value == (value if value is not None else None)
    kinds = {kind for _, _, kind in bad}
    for kind in kinds:
        assert f'scoring_stream_dead_letters_total{{reason="{kind}"}}' in metrics


# JSON values of every kind, in fields no contract reads.
_EXTRAS = {
    "ds": "2026-11-07",
    "meta": {"source": {"ids": [1, 2, {"deep": None}]}, "note": None},
    "tags": [1, "two", [3.5], {}],
    "big": 10**40,
    "seen_at": "2026-11-07T10:30:00.123+01:00",
}


def test_fields_outside_the_contract_are_ignored(
    kafka: Broker, topics: Topics, artifact_dir: Path, demo_table: pa.Table, tmp_path: Path
) -> None:
    """Events with extra fields get the score the same rows get without them."""
    table = demo_table.slice(0, 300)
    valid, refused = expected_scores(artifact_dir, table)
    assert valid and refused, "some of the rows break the contract"
    events = [
        (key, json.dumps({**_EXTRAS, **json.loads(value)}).encode())
        for key, value in events_of(artifact_dir, table)
    ]
    processor = ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path)
    try:
        processor.wait_ready()
        produce(kafka.bootstrap, topics.input, events)
        out = read_all(kafka.bootstrap, topics.output, len(valid))
        dead = read_all(kafka.bootstrap, topics.dlq, len(refused))
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    assert {key: p["score"] for key, (p, *_) in outputs_by_key(out).items()} == valid
    assert len(out) == len(valid)
    assert {r.key for r in dead} == refused and len(dead) == len(refused)
    assert "wrong_type" not in {headers(r)["reason_kind"] for r in dead}


def test_a_new_brokers_first_transactions_log_the_coordinator_loading_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new broker's transaction coordinator is not ready yet (still loading its log) when
    a worker's second producer asks for its id: librdkafka says so, harmlessly, and it is
    not a warning."""
    monkeypatch.setattr(clients._reports, "_last", {})  # no line held back by earlier tests
    monkeypatch.setattr(clients._coordinator_not_ready, "_seen", -math.inf)
    state = tmp_path / "kafka"
    broker = kafka_broker.start(state)
    try:
        with caplog.at_level(logging.INFO, logger="scoring.stream.librdkafka"):
            for n in range(2):  # as a worker's two transactional producers
                producer = clients.producer(
                    broker.bootstrap, required={"transactional.id": f"first-start-{n}"}
                )
                producer.init_transactions(60)
                producer.flush(1)  # serves the client's log lines
    finally:
        kafka_broker.stop(state)

    lines = [r for r in caplog.records if r.name == clients.librdkafka_log.name]
    loading = [r for r in lines if clients._COORDINATOR_NOT_READY.search(r.getMessage())]
    assert loading, [r.getMessage() for r in lines]
    assert {r.levelname for r in loading} == {"INFO"}
    assert [r.getMessage() for r in lines if r.levelno >= logging.WARNING] == []


def _padded(value: bytes, size: int) -> bytes:
    """A JSON event grown to exactly ``size`` bytes by a field no contract reads."""
    room = size - len(value) - len(b',"padding":""')
    assert room >= 0
    return value[:-1] + b',"padding":"' + b"x" * room + b'"}'


def test_an_event_over_max_message_bytes_is_dead_lettered_whole_with_its_reason(
    kafka: Broker, topics: Topics, artifact_dir: Path, demo_table: pa.Table, tmp_path: Path
) -> None:
    limit = 2048
    table = demo_table.slice(0, 40)
    valid, refused = expected_scores(artifact_dir, table)
    events = dict(events_of(artifact_dir, table))
    # Two events that would be scored: one grown to the limit, one to a byte over it.
    at_limit, over = [key for key in events if key in valid][:2]
    events[at_limit] = _padded(events[at_limit], limit)
    events[over] = _padded(events[over], limit + 1)
    sent = [*events.items(), (b"not-json", b"{not json")]
    processor = ProcessorProcess(
        kafka.bootstrap,
        artifact_dir,
        topics,
        tmp_path,
        extra=["--max-message-bytes", str(limit)],
    )
    try:
        processor.wait_ready()
        produce(kafka.bootstrap, topics.input, sent)
        out = read_all(kafka.bootstrap, topics.output, len(valid) - 1)
        dead = read_all(kafka.bootstrap, topics.dlq, len(refused) + 2)
        processor.wait_until(lambda h: h["events_in"] == len(sent), what="all events counted")
        inputs = read_all(kafka.bootstrap, topics.input, len(sent), settle=0)
        metrics = processor.metrics()
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    scored = {key: p["score"] for key, (p, *_) in outputs_by_key(out).items()}
    assert scored == {key: score for key, score in valid.items() if key != over}
    by_key = {r.key: r for r in dead}
    assert set(by_key) == refused | {over, b"not-json"} and len(dead) == len(by_key)
    record, h = by_key[over], headers(by_key[over])
    assert h["reason_kind"] == "oversized"
    assert h["reason"] == f"message is {limit + 1} bytes, above {limit}"
    source = {(r.partition, r.offset): r for r in inputs}[
        (int(h["origin_partition"]), int(h["origin_offset"]))
    ]
    assert h["origin_topic"] == topics.input and source.key == over
    # A dead letter is the event itself, unchanged (scoring.stream.events): not cut short.
    assert record.value == source.value == events[over] and len(record.value) == limit + 1
    # The same headers as any other dead letter.
    assert set(h) == set(headers(by_key[b"not-json"])) and h["model_version"] == "local"
    assert 'scoring_stream_dead_letters_total{reason="oversized"} 1.0' in metrics


def test_stream_and_batch_scores_agree_bit_for_bit(
    kafka: Broker,
    topics: Topics,
    artifact_dir: Path,
    spark: SparkSession,
    source_table: str,
    tmp_path: Path,
) -> None:
    """The demo table's rows for one date through every batch engine and through the stream."""
    day = DAYS[0]
    by_engine = {}
    for engine in ENGINES:
        target = str(tmp_path / "lake" / engine / "scores")
        job = BatchJob(
            model=str(artifact_dir), source=source_table, target=target, date=day, engine=engine
        )
        summary = run_job(job, spark=spark)
        batch = spark.read.format("delta").load(target).where(F.col("ds") == day).toArrow()
        by_engine[engine] = dict(
            zip(batch.column(KEY).to_pylist(), batch.column("score").to_pylist(), strict=True)
        )
        assert summary["rows_scored"] == len(by_engine[engine]) > 0
    batch_scores = by_engine["python"]
    rows = spark.read.format("delta").load(source_table).where(F.col("ds") == day).toArrow()

    processor = ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path)
    try:
        processor.wait_ready()
        produce(kafka.bootstrap, topics.input, events_of(artifact_dir, rows))
        out = read_all(kafka.bootstrap, topics.output, len(batch_scores))
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    stream_scores = {p[KEY]: p["score"] for r in out for p in [json.loads(r.value)]}
    assert len(out) == len(stream_scores)
    # Float equality on parsed shortest-round-trip text: equal float64s, bit for bit.
    assert stream_scores == by_engine["python"] == by_engine["arrow"]


def test_at_least_once_keeps_up_with_a_trickle_and_commits_what_it_sent(
    kafka: Broker, topics: Topics, artifact_dir: Path, demo_table: pa.Table, tmp_path: Path
) -> None:
    """Events sent ten at a time are scored as they come, and a stop commits their offsets.

    The main thread gathers while the previous batch is flushed, and it alone calls the
    consumer: an offset commit from the flushing thread would wait on its ``consume()``
    calls, and the trickle would stall after the first batch.
    """
    table = demo_table.slice(0, 600)
    events = events_of(artifact_dir, table)
    valid, refused = expected_scores(artifact_dir, table)
    group = f"alo-{topics.input}"
    processor = ProcessorProcess(
        kafka.bootstrap,
        artifact_dir,
        topics,
        tmp_path,
        extra=["--guarantee", "at-least-once", "--group", group],
    )
    try:
        processor.wait_ready()
        for start in range(0, len(events), 10):
            produce(kafka.bootstrap, topics.input, events[start : start + 10])
            time.sleep(0.02)
        processor.wait_until(
            lambda h: h["events_in"] == len(events), timeout=30, what="the trickle scored"
        )
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    out = read_all(kafka.bootstrap, topics.output, len(valid))
    dead = read_all(kafka.bootstrap, topics.dlq, len(refused))
    by_key = outputs_by_key(out)
    assert {k: p["score"] for k, (p, *_) in by_key.items()} == valid
    assert {r.key for r in dead} == refused
    # Nothing left to read again: the group's offsets are the input's ends.
    partitions = [TopicPartition(topics.input, p) for p in range(PARTITIONS)]
    reader = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group)
    try:
        ends = reader.end_offsets(partitions)
        assert {tp: reader.committed(tp) for tp in partitions} == ends
    finally:
        reader.close()
