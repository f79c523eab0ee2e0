"""Stream throughput and latency: the processor vs a pass-through on the same client stack.

Run it with ``make bench-stream`` (or ``.venv/bin/python benchmarks/stream.py``). In one
run, against one local broker started for the purpose, for each delivery guarantee:

(a) a pass-through worker: the processor's own loop, consumer, producer, transactions and
    commits, with the scoring step replaced by copying each event to the output topic
    (the ceiling this client stack allows);
(b) the processor with the demo model (``python -m scoring.stream.main``).

Throughput: ``--events`` events are loaded into the input topic first, then a worker is
started and timed from its first committed batch to its last (events/s at saturation).
Latency: a worker runs while events are produced at ``--rate`` events/s for ``--seconds``;
a ``read_committed`` reader notes when each output arrives, and the latency is arrival
minus send time (the first second is warm-up and not counted). Every worker is a process
of its own with one onnxruntime thread. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import KafkaProducer  # noqa: E402
from kafka.consumer.fetcher import ConsumerRecord  # noqa: E402
from scoring.dev.kafka_broker import free_port  # noqa: E402
from scoring.stream import main as stream_job  # noqa: E402
from scoring.stream import topics as topics_io  # noqa: E402
from scoring.stream.metrics import fetch_health  # noqa: E402

PARTITIONS = 3
MODES = ("pass-through", "model")
GUARANTEES = ("exactly-once", "at-least-once")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pass-through-worker"]:  # internal: a worker process started below
        sys.exit(_pass_through_worker(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="events for throughput")
    parser.add_argument("--rate", type=int, default=1_000, help="events/s for latency")
    parser.add_argument("--seconds", type=int, default=15, help="latency run length")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--batch-wait-ms", type=int, default=0)
    parser.add_argument("--guarantee", choices=(*GUARANTEES, "both"), default="both")
    _benchmark(parser.parse_args(argv))


def _pass_through_worker(argv: list[str]) -> int:
    """The processor with its scoring step replaced by a copy: same loop, same clients."""
    from scoring.stream.processor import Message, Processor

    class PassThrough(Processor):
        def route(self, records: list[ConsumerRecord]) -> tuple[list[Message], list[str]]:
            out = self.config.output_topic
            return [(out, r.key, r.value, []) for r in records], []

    parsed = stream_job.parse_args(argv)
    PassThrough(stream_job.config_from(parsed)).run()
    return 0


def _benchmark(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table
    from scoring.dev import kafka_broker
    from scoring.dev.demo.data import KEY, generate_day
    from scoring.dev.demo.train import train
    from scoring.lifecycle.packaging import build, write_artifact
    from scoring.stream.events import to_events

    console = Console()
    work = Path(tempfile.mkdtemp(prefix="scoring-stream-bench-"))
    with console.status("training and packaging the demo model"):
        trained = train(generate_day(date(2026, 11, 1), 20_000), work / "trained", "bench", 0)
        packaged = build(
            trained.model_file,
            trained.sample_file,
            spec=json.loads(trained.contract_file.read_text()),
        )
        model = work / "model"
        write_artifact(packaged, model)
        names = packaged.contract.feature_names
    saturate = list(to_events(generate_day(date(2026, 11, 2), args.events, seed=3), KEY, names))
    paced = list(
        to_events(generate_day(date(2026, 11, 3), args.rate * args.seconds, seed=5), KEY, names)
    )
    broker = kafka_broker.start(work / "kafka")
    console.print(f"broker {broker.bootstrap}; work dir {work}")
    guarantees = GUARANTEES if args.guarantee == "both" else (args.guarantee,)
    results: dict[tuple[str, str], dict[str, float]] = {}
    try:
        for guarantee in guarantees:
            for mode in MODES:
                run = Run(broker.bootstrap, model, mode, guarantee, args, work)
                with console.status(f"{mode}, {guarantee}: throughput"):
                    rate = run.throughput(saturate)
                with console.status(f"{mode}, {guarantee}: latency at {args.rate}/s"):
                    latency = run.latency(paced, args.rate)
                results[(mode, guarantee)] = {"rate": rate, **latency}
                console.print(
                    f"{mode:>12}, {guarantee:<13} {rate:>9,.0f} events/s   "
                    f"p50 {latency['p50']:.1f} ms  p95 {latency['p95']:.1f} ms  "
                    f"p99 {latency['p99']:.1f} ms"
                )
    finally:
        kafka_broker.stop(broker)

    table = Table(
        title=f"Stream, {args.events:,} events at saturation; latency at {args.rate:,} events/s"
    )
    for column in ("worker", "guarantee", "events/s", "vs pass-through", "p50 ms", "p95 ms"):
        table.add_column(column, justify="right")
    table.add_column("p99 ms", justify="right")
    for (mode, guarantee), r in results.items():
        ceiling = results[("pass-through", guarantee)]["rate"]
        table.add_row(
            mode,
            guarantee,
            f"{r['rate']:,.0f}",
            f"{r['rate'] / ceiling:.0%}",
            f"{r['p50']:.1f}",
            f"{r['p95']:.1f}",
            f"{r['p99']:.1f}",
        )
    console.print(table)
    console.print(
        "Targets: model >= 70% of pass-through; p99 <= 50 ms at-least-once, <= 300 ms exactly-once."
    )


class Run:
    """One worker configuration: fresh topics per measurement."""

    def __init__(
        self,
        bootstrap: str,
        model: Path,
        mode: str,
        guarantee: str,
        args: argparse.Namespace,
        work: Path,
    ) -> None:
        self.bootstrap, self.model, self.mode, self.guarantee = bootstrap, model, mode, guarantee
        self.args, self.work = args, work
        self.runs = 0

    def _topics(self) -> tuple[str, str, str]:
        self.runs += 1
        base = f"{self.mode}-{self.guarantee}-{self.runs}"
        names = (f"{base}.in", f"{base}.out", f"{base}.dlq")
        topics_io.create(self.bootstrap, names, PARTITIONS)
        return names

    def _start(self, topics: tuple[str, str, str]) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        options = [
            "--group",
            f"bench-{topics[0]}",
            "--guarantee",
            self.guarantee,
            "--batch-size",
            str(self.args.batch_size),
            "--batch-wait-ms",
            str(self.args.batch_wait_ms),
            "--metrics-port",
            str(port),
            "--ort-threads",
            "1",
        ]
        command = stream_job.command(str(self.model), topics, self.bootstrap, *options)
        if self.mode == "pass-through":
            command[1:3] = [__file__, "pass-through-worker"]
        log = (self.work / f"{topics[0]}.log").open("wb")
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: (_health(port) or {}).get("assigned"), process, 60)
        return process, port

    def throughput(self, events: list[tuple[bytes, bytes]]) -> float:
        topics = self._topics()
        topics_io.produce(self.bootstrap, topics[0], events, linger_ms=20, batch_size=256 * 1024)
        process, port = self._start(topics)
        try:
            first = None
            while True:
                health = _health(port) or {}
                done, now = health.get("events_in", 0), time.perf_counter()
                if done and first is None:
                    first = (now, done)
                if done >= len(events):
                    assert first is not None
                    return (done - first[1]) / (now - first[0])
                if process.poll() is not None:
                    raise SystemExit(f"worker exited; see {self.work}")
                time.sleep(0.05)
        finally:
            _stop(process)

    def latency(self, events: list[tuple[bytes, bytes]], rate: int) -> dict[str, float]:
        topics = self._topics()
        process, _ = self._start(topics)
        sent: dict[bytes, float] = {}
        arrived: dict[bytes, float] = {}
        stop = threading.Event()
        reader = threading.Thread(target=_read, args=(self.bootstrap, topics[1], arrived, stop))
        reader.start()
        try:
            producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
            step = max(1, rate // 100)  # a send every 10 ms
            began = time.perf_counter()
            for i in range(0, len(events), step):
                pause = began + i / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                for key, value in events[i : i + step]:
                    sent[key] = time.perf_counter()
                    producer.send(topics[0], key=key, value=value)
            producer.flush()
            producer.close()
            deadline = time.perf_counter() + 30
            while len(arrived) < len(sent) * 0.99 and time.perf_counter() < deadline:
                time.sleep(0.2)
        finally:
            stop.set()
            reader.join()
            _stop(process)
        warm = sorted(sent.values())[min(len(sent) - 1, rate)]
        millis = sorted(
            (arrived[k] - t) * 1000 for k, t in sent.items() if k in arrived and t >= warm
        )
        return {p: _percentile(millis, q) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))}


def _read(bootstrap: str, topic: str, arrived: dict[bytes, float], stop: threading.Event) -> None:
    consumer = topics_io.reader(bootstrap, topic, PARTITIONS, fetch_max_wait_ms=5)
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=50).values():
            now = time.perf_counter()
            for record in records:
                arrived.setdefault(record.key, now)
    consumer.close()


def _health(port: int) -> dict[str, Any] | None:
    try:
        return fetch_health(f"http://127.0.0.1:{port}/health")
    except (OSError, ValueError):
        return None


def _wait(check: Any, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start (exit {process.poll()})")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))
    return values[index]


if __name__ == "__main__":
    main()
