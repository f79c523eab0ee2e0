"""The stream half of ``scoring demo``: the same champion scores live Kafka events.

Starts a local broker (unless one is already up) and a stream processor following
``models:/fraud@champion``, produces the batch-scored date's transactions as JSON events,
shows predictions as they arrive, checks every stream score against the batch score of the
same row, and stops what it started. With ``secure`` (``scoring demo --secure``) every
client goes through the broker's SASL_SSL listener with the client file it wrote, as on a
secured cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.live import Live
from rich.table import Table

from scoring.dev import kafka_broker
from scoring.dev.demo.data import KEY
from scoring.errors import StreamError
from scoring.settings import Settings
from scoring.stream import main as stream_job
from scoring.stream import topics as topics_io
from scoring.stream.events import to_events
from scoring.stream.kafka_config import KafkaClientConfig
from scoring.stream.metrics import fetch_health

__all__ = ["run_stream_demo"]

PARTITIONS = 3


def run_stream_demo(
    console: Console,
    settings: Settings,
    model_uri: str,
    rows: pa.Table,
    batch_scores: dict[str, float],
    feature_names: list[str],
    secure: bool = False,
) -> dict[str, Any]:
    """Stream ``rows`` through a processor and compare with ``batch_scores`` by key."""
    state_dir = settings.home.resolve() / "kafka"
    was_running = kafka_broker.is_running(state_dir)
    started = time.monotonic()
    with console.status("[bold]Starting the Kafka broker (KRaft, 127.0.0.1)…"):
        broker = kafka_broker.start(state_dir, secure=secure)
    client = KafkaClientConfig(broker.bootstrap)
    if broker.secure is not None and secure:
        client = KafkaClientConfig.from_file(broker.secure.sasl_ssl_config)
    console.print(
        f"[green]✓[/] Kafka broker on {client.describe()} "
        f"[dim]({time.monotonic() - started:.1f}s)[/]"
    )
    run = time.strftime("%Y%m%d-%H%M%S")
    topics = (f"demo-{run}.transactions", f"demo-{run}.fraud_scores", f"demo-{run}.dlq")
    topics_io.create(client.bootstrap, topics, PARTITIONS, client.properties)
    log_file = settings.home.resolve() / "demo" / f"processor-{run}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    processor, port = _start_processor(client, model_uri, topics, log_file)
    try:
        health = _wait_ready(processor, port, log_file)
        console.print(
            f"[green]✓[/] Stream processor scoring with {health['model_name']} "
            f"v{health['model_version']} (health: http://127.0.0.1:{port}/health)"
        )
        events = list(to_events(rows, KEY, feature_names))
        # A steady stream rather than one burst, to watch it arrive.
        topics_io.produce(client.bootstrap, topics[0], events, pace=0.02, kafka=client.properties)
        console.print(f"[green]✓[/] Produced {len(events):,} transaction events to {topics[0]}")
        stream_scores = _watch(console, client, topics[1], len(batch_scores))
        dead = _count(client, topics[2])
    finally:
        processor.send_signal(signal.SIGTERM)
        code = processor.wait(60)
        if not was_running:
            kafka_broker.stop(state_dir)
    if code != 0:
        raise StreamError(f"the processor exited with {code}; see {log_file}")
    same = sum(1 for k, s in stream_scores.items() if batch_scores.get(k) == s)
    parity = Table(title="Batch vs stream, same rows", show_header=False)
    parity.add_column(style="bold")
    parity.add_column()
    parity.add_row("scored by the batch job", f"{len(batch_scores):,}")
    parity.add_row("scored by the stream", f"{len(stream_scores):,}")
    parity.add_row("dead letters (refused events)", f"{dead:,}")
    verdict = (
        "[green]identical" if same == len(batch_scores) == len(stream_scores) else "[red]DIFFERENT"
    )
    parity.add_row(
        "scores identical bit for bit", f"{verdict}[/] ({same:,} of {len(batch_scores):,})"
    )
    console.print(parity)
    console.print(
        f"[dim]processor stopped with SIGTERM (exit {code})"
        + ("" if was_running else "; broker stopped")
        + f"; processor log {log_file}[/]"
    )
    if same != len(batch_scores):
        raise StreamError("stream and batch scores differ; see the table above")
    return {"stream_scored": len(stream_scores), "dead_letters": dead, "identical": same}


def _start_processor(
    client: KafkaClientConfig, model_uri: str, topics: tuple[str, ...], log_file: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = kafka_broker.free_port()
    options = ("--group", f"demo-{topics[0]}", "--metrics-port", str(port))
    command = stream_job.command(
        model_uri, topics, client.bootstrap, *options, kafka_config=client.source
    )
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
    return process, port


def _wait_ready(process: subprocess.Popen[bytes], port: int, log_file: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StreamError(f"the processor exited with {process.returncode}; see {log_file}")
        try:
            health = fetch_health(f"http://127.0.0.1:{port}/health")
            if health["status"] == "ok" and health["assigned"]:
                return health
        except OSError:
            pass
        time.sleep(0.2)
    raise StreamError(f"the processor did not become ready; see {log_file}")


def _watch(
    console: Console, client: KafkaClientConfig, topic: str, expected: int
) -> dict[str, float]:
    """Read predictions as they are committed, showing the latest ones live."""
    consumer = topics_io.reader(client.bootstrap, topic, PARTITIONS, client.properties)
    scores: dict[str, float] = {}
    latest: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    with Live(_live_table(latest, 0, expected), console=console, refresh_per_second=8) as live:
        while len(scores) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    prediction = json.loads(record.value or b"{}")
                    scores[prediction[KEY]] = prediction["score"]
                    latest = [prediction, *latest][:8]
            live.update(_live_table(latest, len(scores), expected))
    console.print()
    consumer.close()
    return scores


def _live_table(latest: list[dict[str, Any]], done: int, expected: int) -> Table:
    table = Table(title=f"Live predictions: {done:,} of {expected:,}")
    for column in ("transaction_id", "score", "label", "model", "event time", "scored time"):
        table.add_column(column)
    for p in latest:
        table.add_row(
            p[KEY],
            f"{p['score']:.4f}",
            str(p["label"]),
            f"{p['model_name']} v{p['model_version']}",
            p["event_time"][11:],
            p["scored_time"][11:],
        )
    return table


def _count(client: KafkaClientConfig, topic: str) -> int:
    consumer = topics_io.reader(client.bootstrap, topic, PARTITIONS, client.properties)
    n, idle = 0, 0
    while idle < 3:
        polled = consumer.poll(timeout_ms=300)
        n += sum(len(r) for r in polled.values())
        idle = 0 if polled else idle + 1
    consumer.close()
    return n
