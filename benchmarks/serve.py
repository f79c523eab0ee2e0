"""Online serving: ``scoring serve`` against MLflow's own scoring server, on one machine.

Run it with ``make bench-serve`` (or ``.venv/bin/python benchmarks/serve.py``; ``--quick``
for 5-second runs while trying it out). In one run, with the load generator on the same
machine:

- the demo model is trained and packaged as ``scoring demo`` does it (six days of 20,000
  generated transactions, ``train``, ``build`` + ``write_artifact``), and the same fitted
  scikit-learn pipeline is saved in its native flavour (``mlflow.sklearn.save_model``,
  ``predict_proba``);
- the generator's own ceiling is measured first, against a trivial endpoint (a bare
  asyncio HTTP server that answers at once, ``benchmarks/serve_load.py``) with the same
  bodies: the floor every latency below includes, and the proof (or not) that the
  generator keeps its schedule at these rates;
- each server is started cold as a process of its own (``scoring serve ARTIFACT_DIR``;
  ``mlflow models serve -m FOLDER --env-manager local``), both on 127.0.0.1, one after the
  other, timed to its first ready answer, warmed with a few hundred unmeasured requests,
  and checked to give the same scores as the other (and ``scoring serve``'s metadata to
  list the inputs the bodies carry); the measured runs then alternate between the two,
  in an order flipped at each step, so that whatever else the machine does falls on
  both, each run starting once both servers are idle; at the end both are stopped with
  their whole process group (on Ctrl-C or a failure too);
- single-row requests at a fixed rate (500 and 1,000 a second, ``--seconds`` each), open
  loop: each request goes out at its scheduled time whether or not earlier ones returned,
  and its latency runs from that scheduled time, so a server that falls behind is charged
  for the queue it causes. p50, p99 and max are over every request; a request that fails
  (not a 200) or times out (``--timeout``) is an error, counted, and kept in the
  percentiles with the time until it failed;
- 100-row requests in a closed loop on 4 and 8 kept-alive connections (``--seconds``
  each): the most each server gives, in rows and requests a second.

Requests are rows of the day the demo scores (2026-11-07) that pass the contract with no
missing value, encoded once beforehand: a v2 tensor per input to
``/v2/models/fraud/infer``, and ``{"dataframe_records": [...]}`` to MLflow's
``/invocations``, over a pool of kept-alive connections (aiohttp; 64 for the fixed rates).
Every run also shows the CPU, in cores, that the server's process tree, the generator
(this process) and everything else on the machine used meanwhile, and how late the
generator sent its requests (``lag``). Targets: ``scoring serve``'s p99 at most 10 ms at
500 requests a second, and at least 3x MLflow's 100-row throughput. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import serve_load as load  # noqa: E402

START = date(2026, 11, 1)  # the demo's first day (scoring.dev.demo.run.START)
DAYS, ROWS_PER_DAY = 7, 20_000  # `scoring demo`'s defaults: six days trained, the 7th scored
NAME = "fraud"  # the demo's model name
RATES = (500, 1000)
CEILING_RATES = (500, 1000, 2000)
CONNECTIONS = (4, 8)
BATCH_ROWS = 100
POOL = 64  # kept-alive connections the open-loop client may hold
WARM_SINGLE, WARM_BATCH = 300, 40
P99_TARGET_MS, THROUGHPUT_TARGET = 10.0, 3.0
LAG_LIMIT_MS = 2.0  # a generator whose sends are later than this at p99 is off schedule
SERVERS = ("scoring", "mlflow")
TITLES = {
    "trivial": "trivial endpoint",
    "scoring": "scoring serve",
    "mlflow": "mlflow models serve",
}

err = Console(stderr=True, soft_wrap=True)


@dataclass
class Run:
    """One measured run and what the machine did meanwhile."""

    kind: str  # "rate" or "closed"
    level: float  # requests a second, or connections
    outcome: load.Outcome
    server_cores: float
    other_cores: float


@dataclass
class Server:
    """A server process of its own, in its own process group, on loopback."""

    key: str
    command: list[str]
    ready_url: str
    url: str  # where its requests go
    log: Path
    process: subprocess.Popen[bytes] | None = None
    ready_s: float = 0.0
    first_ms: float = 0.0
    rss_mb: float = 0.0
    runs: list[Run] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        started = time.perf_counter()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, cwd=self.log.parent,
            )  # fmt: skip
        _RUNNING.append(self)
        deadline = started + 180
        while not _answers(self.ready_url):
            if self.process.poll() is not None or time.perf_counter() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"{TITLES[self.key]} did not become ready:\n{tail}")
            time.sleep(0.05)
        self.ready_s = time.perf_counter() - started

    def cpu_s(self) -> float:
        """CPU seconds of the server's whole process tree so far."""
        assert self.process is not None
        total = 0.0
        try:
            root = psutil.Process(self.process.pid)
            for p in [root, *root.children(recursive=True)]:
                try:
                    times = p.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        return total

    def rss(self) -> float:
        assert self.process is not None
        root = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 1e6

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


_RUNNING: list[Server] = []


def _stop_all() -> None:
    while _RUNNING:
        _RUNNING.pop().stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--quick", action="store_true", help="5-second runs, to try it out")
    parser.add_argument("--timeout", type=float, default=5.0, help="a request's time limit, s")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 5.0
    servers = [s for s in args.servers.split(",") if s]
    if unknown := set(servers) - set(SERVERS):
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    # SIGTERM and SIGHUP unwind like Ctrl-C does, through the finally that stops the servers.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))
    work = Path(tempfile.mkdtemp(prefix="scoring-serve-bench-"))
    # As in an activated venv: `mlflow models serve` runs `uvicorn` from PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ, SCORING_HOME=str(work / "home"), PATH=path)
    try:
        bodies = _prepare(work)
        loop = load.new_loop()
        trivial = _measure_trivial(loop, work, env, bodies, args)
        measured = _measure(loop, servers, work, env, bodies, args)
    finally:
        _stop_all()
    err.print(f"work dir (models, server logs): {work}")
    _report(trivial, measured, args)


def _prepare(work: Path) -> dict[str, dict[str, list[bytes]]]:
    """Train and package the demo model for both servers; the request bodies, encoded."""
    from scoring.dev.demo.data import FEATURES, KEY, generate_day
    from scoring.dev.demo.train import train
    from scoring.lifecycle.packaging import build, write_artifact
    from scoring.model.contract import validate

    with err.status(f"training the demo model on {DAYS - 1} days of {ROWS_PER_DAY:,} rows"):
        history = pa.concat_tables(
            generate_day(START + timedelta(days=d), ROWS_PER_DAY) for d in range(DAYS - 1)
        )
        trained = train(history, work / "trained", "demo", 0)
    with err.status("packaging it (ONNX) for scoring serve, saving it for MLflow"):
        spec = json.loads(trained.contract_file.read_text())
        write_artifact(build(trained.model_file, trained.sample_file, spec=spec), work / "model")
        _save_native(trained.model_file, trained.sample_file, work / "native")
    day = generate_day(START + timedelta(days=DAYS - 1), ROWS_PER_DAY)
    complete = pa.array(validate(day, FEATURES).valid)
    for f in FEATURES:
        complete = pc.and_(complete, pc.is_valid(day[f.name]))
    rows = day.filter(complete)
    err.print(
        f"model ready; requests from {rows.num_rows:,} complete, valid rows of "
        f"{START + timedelta(days=DAYS - 1)}"
    )
    names = [f.name for f in FEATURES]
    types = {f.name: f.type for f in FEATURES}

    def v2(part: pa.Table) -> bytes:
        inputs = [{"name": KEY, "datatype": "BYTES", "shape": [part.num_rows],
                   "data": part[KEY].to_pylist()}]  # fmt: skip
        for name in names:
            values = part[name].to_pylist()
            datatype = "BYTES" if types[name] == "string" else "FP64"
            data = values if datatype == "BYTES" else [float(v) for v in values]
            inputs.append({"name": name, "datatype": datatype, "shape": [part.num_rows],
                           "data": data})  # fmt: skip
        return json.dumps({"inputs": inputs}).encode()

    def records(part: pa.Table) -> bytes:
        columns = {n: part[n].to_pylist() for n in names}
        as_float = {n for n in names if types[n] != "string"}
        listed = [
            {n: float(columns[n][i]) if n in as_float else columns[n][i] for n in names}
            for i in range(part.num_rows)
        ]
        return json.dumps({"dataframe_records": listed}).encode()

    singles = [rows.slice(i, 1) for i in range(min(2000, rows.num_rows))]
    batches = [
        rows.slice(i, BATCH_ROWS) for i in range(0, rows.num_rows - BATCH_ROWS + 1, BATCH_ROWS)
    ][:100]
    return {
        "scoring": {"single": [v2(r) for r in singles], "batch": [v2(b) for b in batches]},
        "mlflow": {"single": [records(r) for r in singles], "batch": [records(b) for b in batches]},
    }


def _save_native(model_file: Path, sample_file: Path, directory: Path) -> None:
    """The fitted pipeline in MLflow's scikit-learn flavour, answering ``predict_proba``."""
    import joblib
    import mlflow.sklearn
    import pyarrow.parquet as pq
    from mlflow.models import infer_signature
    from scoring.dev.demo.data import FEATURES
    from scoring.model.features import model_frame

    pipeline = joblib.load(model_file)  # train() writes it with joblib.dump
    frame = model_frame(pq.read_table(sample_file), FEATURES).dropna()
    mlflow.sklearn.save_model(
        pipeline,
        str(directory),
        pyfunc_predict_fn="predict_proba",
        # The benchmark's own freshly trained model: pickle is safe here.
        serialization_format="cloudpickle",
        signature=infer_signature(frame, pipeline.predict_proba(frame)),
    )


def _server(key: str, work: Path, taken: set[int]) -> Server:
    """The server's process (not started yet); its ports are added to ``taken``."""
    from scoring.dev.kafka_broker import free_port

    port = free_port(taken)
    taken.add(port)
    base = f"http://{load.HOST}:{port}"
    bin_dir = Path(sys.executable).parent
    log = work / f"{key}.log"
    if key == "trivial":
        command = [sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "trivial", str(port)]
        return Server(key, command, f"{base}/", f"{base}/infer", log)
    if key == "mlflow":
        command = [str(bin_dir / "mlflow"), "models", "serve", "-m", str(work / "native"),
                   "--env-manager", "local", "--host", load.HOST, "-p", str(port)]  # fmt: skip
        return Server(key, command, f"{base}/ping", f"{base}/invocations", log)
    grpc_port = free_port(taken)
    taken.add(grpc_port)
    command = [str(bin_dir / "scoring"), "serve", str(work / "model"), "--name", NAME,
               "--http-port", str(port), "--grpc-port", str(grpc_port)]  # fmt: skip
    return Server(key, command, f"{base}/v2/health/ready", f"{base}/v2/models/{NAME}/infer", log)


def _measure_trivial(
    loop: asyncio.AbstractEventLoop,
    work: Path,
    env: dict[str, str],
    bodies: dict[str, dict[str, list[bytes]]],
    args: argparse.Namespace,
) -> Server:
    """The generator against an endpoint that costs nothing: its floor and its ceiling."""
    server = _server("trivial", work, set())
    server.start(env)
    seconds = min(args.seconds, 10.0)
    single, batch = bodies["scoring"]["single"], bodies["scoring"]["batch"]
    try:
        _warm(loop, server, single, batch, args)
        for rate in CEILING_RATES:
            _open(loop, server, single, rate, seconds, args)
        for connections in CONNECTIONS:
            _closed(loop, server, batch, connections, seconds, args)
    finally:
        server.stop()
    return server


def _measure(
    loop: asyncio.AbstractEventLoop,
    keys: list[str],
    work: Path,
    env: dict[str, str],
    bodies: dict[str, dict[str, list[bytes]]],
    args: argparse.Namespace,
) -> dict[str, Server]:
    """Both servers started cold, one after the other, then measured in alternation.

    Alternating runs (and their order) spreads whatever else the machine does over both
    servers; before each run the idle server and the one just measured must be quiet.
    """
    taken: set[int] = set()
    servers = {key: _server(key, work, taken) for key in keys}
    try:
        for key, server in servers.items():
            err.print(f"{TITLES[key]}: starting cold ({' '.join(server.command[1:3])} ...)")
            server.start(env)
            err.print(f"{TITLES[key]}: ready after {server.ready_s:.1f} s; warming up")
            _warm(loop, server, bodies[key]["single"], bodies[key]["batch"], args)
            _check(key, server.url, bodies[key]["batch"][0])
        steps = [("rate", r) for r in RATES] + [("closed", c) for c in CONNECTIONS]
        for i, (kind, level) in enumerate(steps):
            for key in keys if i % 2 == 0 else keys[::-1]:
                _settle(list(servers.values()))
                single, batch = bodies[key]["single"], bodies[key]["batch"]
                if kind == "rate":
                    _open(loop, servers[key], single, level, args.seconds, args)
                else:
                    _closed(loop, servers[key], batch, level, args.seconds, args)
        for server in servers.values():
            server.rss_mb = server.rss()
    finally:
        for server in servers.values():
            server.stop()
    return servers


def _settle(servers: list[Server], quiet: float = 0.05, limit_s: float = 15.0) -> None:
    """Wait (at most ``limit_s``) until no server uses more than ``quiet`` of a core: one
    that was overloaded may still be working off requests its clients gave up on."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        before = sum(s.cpu_s() for s in servers)
        time.sleep(0.5)
        if sum(s.cpu_s() for s in servers) - before <= quiet * 0.5:
            return


def _warm(
    loop: asyncio.AbstractEventLoop,
    server: Server,
    single: list[bytes],
    batch: list[bytes],
    args: argparse.Namespace,
) -> None:
    async def warm() -> int:
        async with load.session(4, args.timeout) as client:
            sent = time.perf_counter()
            failed = await load.warm(client, server.url, single, 1, 1)
            server.first_ms = (time.perf_counter() - sent) * 1000
            failed += await load.warm(client, server.url, single, WARM_SINGLE, 4)
            return failed + await load.warm(client, server.url, batch, WARM_BATCH, 4)

    failed = loop.run_until_complete(warm())
    if failed:
        raise SystemExit(
            f"{TITLES[server.key]}: {failed} warm-up requests failed; see {server.log}"
        )


def _check(key: str, url: str, batch: bytes) -> None:
    """Both servers must answer with the same scores, or the comparison means nothing;
    ``scoring serve``'s metadata must list the inputs the bodies carry."""
    if key == "scoring":
        with urllib.request.urlopen(url.removesuffix("/infer"), timeout=30) as response:
            listed = [(i["name"], i["datatype"]) for i in json.loads(response.read())["inputs"]]
        sent = [(i["name"], i["datatype"]) for i in json.loads(batch)["inputs"]]
        if listed != sent:
            raise SystemExit(f"scoring serve's metadata lists {listed}; the bodies carry {sent}")
    request = urllib.request.Request(url, batch, headers=load.JSON)
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    if key == "scoring":
        scores = next(o["data"] for o in answer["outputs"] if o["name"] == "score")
    else:
        scores = [p[1] for p in answer["predictions"]]
    if len(scores) != BATCH_ROWS or any(s is None for s in scores):
        raise SystemExit(f"{TITLES[key]}: an unexpected answer to {BATCH_ROWS} rows: {answer}")
    _SCORES[key] = np.asarray(scores, dtype=float)
    if len(_SCORES) == 2:
        diff = float(np.max(np.abs(_SCORES["scoring"] - _SCORES["mlflow"])))
        err.print(f"both servers score the same {BATCH_ROWS} rows alike: max difference {diff:.1e}")
        if diff > 1e-4:
            raise SystemExit("the two servers' scores differ: they are not serving the same model")


_SCORES: dict[str, np.ndarray] = {}


def _cpu_busy() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _measured(
    loop: asyncio.AbstractEventLoop, server: Server, kind: str, level: float, work: Any
) -> Run:
    """Run ``work`` (a coroutine) and note the CPU the server and the rest used meanwhile."""
    busy, served = _cpu_busy(), server.cpu_s()
    outcome: load.Outcome = loop.run_until_complete(work)
    busy, served = _cpu_busy() - busy, server.cpu_s() - served
    other = max(0.0, busy - served - outcome.generator_cpu_s)
    run = Run(kind, level, outcome, served / outcome.seconds, other / outcome.seconds)
    server.runs.append(run)
    time.sleep(1.0)  # let what a run left behind (timed-out requests) drain
    return run


def _open(
    loop: asyncio.AbstractEventLoop,
    server: Server,
    bodies: list[bytes],
    rate: int,
    seconds: float,
    args: argparse.Namespace,
) -> None:
    label = f"{TITLES[server.key]}: {rate:,} req/s for {seconds:g} s"
    err.print(f"{label} ...")

    async def run() -> load.Outcome:
        async with load.session(POOL, args.timeout) as client:
            # A few kept-alive connections open before the measured run starts.
            await load.warm(client, server.url, bodies, 50, 4)
            return await load.open_loop(
                client, server.url, bodies, rate, seconds, lambda s: err.print(f"  {label}: {s}")
            )

    o = _measured(loop, server, "rate", rate, run()).outcome
    err.print(
        f"  {label}: p50 {_ms(o.latency_s, 50)} p99 {_ms(o.latency_s, 99)} ms, "
        f"{o.failed:,} errors, {o.rate:,.0f} req/s answered"
    )


def _closed(
    loop: asyncio.AbstractEventLoop,
    server: Server,
    bodies: list[bytes],
    connections: int,
    seconds: float,
    args: argparse.Namespace,
) -> None:
    label = f"{TITLES[server.key]}: {BATCH_ROWS}-row requests on {connections} connections"
    err.print(f"{label} for {seconds:g} s ...")

    async def run() -> load.Outcome:
        async with load.session(connections, args.timeout) as client:
            await load.warm(client, server.url, bodies, connections * 2, connections)
            return await load.closed_loop(client, server.url, bodies, connections, seconds)

    o = _measured(loop, server, "closed", connections, run()).outcome
    err.print(f"  {label}: {o.rate:,.0f} req/s, {o.rate * BATCH_ROWS:,.0f} rows/s")


def _ms(values: np.ndarray, q: float) -> str:
    return f"{load.percentile(values, q) * 1000:,.1f}"


def _report(trivial: Server, measured: dict[str, Server], args: argparse.Namespace) -> None:
    console = Console()
    if not console.is_terminal:  # a file or a pipe: the tables' full width, not 80 columns
        console = Console(width=200, soft_wrap=True)
    servers = [trivial, *measured.values()]
    cores = f"{os.cpu_count()} cores"
    console.print(f"scoring serve as of {_revision()}; {sys.executable}")
    table = Table(title=f"Cold start ({cores}; each server a fresh process)")
    for column in ("server", "ready after s", "first request ms", "RSS after the runs MB"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for s in measured.values():
        table.add_row(TITLES[s.key], f"{s.ready_s:.1f}", f"{s.first_ms:.1f}", f"{s.rss_mb:,.0f}")
    console.print(table)

    table = Table(
        title=f"Single-row requests at a fixed rate, open loop, {args.seconds:g} s each "
        f"(latency from each request's scheduled send; every request counts; cores used "
        f"of {cores})"
    )
    columns = ("server", "rate/s", "sent", "errors", "answered/s", "p50 ms", "p99 ms",
               "max ms", "lag p99 ms", "server cores", "gen. cores", "other cores")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "server" else "right")
    for s in servers:
        for r in (r for r in s.runs if r.kind == "rate"):
            o = r.outcome
            errors = f"{o.failed:,}" + (f" ({', '.join(o.errors)})" if o.errors else "")
            table.add_row(
                TITLES[s.key], f"{r.level:,.0f}", f"{o.requests:,}", errors, f"{o.rate:,.0f}",
                _ms(o.latency_s, 50), _ms(o.latency_s, 99), f"{o.latency_s.max() * 1000:,.1f}",
                _ms(o.lag_s, 99), *_cores(r),
            )  # fmt: skip
        table.add_section()
    console.print(table)

    table = Table(
        title=f"{BATCH_ROWS}-row requests, closed loop, {args.seconds:g} s each "
        f"(latency from each send; cores used of {cores})"
    )
    closed_columns = ("server", "connections", "req/s", "rows/s", "p50 ms", "p99 ms", "errors",
               "server cores", "gen. cores", "other cores", "best")  # fmt: skip
    for column in closed_columns:
        table.add_column(column, justify="left" if column == "server" else "right")
    for s in servers:
        runs = [r for r in s.runs if r.kind == "closed"]
        best = _best(s)
        for r in runs:
            o = r.outcome
            table.add_row(
                TITLES[s.key], f"{r.level:.0f}", f"{o.rate:,.0f}", f"{o.rate * BATCH_ROWS:,.0f}",
                _ms(o.latency_s, 50), _ms(o.latency_s, 99), f"{o.failed:,}", *_cores(r),
                "best" if r is best else "",
            )  # fmt: skip
        table.add_section()
    console.print(table)
    _generator(console, trivial)
    _targets(console, trivial, measured)


def _revision() -> str:
    """The commit measured, and whether the serving code had changes not committed."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("log", "-1", "--format=%h %s")[:80] or "an unknown commit"
    changed = git("status", "--porcelain", "--", "shared/scoring/serve", "shared/scoring/model")
    return commit + (" (with uncommitted changes to the serving code)" if changed else "")


def _cores(run: Run) -> tuple[str, str, str]:
    generator = run.outcome.generator_cpu_s / run.outcome.seconds
    return f"{run.server_cores:.2f}", f"{generator:.2f}", f"{run.other_cores:.2f}"


def _best(server: Server) -> Run:
    return max((r for r in server.runs if r.kind == "closed"), key=lambda r: r.outcome.rate)


def _generator(console: Console, trivial: Server) -> None:
    """Whether the generator kept its schedule at the rates measured, from the floor runs."""
    for r in (r for r in trivial.runs if r.kind == "rate" and r.level in RATES):
        o = r.outcome
        lag = load.percentile(o.lag_s, 99) * 1000
        kept = o.failed == 0 and o.rate >= 0.99 * r.level and lag <= LAG_LIMIT_MS
        verdict = "on schedule: not the bottleneck" if kept else (
            f"[bold]NOT on schedule[/] (sends over {LAG_LIMIT_MS:g} ms late at p99): every "
            "server's latency at this rate includes the generator's"
            + (", on a machine busy with other work" if r.other_cores > 0.3 else "")
        )  # fmt: skip
        console.print(
            f"generator at {r.level:,.0f} req/s (trivial endpoint): {o.rate:,.0f} answered/s, "
            f"p99 {load.percentile(o.latency_s, 99) * 1000:.1f} ms, sends p99 {lag:.1f} ms "
            f"behind schedule, {o.generator_cpu_s / o.seconds:.2f} cores (other processes: "
            f"{r.other_cores:.2f}): {verdict}"
        )
    best = _best(trivial).outcome
    console.print(
        f"generator's {BATCH_ROWS}-row ceiling (trivial endpoint): {best.rate:,.0f} req/s, "
        f"{best.rate * BATCH_ROWS:,.0f} rows/s"
    )


def _targets(console: Console, trivial: Server, measured: dict[str, Server]) -> None:
    table = Table(title="Targets")
    for column in ("target", "measured", "result"):
        table.add_column(column, justify="left" if column == "target" else "right")
    if "scoring" in measured:
        run = next(r for r in measured["scoring"].runs if r.kind == "rate" and r.level == 500)
        p99 = load.percentile(run.outcome.latency_s, 99) * 1000
        met = p99 <= P99_TARGET_MS and run.outcome.failed == 0
        floor = next(r for r in trivial.runs if r.kind == "rate" and r.level == 500)
        table.add_row(
            f"scoring serve p99 <= {P99_TARGET_MS:g} ms at 500 req/s (single rows, no errors)",
            f"{p99:.1f} ms, {run.outcome.failed:,} errors (the trivial endpoint's: "
            f"{load.percentile(floor.outcome.latency_s, 99) * 1000:.1f} ms)",
            "met" if met else "[bold red]MISSED[/]",
        )
    if {"scoring", "mlflow"} <= set(measured):
        ours, theirs = (_best(measured[k]).outcome.rate for k in ("scoring", "mlflow"))
        ratio = ours / theirs if theirs else float("inf")
        table.add_row(
            f"scoring serve >= {THROUGHPUT_TARGET:g}x MLflow's {BATCH_ROWS}-row throughput "
            "(best of each)",
            f"{ratio:.1f}x ({ours * BATCH_ROWS:,.0f} vs {theirs * BATCH_ROWS:,.0f} rows/s)",
            "met" if ratio >= THROUGHPUT_TARGET else "[bold red]MISSED[/]",
        )
    if table.row_count:
        console.print(table)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        _stop_all()  # main's finally did; this covers an interrupt before it was entered
        err.print("interrupted; the servers are stopped")
        os._exit(130)  # no teardown of the generator's interrupted requests
