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

Throughput: ``--events`` events are loaded into a fresh input topic, then a worker is
started and timed from its first committed batch to its last (events/s at saturation).
One warm-up run of each worker is discarded; then (a), (b) and (c) alternate ``--rounds``
times and the median is kept, so none always runs on a colder broker.

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
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoring.dev.kafka_broker import free_port  # noqa: E402
from scoring.stream import clients  # noqa: E402
from scoring.stream import main as stream_job  # noqa: E402
from scoring.stream import topics as topics_io  # noqa: E402
from scoring.stream.metrics import fetch_health  # noqa: E402
from scoring.stream.processor import StreamConfig  # noqa: E402

PARTITIONS = 3
MODES = ("pass-through", "model", "shadow")
FLOOR = "no-worker"  # latency only: the benchmark's producer straight to its readers
LATENCY_MODES = (FLOOR, *MODES)
GUARANTEES = ("exactly-once", "at-least-once")
TARGETS = {"exactly-once": (40_000, 50.0), "at-least-once": (60_000, 15.0)}
SHADOW_TARGET = 0.55  # (c) at least this share of (b)'s throughput


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pass-through-worker"]:  # internal: a worker process started below
        sys.exit(_pass_through_worker(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="events per throughput run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternated runs, median kept (0: profile only)"
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each latency run")
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=2,
        help="alternated latency runs per worker and rate; every event of every run counts",
    )
    defaults = StreamConfig("", "", "", "", "")  # the processor's own defaults
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--batch-wait-ms", type=int, default=defaults.batch_wait_ms)
    parser.add_argument("--guarantee", choices=(*GUARANTEES, "both"), default="both")
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
    from scoring.dev.demo.data import KEY, generate_day
    from scoring.dev.demo.train import train
    from scoring.lifecycle.packaging import build, write_artifact
    from scoring.stream.events import to_events

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
    with console.status("generating events"):
        saturate = list(to_events(generate_day(date(2026, 11, 2), args.events, seed=3), KEY, names))
    broker = kafka_broker.start(work / "kafka")
    console.print(f"broker {broker.bootstrap}; work dir {work}")
    guarantees = GUARANTEES if args.guarantee == "both" else (args.guarantee,)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        for guarantee in guarantees if args.rounds else ():
            runs = {
                mode: Run(broker.bootstrap, model, mode, guarantee, args, work, challenger)
                for mode in LATENCY_MODES
            }
            rates: dict[str, list[float]] = {mode: [] for mode in MODES}
            for round_ in range(args.rounds + 1):
                for mode in MODES if round_ % 2 else reversed(MODES):
                    with console.status(f"{guarantee}, {mode}: throughput run {round_}"):
                        rate = runs[mode].throughput(saturate)
                    if round_:  # round 0 warms the broker and the page cache up
                        rates[mode].append(rate)
                    console.print(
                        f"{guarantee:>13} {mode:>12} run {round_}: {rate:>9,.0f} events/s"
                        + ("" if round_ else " (warm-up, discarded)")
                    )
            half = int(statistics.median(rates["model"]) / 2)
            paced = {
                rate: list(
                    to_events(
                        generate_day(date(2026, 11, 3), rate * args.seconds, seed=5), KEY, names
                    )
                )
                for rate in (1000, half)
            }
            # Every event of every measured run counts; the first run after the
            # throughput runs meets a broker still busy with them, so it is discarded.
            millis: dict[tuple[str, int], list[float]] = {
                (mode, rate): [] for mode in runs for rate in paced
            }
            worked: dict[tuple[str, int], Counter[str]] = {
                (mode, rate): Counter() for mode in runs for rate in paced
            }
            for round_ in range(args.latency_rounds + 1):
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
                results[(mode, guarantee)] = {
                    "rate": statistics.median(rates[mode]) if mode in rates else None,
                    "latency": {rate: _percentiles(millis[(mode, rate)]) for rate in paced},
                    "worked": {rate: worked[(mode, rate)] for rate in paced},
                }
        if args.profile:
            for guarantee in guarantees:
                run = Run(broker.bootstrap, model, "model", guarantee, args, work)
                run.profile = work / f"profile-{guarantee}.out"
                with console.status(f"{guarantee}: a model run under cProfile"):
                    rate = run.throughput(saturate)
                console.print(f"{guarantee}, under cProfile: {rate:,.0f} events/s")
                _print_profile(console, run.profile)
    finally:
        kafka_broker.stop(broker)
    _report(console, results, args)


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
        title=f"Stream: {args.events:,} events at saturation (median of {args.rounds}); "
        f"latency over every event of {args.latency_rounds} runs"
    )
    for column in ("guarantee", "worker", "events/s", "vs pass-through", "at rate"):
        table.add_column(column, justify="right")
    for column in ("p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    for (mode, guarantee), r in results.items():
        ceiling = results[("pass-through", guarantee)]["rate"]
        for i, (rate, lat) in enumerate(r["latency"].items()):
            measured = i == 0 and r["rate"] is not None
            table.add_row(
                guarantee if i == 0 else "",
                mode if i == 0 else "",
                f"{r['rate']:,.0f}" if measured else "",
                f"{r['rate'] / ceiling:.0%}" if measured else "",
                f"{rate:,}/s",
                *(f"{lat[k]:.1f}" for k in ("p50", "p95", "p99", "max")),
            )
    console.print(table)
    _report_batches(console, results)
    for guarantee, (floor, p99) in TARGETS.items():
        if ("model", guarantee) not in results:
            continue
        r = results[("model", guarantee)]
        ratio = r["rate"] / results[("pass-through", guarantee)]["rate"]
        at_1000 = r["latency"][1000]["p99"]
        no_worker = results[(FLOOR, guarantee)]["latency"][1000]["p99"]
        console.print(
            f"{guarantee}: {r['rate']:,.0f} events/s (target {floor:,}: "
            f"{'met' if r['rate'] >= floor else 'MISSED'}); model {ratio:.0%} of pass-through "
            f"(target 80%: {'met' if ratio >= 0.8 else 'MISSED'}); p99 {at_1000:.1f} ms at "
            f"1,000/s (target {p99:.0f} ms: {'met' if at_1000 <= p99 else 'MISSED'}; "
            f"with no worker at all {no_worker:.1f} ms)"
        )
        if ("shadow", guarantee) in results:
            shadow = results[("shadow", guarantee)]["rate"]
            share = shadow / r["rate"]
            console.print(
                f"{guarantee}: with a shadow {shadow:,.0f} events/s, {share:.0%} of the "
                f"single-model run (target {SHADOW_TARGET:.0%}: "
                f"{'met' if share >= SHADOW_TARGET else 'MISSED'})"
            )


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

    def _start(self, topics: tuple[str, str, str]) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        options = [
            "--group", f"bench-{topics[0]}",
            "--guarantee", self.guarantee,
            "--batch-size", str(self.args.batch_size),
            "--batch-wait-ms", str(self.args.batch_wait_ms),
            "--metrics-port", str(port),
            "--ort-threads", "1",
        ]  # fmt: skip
        if self.mode == "shadow":
            assert self.challenger is not None
            options += ["--shadow", str(self.challenger), "--shadow-topic", f"{topics[0]}.shadow"]
        command = stream_job.command(str(self.model), topics, self.bootstrap, *options)
        if self.mode == "pass-through":
            command[1:3] = [__file__, "pass-through-worker"]
        if self.profile is not None:
            command[1:1] = ["-m", "cProfile", "-o", str(self.profile)]
        log = (self.work / f"{topics[0]}.log").open("wb")
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: (_health(port) or {}).get("assigned"), process, 90)
        return process, port

    def throughput(self, events: list[tuple[bytes, bytes]]) -> float:
        topics = self._topics()
        topics_io.produce(
            self.bootstrap, topics[0], events, properties={"linger.ms": 20, "batch.size": 262_144}
        )
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
                    if done == first[1]:
                        # The rate is taken between two readings; one is not a rate.
                        raise SystemExit(
                            f"all {done} events were scored before a second reading of the"
                            " worker's progress; raise --events to measure a rate"
                        )
                    return (done - first[1]) / (now - first[0])
                if process.poll() is not None:
                    raise SystemExit(f"worker exited; see {self.work}")
                time.sleep(0.05)
        finally:
            _stop(process)

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
