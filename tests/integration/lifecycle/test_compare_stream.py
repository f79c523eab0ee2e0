"""`model compare` over a window of two prediction topics, against a real broker.

Two ordinary processors read the same input topic: one scores with fraud v1 (the
champion) into the output topic, the other follows ``fraud@challenger`` into the shadow
topic. The challenger is a model that learnt nothing (v2) for the first half of the
events, then v1's twin (v3) for the second half. Expected numbers come from the same
artifacts scored directly on the rows, paired and compared without Kafka.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scoring.cli import app
from scoring.dev.demo.data import KEY
from scoring.dev.demo.train import TrainedModel
from scoring.dev.kafka_broker import Broker
from scoring.lifecycle import registry
from scoring.lifecycle.compare import Pairs, compare, pair, read_stream
from scoring.lifecycle.loading import load_artifact
from scoring.lifecycle.packaging import package
from scoring.stream import clients
from scoring.stream.events import to_events
from scoring.stream.topics import create, produce
from typer.testing import CliRunner

from tests.integration.kafka_helpers import PARTITIONS, ProcessorProcess, Topics, read_all

pytestmark = pytest.mark.integration

ROWS = 800  # events in each half


@dataclass(frozen=True)
class Shadowed:
    bootstrap: str
    output: str
    shadow: str
    first: pa.Table  # the rows scored while the challenger was v2
    second: pa.Table  # ... and while it was v3
    middle_ms: int  # a time between the two halves' predictions
    versions: tuple[str, str, str]  # champion, first challenger, second challenger


def _register(trained: TrainedModel) -> str:
    return package(
        trained.model_file, "fraud", trained.sample_file, spec_file=trained.contract_file
    ).version


def _predictions(version: str, table: pa.Table) -> pa.Table:
    """What ``version`` makes of ``table``'s valid rows, scored without Kafka."""
    scored = load_artifact(f"models:/fraud/{version}").scorer().score(table)
    valid = pa.array(scored.valid)
    return pa.table(
        {
            KEY: table.column(KEY).filter(valid),
            "score": scored.score.filter(valid),
            "label": scored.label.filter(valid),
        }
    )


def _expected(shadowed: Shadowed, table: pa.Table, challenger: str) -> Pairs:
    champion = shadowed.versions[0]
    return pair(_predictions(champion, table), _predictions(challenger, table), KEY)


@pytest.fixture(scope="module")
def shadowed(
    home: Path,
    trained: TrainedModel,
    noise_model: TrainedModel,
    demo_table: pa.Table,
    kafka: Broker,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shadowed]:
    champion, noise, twin = _register(trained), _register(noise_model), _register(trained)
    registry.promote("fraud", noise, alias="challenger")
    stamp = time.time_ns()
    names = [f"compare-{stamp}.{t}" for t in ("in", "out", "shadow", "dlq1", "dlq2")]
    create(kafka.bootstrap, names, PARTITIONS)
    source, output, shadow, dlq1, dlq2 = names
    logs = tmp_path_factory.mktemp("processors")
    env = {"SCORING_HOME": str(home)}
    running = [
        ProcessorProcess(
            kafka.bootstrap,
            model,
            Topics(source, out, dlq),
            logs,
            worker=group,
            extra=["--group", f"compare-{group}", "--model-poll-seconds", "0.5"],
            env=env,
        )
        for model, out, dlq, group in (
            (f"models:/fraud/{champion}", output, dlq1, "champion"),
            ("models:/fraud@challenger", shadow, dlq2, "challenger"),
        )
    ]
    first, second = demo_table.slice(0, ROWS), demo_table.slice(ROWS, ROWS)
    features = load_artifact(f"models:/fraud/{champion}").contract.feature_names

    def score_and_wait(
        table: pa.Table, challenger: str, before: tuple[int, int]
    ) -> tuple[int, int]:
        """Produce ``table``'s events; wait until both topics hold their predictions."""
        produce(kafka.bootstrap, source, to_events(table, KEY, features))
        counts = (
            before[0] + _predictions(champion, table).num_rows,
            before[1] + _predictions(challenger, table).num_rows,
        )
        for topic, expected in zip((output, shadow), counts, strict=True):
            assert len(read_all(kafka.bootstrap, topic, expected, settle=0)) == expected
        return counts

    try:
        for processor in running:
            processor.wait_ready()
        counts = score_and_wait(first, noise, (0, 0))
        middle_ms = int(time.time() * 1000)
        time.sleep(0.05)
        registry.promote("fraud", twin, alias="challenger")
        running[1].wait_until(lambda h: h["model_version"] == twin, what=f"challenger v{twin}")
        score_and_wait(second, twin, counts)
    finally:
        for processor in running:
            processor.stop()
    yield Shadowed(
        kafka.bootstrap, output, shadow, first, second, middle_ms, (champion, noise, twin)
    )


def test_the_window_pairs_the_champion_with_one_challenger_version(shadowed: Shadowed) -> None:
    champion, noise, twin = shadowed.versions
    pairs, window = read_stream(
        shadowed.output, shadowed.shadow, KEY, 0, None, noise, shadowed.bootstrap
    )
    expected = _expected(shadowed, shadowed.first, noise)
    assert pairs.rows == expected.rows > 0.9 * ROWS
    report, independent = compare(pairs), compare(expected)
    assert report["psi"] == independent["psi"] > 0.1
    assert report["label_agreement"] == independent["label_agreement"] < 1.0
    later = _predictions(champion, shadowed.second).num_rows  # v1's, not paired with v2's
    assert pairs.champion_only == expected.champion_only + later
    assert window["shadow_topic"]["other_versions"] == _predictions(twin, shadowed.second).num_rows
    assert window["output_topic"]["repeated"] == 0

    same, _ = read_stream(shadowed.output, shadowed.shadow, KEY, 0, None, twin, shadowed.bootstrap)
    assert same.rows == _expected(shadowed, shadowed.second, twin).rows
    assert np.array_equal(same.champion_score, same.challenger_score)  # v3 is v1's twin
    assert compare(same)["label_agreement"] == 1.0


def test_a_window_leaves_out_the_records_outside_it(shadowed: Shadowed) -> None:
    _, noise, twin = shadowed.versions
    read = dict(output_topic=shadowed.output, shadow_topic=shadowed.shadow, key=KEY)
    later, window = read_stream(**read, since_ms=shadowed.middle_ms, bootstrap=shadowed.bootstrap)
    assert later.rows == _expected(shadowed, shadowed.second, twin).rows
    assert (later.champion_only, later.challenger_only) == (0, 0)
    assert window["shadow_topic"]["other_versions"] == 0  # no version asked for
    earlier, _ = read_stream(
        **read, since_ms=0, until_ms=shadowed.middle_ms, bootstrap=shadowed.bootstrap
    )
    assert earlier.rows == _expected(shadowed, shadowed.first, noise).rows
    future, _ = read_stream(**read, since_ms=int(time.time() * 1000) + 60_000,
                            until_ms=int(time.time() * 1000) + 120_000,
                            bootstrap=shadowed.bootstrap)  # fmt: skip
    assert future.rows == 0


def test_a_repeated_record_keeps_the_last_and_is_counted(shadowed: Shadowed) -> None:
    _, _, twin = shadowed.versions
    reader = clients.consumer(
        shadowed.bootstrap,
        required={"group.id": f"copy-{time.time_ns()}", "isolation.level": "read_committed"},
        defaults={"auto.offset.reset": "earliest"},
    )
    reader.subscribe([shadowed.shadow])
    copied = None
    deadline = time.monotonic() + 30
    while copied is None and time.monotonic() < deadline:
        message = reader.poll(0.5)
        if message is not None and ("model_version", twin.encode()) in (message.headers() or []):
            copied = message
    reader.close()
    assert copied is not None
    producer = clients.producer(shadowed.bootstrap)
    producer.produce(
        shadowed.shadow, copied.value(), copied.key(), headers=copied.headers(),
        partition=copied.partition(),
    )  # fmt: skip
    assert producer.flush(30) == 0
    pairs, window = read_stream(
        shadowed.output, shadowed.shadow, KEY, 0, None, twin, shadowed.bootstrap
    )
    assert window["shadow_topic"]["repeated"] == 1
    assert pairs.rows == _expected(shadowed, shadowed.second, twin).rows


def test_the_command_gates_on_the_window_with_the_numbers(
    shadowed: Shadowed, tmp_path: Path
) -> None:
    _, noise, twin = shadowed.versions
    command = [
        "model", "compare", "--output-topic", shadowed.output, "--shadow-topic", shadowed.shadow,
        "--bootstrap", shadowed.bootstrap, "--key", KEY, "--since", "1970-01-01T00:00:00Z",
        "--out-dir", str(tmp_path), "--min-rows", "100", "--max-psi", "0.1",
        "--min-label-agreement", "0.999",
    ]  # fmt: skip
    runner = CliRunner()
    passed = runner.invoke(app, [*command, "--challenger-version", twin, "--experiment", "shadow"])
    assert passed.exit_code == 0, passed.output
    report = json.loads(passed.stdout.strip().splitlines()[-1])
    assert report["rows"] == _expected(shadowed, shadowed.second, twin).rows
    assert report["window"]["challenger_version"] == twin
    assert report["mlflow_run_id"] and (tmp_path / "comparison.png").is_file()

    failed = runner.invoke(app, [*command, "--challenger-version", noise])
    assert failed.exit_code == 5
    expected = compare(_expected(shadowed, shadowed.first, noise))
    message = " ".join(failed.output.split())
    assert "The shadow comparison failed:" in message
    assert f"label agreement {expected['label_agreement']:.4f} < 0.999" in message
    assert f"score PSI {expected['psi']:.4f} > 0.1" in message
