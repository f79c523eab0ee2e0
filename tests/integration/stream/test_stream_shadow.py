"""A challenger in the stream processor's shadow, against a real broker and registry.

The champion is the demo model (an artifact folder); the challengers are registered in
the module's embedded MLflow registry and followed through their aliases: a model that
learnt nothing (trained on shuffled labels), a corrupted artifact (fails to load) and a
graph that raises on every micro-batch. Outputs are read ``read_committed`` with
kafka-python, a client independent of the processor's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import onnx
import pyarrow as pa
import pytest
from kafka.consumer.fetcher import ConsumerRecord
from scoring.dev.demo.data import KEY, generate_day
from scoring.dev.demo.train import TrainedModel
from scoring.dev.kafka_broker import Broker
from scoring.lifecycle import registry
from scoring.lifecycle.loading import load_artifact
from scoring.lifecycle.packaging import package
from scoring.model.artifact import sha256_bytes
from scoring.model.contract import CONTRACT_FILE, Contract

from tests.integration.kafka_helpers import (
    OpenTransactions,
    ProcessorProcess,
    Topics,
    create_topics,
    headers,
    outputs_by_key,
    produce,
    read_all,
)
from tests.integration.stream.test_stream import events_of, expected_scores

pytestmark = pytest.mark.integration

POLL = ["--model-poll-seconds", "0.5"]


@dataclass(frozen=True)
class Challengers:
    """Versions of the registered model ``fraud``: one that scores, two that are broken."""

    noise: str
    corrupted: str
    raising: str


def _copy_registered(source: Path, folder: Path, change: Any) -> str:
    """Register a copy of artifact ``source`` after ``change(folder)``; returns the version."""
    shutil.copytree(source, folder)
    change(folder)
    return registry.register(folder, "fraud", Contract.read(folder / CONTRACT_FILE)).version


def _corrupt(folder: Path) -> None:
    graph = folder / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-100])  # its checksum no longer matches


def _refuse_every_batch(folder: Path) -> None:
    """A graph that loads but refuses every micro-batch: its inputs take 0 rows only."""
    graph = onnx.load(str(folder / "model.onnx"))
    for tensor in graph.graph.input:
        tensor.type.tensor_type.shape.dim[0].dim_value = 0
    onnx.save(graph, str(folder / "model.onnx"))
    contract = Contract.read(folder / CONTRACT_FILE)
    checksum = sha256_bytes((folder / "model.onnx").read_bytes())
    (folder / CONTRACT_FILE).write_text(
        contract.model_copy(update={"onnx_sha256": checksum}).to_json()
    )


@pytest.fixture(scope="module")
def challengers(
    home: Path,
    noise_model: TrainedModel,
    artifact_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Challengers:
    noise = package(
        noise_model.model_file,
        "fraud",
        noise_model.sample_file,
        spec_file=noise_model.contract_file,
    ).version
    work = tmp_path_factory.mktemp("challengers")
    return Challengers(
        noise=noise,
        corrupted=_copy_registered(artifact_dir, work / "corrupted", _corrupt),
        raising=_copy_registered(artifact_dir, work / "raising", _refuse_every_batch),
    )


def _table(day: int, rows: int) -> pa.Table:
    return generate_day(date(2026, 11, day), rows, seed=day)


def _alone(version: str, table: pa.Table) -> dict[bytes, float]:
    """What challenger ``version`` scores on its own, by Kafka key."""
    scored = load_artifact(f"models:/fraud/{version}").scorer().score(table)
    keys = [str(k).encode() for k in table.column(KEY).to_pylist()]
    scores = scored.score.to_pylist()
    return {k: s for k, s, ok in zip(keys, scores, scored.valid, strict=True) if ok}


def _one_each(records: Sequence[ConsumerRecord]) -> dict[bytes, dict[str, Any]]:
    by_key = outputs_by_key(records)
    doubled = [k for k, v in by_key.items() if len(v) > 1]
    assert not doubled, f"{len(doubled)} keys more than once"
    return {k: v[0] for k, v in by_key.items()}


def _untimed(records: Sequence[ConsumerRecord]) -> dict[bytes, Any]:
    """Each record's value and headers but its times (the two inputs were sent apart)."""
    times = ("event_time", "scored_time")
    return {
        r.key: ({k: v for k, v in json.loads(r.value).items() if k not in times}, r.headers)
        for r in records
    }


def _dead_letters(records: Sequence[ConsumerRecord], origin: str) -> list[tuple[Any, ...]]:
    """Key, value and headers of each dead letter, its origin topic's name left out."""
    seen = []
    for r in records:
        kept = [(k, v) for k, v in r.headers if (k, v) != ("origin_topic", origin.encode())]
        assert len(kept) == len(r.headers) - 1, r.headers
        seen.append((r.key, r.value, kept))
    return sorted(seen)


def _shadow_topics(kafka: Broker, topics: Topics, name: str) -> tuple[Topics, str]:
    """A second set of topics for a processor without a shadow, and a shadow topic."""
    plain = Topics(f"{topics.input}-{name}", f"{topics.output}-{name}", f"{topics.dlq}-{name}")
    create_topics(kafka.bootstrap, plain)
    return plain, f"{topics.output}.shadow"


def test_champion_output_is_unchanged_and_the_shadow_holds_what_the_challenger_scores(
    kafka: Broker,
    topics: Topics,
    artifact_dir: Path,
    challengers: Challengers,
    tmp_path: Path,
) -> None:
    registry.promote("fraud", challengers.noise, "challenger")
    table = _table(5, 3000)
    events = events_of(artifact_dir, table)
    valid, refused = expected_scores(artifact_dir, table)
    alone = _alone(challengers.noise, table)
    plain, shadow_topic = _shadow_topics(kafka, topics, "plain")
    shadow_options = ["--shadow", "models:/fraud@challenger", "--shadow-topic", shadow_topic]
    with_shadow = ProcessorProcess(
        kafka.bootstrap, artifact_dir, topics, tmp_path, extra=[*POLL, *shadow_options]
    )
    without = ProcessorProcess(kafka.bootstrap, artifact_dir, plain, tmp_path)
    try:
        for processor in (with_shadow, without):
            processor.wait_ready()
        with_shadow.wait_until(
            lambda h: h["shadow_model_version"] == challengers.noise, what="the challenger"
        )
        produce(kafka.bootstrap, topics.input, events)
        produce(kafka.bootstrap, plain.input, events)
        out = read_all(kafka.bootstrap, topics.output, len(valid))
        dead = read_all(kafka.bootstrap, topics.dlq, len(refused))
        shadowed = read_all(kafka.bootstrap, shadow_topic, len(alone))
        plain_out = read_all(kafka.bootstrap, plain.output, len(valid))
        plain_dead = read_all(kafka.bootstrap, plain.dlq, len(refused))
        with_shadow.wait_until(lambda h: h["events_in"] == len(events), what="all events")
        health, metrics = with_shadow.health(), with_shadow.metrics()
        assert with_shadow.terminate() == 0, with_shadow.log()
        assert without.terminate() == 0, without.log()
    finally:
        with_shadow.stop()
        without.stop()

    # The champion's output is what it is without a shadow, record for record.
    assert {k: p["score"] for k, p in _one_each(out).items()} == valid
    assert _untimed(out) == _untimed(plain_out)
    assert _dead_letters(dead, topics.input) == _dead_letters(plain_dead, plain.input)
    assert {r.key for r in dead} == refused
    # One challenger prediction per event it accepts, equal to its own scores bit for bit.
    shadow_by_key = _one_each(shadowed)
    assert {k: p["score"] for k, p in shadow_by_key.items()} == alone
    assert set(alone) == set(valid)  # same contract: the same events predicted
    assert {(headers(r)["model_name"], headers(r)["model_version"]) for r in shadowed} == {
        ("fraud", challengers.noise)
    }
    for key, prediction in shadow_by_key.items():
        assert prediction[KEY].encode() == key
        assert prediction["model_version"] == challengers.noise
    assert health is not None
    assert health["shadow_predictions"] == health["shadow_version_predictions"] == len(alone)
    assert health["shadow_model_name"] == "fraud" and health["shadow_failures"] == 0
    assert 0 < health["shadow_disagreements"] < len(alone)  # it learnt nothing
    assert health["predictions"] == len(valid)
    assert f"scoring_stream_shadow_predictions_total {float(len(alone))}" in metrics
    assert "scoring_stream_shadow_score_difference_count" in metrics


def test_kill_9_inside_a_transaction_leaves_output_and_shadow_exactly_once(
    kafka: Broker,
    topics: Topics,
    artifact_dir: Path,
    challengers: Challengers,
    tmp_path: Path,
) -> None:
    registry.promote("fraud", challengers.noise, "challenger")
    table = _table(6, 6000)
    valid, refused = expected_scores(artifact_dir, table)
    alone = _alone(challengers.noise, table)
    shadow_topic = f"{topics.output}.shadow"
    options = [
        *POLL,
        *("--shadow", "models:/fraud@challenger", "--shadow-topic", shadow_topic),
        *("--batch-size", "100", "--transaction-timeout-ms", "90000"),
    ]
    workers: list[ProcessorProcess] = []

    def start() -> ProcessorProcess:
        workers.append(
            ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path, extra=options)
        )
        return workers[-1]

    probe = OpenTransactions(kafka.bootstrap, topics.output)
    try:
        worker = start()
        worker.wait_until(
            lambda h: h["shadow_model_version"] == challengers.noise, what="the challenger"
        )
        produce(kafka.bootstrap, topics.input, events_of(artifact_dir, table))
        worker.wait_until(lambda h: h["shadow_predictions"] >= 500, what="500 shadow predictions")
        worker.pause_inside_transaction(probe)
        worker.kill()
        worker = start()  # the same worker id: fences the dead one, aborts its transaction
        out = read_all(kafka.bootstrap, topics.output, len(valid), timeout=120, settle=3)
        shadowed = read_all(kafka.bootstrap, shadow_topic, len(alone), timeout=60, settle=1)
        dead = read_all(kafka.bootstrap, topics.dlq, len(refused), timeout=30, settle=1)
        assert worker.terminate() == 0, worker.log()
    finally:
        probe.close()
        for started in workers:
            started.stop()

    assert {k: p["score"] for k, p in _one_each(out).items()} == valid
    assert {k: p["score"] for k, p in _one_each(shadowed).items()} == alone
    assert sorted(r.key for r in dead) == sorted(refused)


def test_broken_challengers_never_reach_the_champion(
    kafka: Broker,
    topics: Topics,
    artifact_dir: Path,
    challengers: Challengers,
    tmp_path: Path,
) -> None:
    registry.promote("fraud", challengers.corrupted, "broken")
    first, second = _table(7, 1500), _table(8, 1500)
    valid, refused = expected_scores(artifact_dir, pa.concat_tables([first, second]))
    shadow_topic = f"{topics.output}.shadow"
    processor = ProcessorProcess(
        kafka.bootstrap,
        artifact_dir,
        topics,
        tmp_path,
        extra=[*POLL, "--shadow", "models:/fraud@broken", "--shadow-topic", shadow_topic],
    )
    try:
        processor.wait_until(
            lambda h: h["status"] == "ok" and h["shadow_failures"] >= 1, what="a failed load"
        )
        assert processor.health()["shadow_model_version"] is None  # type: ignore[index]
        produce(kafka.bootstrap, topics.input, events_of(artifact_dir, first))
        processor.wait_until(lambda h: h["events_in"] == len(first), what="the first half")
        registry.promote("fraud", challengers.raising, "broken")
        processor.wait_until(
            lambda h: h["shadow_model_version"] == challengers.raising, what="the raising one"
        )
        loads = processor.health()["shadow_failures"]  # type: ignore[index]
        produce(kafka.bootstrap, topics.input, events_of(artifact_dir, second))
        out = read_all(kafka.bootstrap, topics.output, len(valid))
        dead = read_all(kafka.bootstrap, topics.dlq, len(refused))
        shadowed = read_all(kafka.bootstrap, shadow_topic, 0, timeout=0, settle=1)
        processor.wait_until(
            lambda h: h["events_in"] == first.num_rows + second.num_rows, what="every event"
        )
        health, metrics = processor.health(), processor.metrics()
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    assert {k: p["score"] for k, p in _one_each(out).items()} == valid
    assert sorted(r.key for r in dead) == sorted(refused)
    assert shadowed == []
    assert health is not None and health["shadow_failures"] > loads
    assert health["shadow_predictions"] == 0
    assert 'scoring_stream_shadow_failures_total{stage="load"}' in metrics
    assert 'scoring_stream_shadow_failures_total{stage="score"}' in metrics
    log = processor.log_file.read_text()
    assert log.count("failed to score") == 1  # rate-limited: not a line per micro-batch


def test_the_shadow_starts_when_its_alias_is_set_and_stops_when_it_is_deleted(
    kafka: Broker,
    topics: Topics,
    artifact_dir: Path,
    challengers: Challengers,
    tmp_path: Path,
) -> None:
    chunks = [_table(day, 1000) for day in (9, 10, 11)]
    shadow_topic = f"{topics.output}.shadow"
    processor = ProcessorProcess(
        kafka.bootstrap,
        artifact_dir,
        topics,
        tmp_path,
        # At-least-once here: the shadow's records go in the champion's flush there too.
        extra=[
            *POLL,
            *("--shadow", "models:/fraud@next", "--shadow-topic", shadow_topic),
            *("--guarantee", "at-least-once"),
        ],
    )
    done = 0

    def feed(chunk: pa.Table) -> None:
        nonlocal done
        produce(kafka.bootstrap, topics.input, events_of(artifact_dir, chunk))
        done += chunk.num_rows
        processor.wait_until(lambda h: h["events_in"] == done, what=f"{done} events")

    try:
        processor.wait_ready()
        assert processor.health()["shadow_model_version"] is None  # type: ignore[index]
        feed(chunks[0])  # no alias yet: no shadow
        registry.promote("fraud", challengers.noise, "next")
        processor.wait_until(
            lambda h: h["shadow_model_version"] == challengers.noise, what="the challenger"
        )
        feed(chunks[1])
        during = processor.health()
        registry.client().delete_registered_model_alias("fraud", "next")
        processor.wait_until(lambda h: h["shadow_model_version"] is None, what="no challenger")
        feed(chunks[2])
        shadowed = read_all(kafka.bootstrap, shadow_topic, 1, timeout=10, settle=2)
        after = processor.health()
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    expected = _alone(challengers.noise, chunks[1])
    assert {k: p["score"] for k, p in _one_each(shadowed).items()} == expected
    assert during is not None and during["shadow_version_predictions"] == len(expected)
    assert after is not None and after["shadow_predictions"] == len(expected)
    assert after["shadow_failures"] == 0
