"""Stream throughput and latency: the processor against a pass-through on the same stack.

Run it with ``make bench-stream`` (or ``.venv/bin/python benchmarks/stream.py``). In one
run, against one local broker started for the purpose, for each delivery guarantee:

(a) a pass-through worker: the processor's own loop, clients, transactions and commits,
    with decoding and scoring replaced by a copy of each event cut to the size of a
    prediction (same record count, same bytes out, same headers): the ceiling this client
    stack allows;
(b) the processor with the demo model (``python -m scoring.stream.main``);
(c) ``shadow``: the same, with a second demo model (trained on another day's rows, same
    contract) as the challenger in its shadow (``--shadow``): every event is scored twice
    and each batch's transaction also carries the challenger's predictions. Its
    throughput is also shown as a share of (b)'s.

Throughput: a backlog is loaded into a fresh input topic, then a worker is started, and
an independent client (kafka-python's admin client) polls the input offsets the worker's
group has committed, every 20 ms. The rate is the events committed between the first
commit seen and the last one before the backlog's end, over the time between them (the
final commit is left out: at least once, a batch's offsets are committed after the next
gathering returns, which at the end of a backlog first waits 0.5 s for events); the cold
start (process start to the first commit seen) is reported on its own. One warm-up run
of each worker, on ``--events`` events, is discarded and sizes the backlogs: each
measured run drains for at least ``--drain-seconds`` (a run that drained faster is run
again on a larger backlog). Then (a), (b) and (c) alternate ``--rounds`` times and the
median is kept, so none always runs on a colder broker.

Memory (``--memory-events``, before the rest): the model worker drains a backlog of small
(demo) events, one of events of exactly ``--max-message-bytes`` (valid, padded with a
field the contract ignores, so each is decoded and scored), and one of events a byte
over it (each dead-lettered whole), and the worker's peak resident memory (``VmHWM``) is
read before it stops; both large kinds once more with the consumer's prefetch queue
capped (``--prefetch-kbytes``, with ``fetch.queue.backoff.ms`` at 10 ms, passed as ``-X``
client properties). ``-X KEY=VALUE`` passes a client property to every worker.

Latency: a worker runs while events are produced at a steady rate, first 1,000 events/s,
then half the model's measured maximum; readers note when each event's output (its
prediction, or its dead letter) becomes visible to ``read_committed`` readers, and the
latency is arrival minus send time, over every event sent. An event that never arrives
fails the run. One model run at 1,000/s is discarded as a warm-up; then each worker runs
``--latency-rounds`` times at each rate, in alternating order, and the percentiles are
taken over the events of all those runs together. The same is measured with no worker
at all (``no-worker``: the readers read the input topic itself): the floor that this
machine's broker and the benchmark's own producer and readers set, against which a
worker's share of the latency shows; each worker's metrics then tell, per micro-batch,
how many events it held and how long its commit and its scoring took. Every worker is a
process of its own with one onnxruntime thread.
``--profile`` adds one model run per guarantee under cProfile and prints where its time
goes, stage by stage. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoring.dev.demo.data import KEY, generate_day  # noqa: E402
from scoring.dev.kafka_broker import free_port  # noqa: E402
from scoring.stream import clients  # noqa: E402
from scoring.stream import main as stream_job  # noqa: E402
from scoring.stream import topics as topics_io  # noqa: E402
from scoring.stream.events import to_events  # noqa: E402
from scoring.stream.metrics import fetch_health  # noqa: E402
from scoring.stream.processor import StreamConfig  # noqa: E402

PARTITIONS = 3
MODES = ("pass-through", "model", "shadow")
FLOOR = "no-worker"  # latency only: the benchmark's producer straight to its readers
LATENCY_MODES = (FLOOR, *MODES)
GUARANTEES = ("exactly-once", "at-least-once")
TARGETS = {"exactly-once": (40_000, 50.0), "at-least-once": (60_000, 15.0)}
SHADOW_TARGET = 0.55  # (c) at least this share of (b)'s throughput
# How often the group's committed offsets are read during a throughput run, and how long
# a run may go without a commit before it fails.
POLL_S = 0.02
STALL_S = 120.0
# The last memory runs' consumer prefetch (librdkafka's default: 65,536 KiB), and how soon
# a partition is fetched again once its queue is below that (librdkafka's default, 1 s,
# leaves a small queue empty most of the time).
PREFETCH_KBYTES = 16_384
PREFETCH_BACKOFF_MS = 10


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pass-through-worker"]:  # internal: a worker process started below
        sys.exit(_pass_through_worker(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events",
        type=int,
        default=100_000,
        help="events of each warm-up throughput run, whose rate sizes the measured backlogs",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=10.0,
        help="the least time each measured throughput run drains its backlog for",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternated runs, median kept (0: only the memory runs and --profile)",
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each latency run")
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=2,
        help="alternated latency runs per worker and rate; every event of every run counts "
        "(0: none)",
    )
    defaults = StreamConfig("", "", "", "", "")  # the processor's own defaults
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--batch-wait-ms", type=int, default=defaults.batch_wait_ms)
    parser.add_argument("--guarantee", choices=(*GUARANTEES, "both"), default="both")
    parser.add_argument(
        "--memory-events",
        type=int,
        default=20_000,
        help="events of each memory run (0: none)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=defaults.max_message_bytes,
        help="the workers' limit, and the size of the memory runs' large events",
    )
    parser.add_argument(
        "--prefetch-kbytes",
        type=int,
        default=PREFETCH_KBYTES,
        help="the consumer's prefetch queue (queued.max.messages.kbytes) in the last memory runs",
    )
    parser.add_argument(
        "-X",
        dest="properties",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka property for every worker (-X of scoring.stream.main); repeatable",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, one more model run under cProfile: where a worker's time goes",
    )
    _benchmark(parser.parse_args(argv))


def _pass_through_worker(argv: list[str]) -> int:
    """The processor with decoding and scoring replaced by a prediction-sized copy."""
    from scoring.stream.events import H_MODEL_NAME, H_MODEL_VERSION, encode_prediction
    from scoring.stream.processor import Processor
    from scoring.stream.stages import Batch, Outgoing

    # As long as a demo prediction: key field, score, label, model, two ISO times.
    size = len(
        encode_prediction(
            "transaction_id",
            "t-2026-11-02-000001",
            0.123456789,
            0,
            ("model", "local"),
            "2026-11-25T16:05:00.000Z",
            "2026-11-25T16:05:00.002Z",
        )
    )
    headers = [(H_MODEL_NAME, b"model"), (H_MODEL_VERSION, b"local")]

    class PassThrough(Processor):
        def outgoing(self, batch: Batch) -> Outgoing:
            out = self.config.output_topic
            return Outgoing(
                [
                    (out, k, (v or b"")[:size], headers)
                    for k, v in zip(batch.keys, batch.values, strict=True)
                ],
                [],
            )

    PassThrough(stream_job.config_from(stream_job.parse_args(argv))).run()
    return 0


def _benchmark(args: argparse.Namespace) -> None:
    from rich.console import Console
    from scoring.dev import kafka_broker
    from scoring.dev.demo.train import train
    from scoring.lifecycle.packaging import build, write_artifact

    console = Console()
    work = Path(tempfile.mkdtemp(prefix="scoring-stream-bench-"))
    with console.status("training and packaging the demo model"):
        trained = train(generate_day(date(2026, 11, 1), 20_000), work / "trained", "bench", 0)
        spec = json.loads(trained.contract_file.read_text())
        packaged = build(trained.model_file, trained.sample_file, spec=spec)
        model = work / "model"
        write_artifact(packaged, model)
        names = packaged.contract.feature_names
    with console.status("training and packaging a second model, the challenger"):
        second = train(
            generate_day(date(2026, 11, 4), 20_000, seed=7), work / "trained-2", "bench", 0
        )
        challenger = work / "challenger"
        write_artifact(build(second.model_file, second.sample_file, spec=spec), challenger)
    pool = EventPool(names)
    broker = kafka_broker.start(work / "kafka")
    console.print(f"broker {broker.bootstrap}; work dir {work}")
    guarantees = GUARANTEES if args.guarantee == "both" else (args.guarantee,)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    memory: list[Memory] = []
    try:
        if args.memory_events:
            run = Run(broker.bootstrap, model, "model", guarantees[0], args, work)
            memory = _memory(console, run, pool, args)
        for guarantee in guarantees if args.rounds else ():
            runs = {
                mode: Run(broker.bootstrap, model, mode, guarantee, args, work, challenger)
                for mode in LATENCY_MODES
            }
            drained = _throughput(console, runs, pool, guarantee, args)
            rates = {mode: [d.rate for d in runs_] for mode, runs_ in drained.items()}
            half = int(statistics.median(rates["model"]) / 2)
            paced = {
                rate: list(
                    to_events(
                        generate_day(date(2026, 11, 3), rate * args.seconds, seed=5), KEY, names
                    )
                )
                for rate in ((1000, half) if args.latency_rounds else ())
            }
            # Every event of every measured run counts; the first run after the
            # throughput runs meets a broker still busy with them, so it is discarded.
            millis: dict[tuple[str, int], list[float]] = {
                (mode, rate): [] for mode in runs for rate in paced
            }
            worked: dict[tuple[str, int], Counter[str]] = {
                (mode, rate): Counter() for mode in runs for rate in paced
            }
            for round_ in range(args.latency_rounds + 1) if args.latency_rounds else ():
                order = LATENCY_MODES if round_ % 2 else tuple(reversed(LATENCY_MODES))
                for mode in order if round_ else ("model",):
                    for rate, events in paced.items() if round_ else [(1000, paced[1000])]:
                        with console.status(f"{guarantee}, {mode}: latency at {rate:,}/s"):
                            run_millis, work_done = runs[mode].latency(events, rate)
                        if round_:
                            millis[(mode, rate)] += run_millis
                            worked[(mode, rate)].update(work_done)
                        console.print(
                            f"{guarantee:>13} {mode:>12} at {rate:>6,}/s, run {round_}: "
                            + _spread(run_millis)
                            + ("" if round_ else " (warm-up, discarded)")
                        )
            for mode in LATENCY_MODES:
                measured = drained.get(mode)
                results[(mode, guarantee)] = {
                    "rate": statistics.median(rates[mode]) if measured else None,
                    "drain_s": statistics.median(d.drain_s for d in measured) if measured else None,
                    "cold_start_s": (
                        statistics.median(d.cold_start_s for d in measured) if measured else None
                    ),
                    "backlog": max(d.events for d in measured) if measured else None,
                    "latency": {
                        rate: _percentiles(millis[(mode, rate)])
                        for rate in paced
                        if millis[(mode, rate)]
                    },
                    "worked": {rate: worked[(mode, rate)] for rate in paced},
                }
        if args.profile:
            for guarantee in guarantees:
                run = Run(broker.bootstrap, model, "model", guarantee, args, work)
                run.profile = work / f"profile-{guarantee}.out"
                with console.status(f"{guarantee}: a model run under cProfile"):
                    done = run.throughput(pool.take(args.events))
                console.print(f"{guarantee}, under cProfile: {done.rate:,.0f} events/s")
                _print_profile(console, run.profile)
    finally:
        kafka_broker.stop(broker)
    if memory:
        _report_memory(console, memory, args)
    if results:
        _report(console, results, args)


def _throughput(
    console: Any, runs: dict[str, Run], pool: EventPool, guarantee: str, args: argparse.Namespace
) -> dict[str, list[Drained]]:
    """Each worker's measured throughput runs: a warm-up, then ``--rounds`` alternated.

    The warm-up's rate sizes the worker's backlog so that a run drains for at least
    ``--drain-seconds``; a run that still drained faster is run again on a larger one.
    """
    backlog: dict[str, int] = {}
    drained: dict[str, list[Drained]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds + 1):
        for mode in MODES if round_ % 2 else reversed(MODES):
            size = backlog.get(mode, args.events)
            while True:
                with console.status(
                    f"{guarantee}, {mode}: throughput run {round_} ({size:,} events)"
                ):
                    done = runs[mode].throughput(pool.take(size))
                # The backlog a drain of at least --drain-seconds needs, with a margin.
                needed = _round_up(done.rate * args.drain_seconds * 1.25, 10_000)
                short = round_ > 0 and done.drain_s < args.drain_seconds
                console.print(
                    f"{guarantee:>13} {mode:>12} run {round_}: {done.rate:>9,.0f} events/s "
                    f"over {done.drain_s:.1f} s of {size:,} events, cold start "
                    f"{done.cold_start_s:.1f} s"
                    + (" (warm-up, discarded)" if not round_ else "")
                    + (" (shorter than --drain-seconds: again, on more)" if short else "")
                )
                if not round_:
                    backlog[mode] = max(args.events, needed)
                    break
                if not short:
                    drained[mode].append(done)
                    break
                size = backlog[mode] = max(size + 10_000, needed)
    return drained


def _memory(console: Any, run: Run, pool: EventPool, args: argparse.Namespace) -> list[Memory]:
    """The model worker's peak memory over backlogs of small, largest and too large events."""
    n, limit = args.memory_events, args.max_message_bytes
    small = pool.take(n)
    largest, over = _padded(small, limit), _padded(small, limit + 1)
    prefetch = {
        "queued.max.messages.kbytes": str(args.prefetch_kbytes),
        "fetch.queue.backoff.ms": str(PREFETCH_BACKOFF_MS),
    }
    cases: list[tuple[str, list[tuple[bytes, bytes]], dict[str, str]]] = [
        ("demo events", small, {}),
        ("at --max-message-bytes", largest, {}),
        ("1 byte over: dead letters", over, {}),
        ("at --max-message-bytes", largest, prefetch),
        ("1 byte over: dead letters", over, prefetch),
    ]
    measured = []
    for label, events, kafka in cases:
        with console.status(f"memory: {n:,} events, {label}"):
            done = run.throughput(events, kafka=kafka)
        size = statistics.mean(len(value) for _, value in events)
        measured.append(Memory(label, len(events), size, kafka, done))
        settings = "".join(f" {k}={v}" for k, v in kafka.items())
        console.print(
            f"memory: {label:>26}, {size:>8,.0f} B each{settings}: "
            f"peak RSS {done.peak_rss_mb:,.0f} MB, {done.rate:,.0f} events/s"
        )
    return measured


def _padded(events: list[tuple[bytes, bytes]], size: int) -> list[tuple[bytes, bytes]]:
    """``events`` each grown to exactly ``size`` bytes by a field no contract reads."""
    padded = []
    for key, value in events:
        room = size - len(value) - len(b',"padding":""')
        if room < 0:
            raise SystemExit(f"an event of {len(value)} bytes does not fit in {size}")
        padded.append((key, value[:-1] + b',"padding":"' + b"x" * room + b'"}'))
    return padded


def _round_up(value: float, step: int) -> int:
    return math.ceil(value / step) * step


class EventPool:
    """Demo events, generated as needed (a day's worth per 100,000, each day its own keys)."""

    CHUNK = 100_000

    def __init__(self, names: Sequence[str]) -> None:
        self.names = names
        self.events: list[tuple[bytes, bytes]] = []

    def take(self, n: int) -> list[tuple[bytes, bytes]]:
        """The first ``n`` events."""
        while len(self.events) < n:
            chunk = len(self.events) // self.CHUNK
            day = date(2026, 11, 2) + timedelta(days=chunk)
            table = generate_day(day, self.CHUNK, seed=3 + chunk)
            self.events += to_events(table, KEY, self.names)
        return self.events[:n]


@dataclass(frozen=True)
class Drained:
    """One throughput run, as the group's committed input offsets tell it.

    ``steps``: (seconds since the process started, events committed), at each change seen;
    ``peak_rss_mb``: the worker's peak resident memory; ``batches``: its micro-batches.
    """

    events: int
    steps: list[tuple[float, int]]
    peak_rss_mb: float
    batches: int

    @property
    def cold_start_s(self) -> float:
        """From the worker's start to its first commit seen."""
        return self.steps[0][0]

    @property
    def drain_s(self) -> float:
        """From the first commit seen to the backlog's end committed."""
        return self.steps[-1][0] - self.steps[0][0]

    @property
    def rate(self) -> float:
        """Events/s between the first commit seen and the last one before the final commit.

        At least once, the final batch's offsets wait for the next gathering, which first
        waits 0.5 s for events that never come; with fewer than three commits seen, the
        final one is kept.
        """
        first, last = self.steps[0], self.steps[-2] if len(self.steps) > 2 else self.steps[-1]
        return (last[1] - first[1]) / (last[0] - first[0])


@dataclass(frozen=True)
class Memory:
    """One memory run: its events, their mean size, the worker's extra client properties."""

    label: str
    events: int
    size: float
    kafka: Mapping[str, str]
    done: Drained


class Committed:
    """The input offsets a group has committed, read with kafka-python's admin client: a
    client of its own, independent of the worker's (librdkafka)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        from kafka import KafkaAdminClient

        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-progress")
        self._total = 0

    def backlog(self) -> int:
        """The events the topic holds: the sum of its partitions' end offsets."""
        from kafka import KafkaConsumer, TopicPartition

        reader = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            partitions = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
            return sum(reader.end_offsets(partitions).values())
        finally:
            reader.close()

    def total(self) -> int:
        """The sum over the topic's partitions (the last answer, while the broker says none)."""
        from kafka.errors import KafkaError

        try:
            groups = self._admin.list_group_offsets(self.group)
        except KafkaError:  # the group's coordinator is loading or moving: ask again
            return self._total
        offsets = groups.get(self.group, {})
        self._total = max(
            self._total,
            sum(o.offset for tp, o in offsets.items() if tp.topic == self.topic and o.offset > 0),
        )
        return self._total

    def close(self) -> None:
        self._admin.close()


# Where a worker's main thread spends its time, by stage (cumulative seconds of these
# functions). The commit thread sends a batch while the next one is gathered and scored;
# the main thread's wait for it is the last stage.
STAGES = {
    "gather (consume)": "gather",
    "decode and validate": "decode_and_validate",
    "score (contract checks + onnxruntime)": "score",
    "route (encode predictions)": "route",
    "wait for the previous batch's commit": "_settle",
}


def _print_profile(console: Any, path: Path) -> None:
    import pstats

    from rich.table import Table

    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    seconds = {
        label: sum(ct for (_, _, name), (_, _, _, ct, _) in raw.items() if name == function)
        for label, function in STAGES.items()
    }
    total = sum(seconds.values())
    table = Table(title=f"Where the main thread's time goes: {path.name} (cumulative s)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for label, spent in seconds.items():
        table.add_row(label, f"{spent:.2f}", f"{spent / total:.0%}" if total else "")
    console.print(table)
    stats.sort_stats("tottime").print_stats(25)


def _report(console: Any, results: dict[tuple[str, str], dict[str, Any]], args: Any) -> None:
    from rich.table import Table

    table = Table(
        title=f"Stream: backlogs drained for at least {args.drain_seconds:.0f} s (median of "
        f"{args.rounds}, rates from the group's committed offsets); latency over every event "
        f"of {args.latency_rounds} runs"
        + (f"; workers with -X {' -X '.join(args.properties)}" if args.properties else "")
    )
    columns = ("guarantee", "worker", "events/s", "vs pass-through", "backlog", "drain s")
    for column in (*columns, "cold start s", "at rate"):
        table.add_column(column, justify="right")
    for column in ("p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    for (mode, guarantee), r in results.items():
        ceiling = results[("pass-through", guarantee)]["rate"]
        if r["rate"] is None and not r["latency"]:
            continue  # no-worker, with no latency runs
        rows = list(r["latency"].items()) or [(None, None)]  # --latency-rounds 0
        for i, (rate, lat) in enumerate(rows):
            measured = i == 0 and r["rate"] is not None
            table.add_row(
                guarantee if i == 0 else "",
                mode if i == 0 else "",
                f"{r['rate']:,.0f}" if measured else "",
                f"{r['rate'] / ceiling:.0%}" if measured else "",
                f"{r['backlog']:,}" if measured else "",
                f"{r['drain_s']:.1f}" if measured else "",
                f"{r['cold_start_s']:.1f}" if measured else "",
                f"{rate:,}/s" if rate else "",
                *(f"{lat[k]:.1f}" if lat else "" for k in ("p50", "p95", "p99", "max")),
            )
    console.print(table)
    _report_batches(console, results)
    for guarantee, (floor, p99) in TARGETS.items():
        if ("model", guarantee) not in results:
            continue
        r = results[("model", guarantee)]
        ratio = r["rate"] / results[("pass-through", guarantee)]["rate"]
        latency = ""
        if 1000 in r["latency"]:
            at_1000 = r["latency"][1000]["p99"]
            no_worker = results[(FLOOR, guarantee)]["latency"][1000]["p99"]
            latency = (
                f"; p99 {at_1000:.1f} ms at 1,000/s (target {p99:.0f} ms: "
                f"{'met' if at_1000 <= p99 else 'MISSED'}; with no worker at all "
                f"{no_worker:.1f} ms)"
            )
        console.print(
            f"{guarantee}: {r['rate']:,.0f} events/s (target {floor:,}: "
            f"{'met' if r['rate'] >= floor else 'MISSED'}); model {ratio:.0%} of pass-through "
            f"(target 80%: {'met' if ratio >= 0.8 else 'MISSED'}){latency}"
        )
        if ("shadow", guarantee) in results:
            shadow = results[("shadow", guarantee)]["rate"]
            share = shadow / r["rate"]
            console.print(
                f"{guarantee}: with a shadow {shadow:,.0f} events/s, {share:.0%} of the "
                f"single-model run (target {SHADOW_TARGET:.0%}: "
                f"{'met' if share >= SHADOW_TARGET else 'MISSED'})"
            )


def _report_memory(console: Any, memory: list[Memory], args: Any) -> None:
    """The worker's peak resident memory per backlog, and above the small events' run."""
    from rich.table import Table

    table = Table(
        title=f"Memory: the model worker's peak RSS draining {args.memory_events:,} events "
        f"(batches of up to {args.batch_size:,} events)"
    )
    columns = ("events", "bytes each", "backlog MB", "client properties", "events/s")
    for column in (*columns, "MB per batch", "peak RSS MB", "over demo events MB"):
        table.add_column(column, justify="right")
    base = memory[0].done.peak_rss_mb
    for m in memory:
        table.add_row(
            m.label,
            f"{m.size:,.0f}",
            f"{m.events * m.size / 1e6:,.0f}",
            " ".join(f"{k}={v}" for k, v in m.kafka.items()) or "defaults",
            f"{m.done.rate:,.0f}",
            f"{m.events * m.size / m.done.batches / 1e6:,.1f}",
            f"{m.done.peak_rss_mb:,.0f}",
            f"{m.done.peak_rss_mb - base:+,.0f}",
        )
    console.print(table)


def _report_batches(console: Any, results: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Where the latency runs' time went, by the workers' own metrics: per micro-batch,
    its events, the commit (records sent and the transaction or offsets committed) and
    decoding, checking and scoring."""
    from rich.table import Table

    table = Table(title="Latency runs, per micro-batch (means, from the workers' metrics)")
    for column in ("guarantee", "worker", "at rate", "batches", "events", "commit ms", "score ms"):
        table.add_column(column, justify="right")
    for (mode, guarantee), r in results.items():
        for rate, worked in r["worked"].items():
            batches = worked["batches"]
            if not batches:
                continue
            table.add_row(
                guarantee,
                mode,
                f"{rate:,}/s",
                f"{batches:,.0f}",
                f"{worked['events'] / batches:,.1f}",
                f"{worked['commit_s'] / batches * 1000:.1f}",
                f"{worked['score_s'] / batches * 1000:.1f}" if worked["score_s"] else "",
            )
    if table.row_count:
        console.print(table)


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
        challenger: Path | None = None,
    ) -> None:
        self.bootstrap, self.model, self.mode, self.guarantee = bootstrap, model, mode, guarantee
        self.args, self.work, self.challenger = args, work, challenger
        self.runs = 0
        self.profile: Path | None = None

    def _topics(self) -> tuple[str, str, str]:
        self.runs += 1
        base = f"{self.mode}-{self.guarantee}-{self.runs}-{time.time_ns()}"
        names = (f"{base}.in", f"{base}.out", f"{base}.dlq")
        topics_io.create(self.bootstrap, names, PARTITIONS)
        return names

    def _start(
        self,
        topics: tuple[str, str, str],
        ready: bool = True,
        kafka: Mapping[str, str] | None = None,
    ) -> tuple[subprocess.Popen[bytes], int]:
        """A worker on ``topics``; with ``ready``, once it holds its partitions."""
        port = free_port()
        options = [
            "--group", self._group(topics),
            "--guarantee", self.guarantee,
            "--batch-size", str(self.args.batch_size),
            "--batch-wait-ms", str(self.args.batch_wait_ms),
            "--max-message-bytes", str(self.args.max_message_bytes),
            "--metrics-port", str(port),
            "--ort-threads", "1",
        ]  # fmt: skip
        if self.mode == "shadow":
            assert self.challenger is not None
            options += ["--shadow", str(self.challenger), "--shadow-topic", f"{topics[0]}.shadow"]
        properties = dict(p.split("=", 1) for p in self.args.properties) | dict(kafka or {})
        command = stream_job.command(
            str(self.model), topics, self.bootstrap, *options, kafka=properties
        )
        if self.mode == "pass-through":
            command[1:3] = [__file__, "pass-through-worker"]
        if self.profile is not None:
            command[1:1] = ["-m", "cProfile", "-o", str(self.profile)]
        log = (self.work / f"{topics[0]}.log").open("wb")
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if ready:
            _wait(lambda: (_health(port) or {}).get("assigned"), process, 90)
        return process, port

    @staticmethod
    def _group(topics: tuple[str, str, str]) -> str:
        return f"bench-{topics[0]}"

    def throughput(
        self, events: list[tuple[bytes, bytes]], kafka: Mapping[str, str] | None = None
    ) -> Drained:
        """A worker started on a backlog of ``events``, until the group has committed them all.

        ``kafka``: extra client properties for the worker (``-X``).
        """
        topics = self._topics()
        topics_io.produce(
            self.bootstrap, topics[0], events, properties={"linger.ms": 20, "batch.size": 262_144}
        )
        committed = Committed(self.bootstrap, self._group(topics), topics[0])
        # What the topic holds: the run waits for that, not for what was sent.
        backlog = committed.backlog()
        if backlog != len(events):
            print(f"{topics[0]}: the topic holds {backlog:,} of the {len(events):,} events sent")
        started = time.perf_counter()
        process, port = self._start(topics, ready=False, kafka=kafka)
        steps: list[tuple[float, int]] = []
        try:
            while not steps or steps[-1][1] < backlog:
                done, now = committed.total(), time.perf_counter() - started
                if done and (not steps or done > steps[-1][1]):
                    steps.append((now, done))
                if process.poll() is not None:
                    raise SystemExit(f"worker exited; see {self.work}")
                if now - (steps[-1][0] if steps else 0.0) > STALL_S:
                    raise SystemExit(
                        f"no commit for {STALL_S:.0f} s at {done:,} of {backlog:,} events; "
                        f"see {self.work}"
                    )
                time.sleep(POLL_S)
            peak = _peak_rss_mb(process.pid)
            batches = _worked(port)["batches"]
        finally:
            _stop(process)
            committed.close()
            topics_io.delete(self.bootstrap, [*topics, f"{topics[0]}.shadow"])
        if len(steps) < 2:
            # The rate is taken between two commits; one is not a rate.
            raise SystemExit(
                f"all {len(events):,} events were committed at once; raise --events to "
                "measure a rate"
            )
        return Drained(backlog, steps, peak, int(batches))

    def latency(
        self, events: list[tuple[bytes, bytes]], rate: int
    ) -> tuple[list[float], Counter[str]]:
        """Each event's latency in ms (its output's arrival minus its send time), and the
        worker's own account of its micro-batches (:func:`_worked`)."""
        topics = self._topics()
        process, port = (None, 0) if self.mode == FLOOR else self._start(topics)
        sent: dict[bytes, float] = {}
        arrived: dict[bytes, float] = {}
        stop = threading.Event()
        # A refused event's output is its dead letter: both topics are read. With no
        # worker, the input topic itself (and the empty dead-letter topic, so the
        # readers' share of the machine stays the same).
        read = topics[::2] if process is None else topics[1:]
        readers = [
            threading.Thread(target=_read, args=(self.bootstrap, topic, arrived, stop))
            for topic in read
        ]
        for reader in readers:
            reader.start()
        try:
            producer = clients.producer(self.bootstrap, defaults={"linger.ms": 0})
            # Warm the path up with events of their own keys; they are not measured.
            for i in range(200):
                producer.produce(topics[0], events[i % len(events)][1], b"warm-up-%d" % i)
            producer.flush(30)
            _until(lambda: sum(k.startswith(b"warm-up-") for k in list(arrived)) >= 200, 30)
            step = max(1, rate // 200)  # a send every 5 ms
            began = time.perf_counter()
            for i in range(0, len(events), step):
                pause = began + i / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                for key, value in events[i : i + step]:
                    sent[key] = time.perf_counter()
                    producer.produce(topics[0], value, key)
                producer.poll(0)
            producer.flush(30)
            _until(lambda: all(k in arrived for k in sent), 30)
            work_done = _worked(port) if process is not None else Counter()
        finally:
            stop.set()
            for reader in readers:
                reader.join()
            if process is not None:
                _stop(process)
        missing = [k for k in sent if k not in arrived]
        if missing:
            raise SystemExit(
                f"{len(missing)} of {len(sent)} events never arrived ({self.mode}, "
                f"{self.guarantee}, {rate}/s); see {self.work}"
            )
        return [(arrived[k] - t) * 1000 for k, t in sent.items()], work_done


def _read(bootstrap: str, topic: str, arrived: dict[bytes, float], stop: threading.Event) -> None:
    reader = topics_io.reader(bootstrap, topic, PARTITIONS, properties={"fetch.wait.max.ms": 5})
    while not stop.is_set():
        for records in reader.poll(timeout_ms=20).values():
            now = time.perf_counter()
            for record in records:
                if record.key is not None:
                    arrived.setdefault(record.key, now)
    reader.close()


# What a worker's /metrics says of its micro-batches: how many, their events, and the
# seconds spent committing them (on the commit thread) and scoring them (main thread).
WORKED = {
    "batches": "scoring_stream_batches_total",
    "events": "scoring_stream_events_in_total",
    "commit_s": "scoring_stream_commit_seconds_sum",
    "score_s": "scoring_stream_score_seconds_sum",
}


def _worked(port: int) -> Counter[str]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
    return Counter({label: samples.get(name, 0.0) for label, name in WORKED.items()})


def _peak_rss_mb(pid: int) -> float:
    """A live process's peak resident memory so far (Linux's ``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise SystemExit(f"no VmHWM in /proc/{pid}/status: the memory runs need Linux")


def _health(port: int) -> dict[str, Any] | None:
    try:
        return fetch_health(f"http://127.0.0.1:{port}/health")
    except (OSError, ValueError):
        return None


def _until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)


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


def _percentiles(millis: list[float]) -> dict[str, float]:
    ordered = sorted(millis)
    return {
        "p50": _percentile(ordered, 50),
        "p95": _percentile(ordered, 95),
        "p99": _percentile(ordered, 99),
        "max": ordered[-1],
    }


def _spread(millis: list[float]) -> str:
    return "  ".join(f"{k} {v:.1f} ms" for k, v in _percentiles(millis).items())


def _percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted ``values``."""
    index = min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))
    return values[index]


if __name__ == "__main__":
    main()
