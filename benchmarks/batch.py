"""Batch scoring, cold and as it grows: the arrow engine, the Spark engines, spark_udf, the limit.

Run it with ``make bench`` (``.venv/bin/python benchmarks/batch.py``). Two models with
different cost profiles score a Delta table written by delta-rs: the demo pipeline (20
features: imputation, scaling, one-hot, logistic regression) and a gradient-boosted
ensemble (30 numeric features, ``--trees`` trees). Each table has a small date and a
date four times larger (``--rows``). The paths:

- **arrow**: this job on the embedded engine, ``scoring batch run`` (delta-rs, onnxruntime
  on ``--threads`` threads; predictions, rejects, lineage);
- **python**: this job on Spark (``--master``), a fresh ``spark-submit`` each;
- **spark_udf**: ``mlflow.pyfunc.spark_udf`` on the model's native scikit-learn flavour
  (read Delta, drop NaN rows, score, write key, date and score), a fresh spark-submit;
- **(g)** the whole-job limit: delta-rs read, onnxruntime on the same threads, delta-rs
  write of key, date and score in one process, no checks (``benchmarks/limit_job.py``).

Every run is a fresh, cold process, as a scheduler runs it. Each round runs every path on
both dates, the paths in a rotated order; ``--rounds`` rounds (at least three), and the
table shows medians with min and max. The marginal rate, rows between the two dates over
the time between them, cancels start-up. Peak memory is the largest sum of the RSS of the
process and its children, sampled every 50 ms. Targets, on both models: the arrow
engine's whole process at least 5x faster than spark_udf's on the large date, and its
marginal rate at least 0.8x (g)'s; the Spark engine's marginal rate at least 1.5x
spark_udf's. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
START = date(2026, 11, 1)
SMALL, LARGE = START.isoformat(), (START + timedelta(days=1)).isoformat()
PATHS = ("arrow", "python", "spark_udf", "g")
NAMES = {
    "arrow": "arrow (this job)",
    "python": "python (this job, Spark)",
    "spark_udf": "spark_udf",
    "g": "(g) limit, no checks",
}


@dataclass
class Model:
    """One benchmarked model: its registered name, native folder and table."""

    name: str
    title: str
    source: str
    key: str
    features: list[tuple[str, str]]  # name, Spark type spark_udf's signature wants
    native_dir: Path
    rows: dict[str, int] = field(default_factory=dict)
    # path -> date -> measurements of each round
    runs: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the large date")
    parser.add_argument("--trees", type=int, default=100, help="trees in the second model")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--threads", type=int, default=2, help="arrow and (g) threads")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (at least 3)")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="tables and registry (default: a temp dir)"
    )
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    if unknown := set(paths) - set(PATHS):
        parser.error(f"unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scoring-bench-"))
    os.environ["SCORING_HOME"] = str(work / "home")
    console = Console()
    models = [_demo_model(work, args, console), _tree_model(work, args, console)]
    for round_ in range(args.rounds):
        for model in models:
            order = paths[round_ % len(paths) :] + paths[: round_ % len(paths)]
            for path in order:
                for day in (SMALL, LARGE):
                    label = f"round {round_ + 1}/{args.rounds}, {model.title}: {path} on {day}"
                    with console.status(label):
                        measured = _cold(path, model, day, work, args)
                    model.runs.setdefault(path, {}).setdefault(day, []).append(measured)
                    console.print(
                        f"{label}: process {measured['process']:.1f}s, job "
                        f"{measured['job']:.1f}s, peak {measured['peak_mb']:,.0f} MB"
                    )
    for model in models:
        _report(console, model, paths, args)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def _write(path: str, tables: list[Any]) -> None:
    from deltalake import write_deltalake

    for table in tables:
        write_deltalake(path, table, partition_by=["ds"], mode="append")


def _demo_model(work: Path, args: argparse.Namespace, console: Console) -> Model:
    from scoring.dev.demo.data import FEATURES, KEY, generate_day
    from scoring.dev.demo.train import train

    source = str(work / "transactions")
    features = [(f.name, "string" if f.type == "string" else "double") for f in FEATURES]
    model = Model(
        "bench_demo", f"demo pipeline ({len(FEATURES)} features)", source, KEY, features,
        work / "demo_native",
    )  # fmt: skip
    model.rows = {SMALL: args.rows // 4, LARGE: args.rows}
    with console.status(f"demo: {args.rows // 4:,} + {args.rows:,} rows as Delta (delta-rs)"):
        days = [
            generate_day(date.fromisoformat(d), n, seed=i)
            for i, (d, n) in enumerate(model.rows.items())
        ]
        _write(source, days)
    with console.status("demo: training, packaging, registering"):
        trained = train(days[0].slice(0, 60_000), work / "demo_model", source, 0)
        _register(model, trained.model_file, trained.sample_file, trained.contract_file)
    return model


def _tree_model(work: Path, args: argparse.Namespace, console: Console) -> Model:
    from scoring.dev import trees

    source = str(work / "points")
    features = [(f.name, "double") for f in trees.FEATURES]
    model = Model(
        "bench_trees", f"gradient boosting ({len(trees.FEATURES)} features, {args.trees} trees)",
        source, trees.KEY, features, work / "trees_native",
    )  # fmt: skip
    model.rows = {SMALL: args.rows // 4, LARGE: args.rows}
    with console.status(f"trees: {args.rows // 4:,} + {args.rows:,} rows as Delta (delta-rs)"):
        days = [
            trees.generate(n, date.fromisoformat(d), seed=11 + i)
            for i, (d, n) in enumerate(model.rows.items())
        ]
        _write(source, days)
    with console.status(f"trees: training {args.trees} trees, packaging, registering"):
        trained = trees.train_trees(days[0].slice(0, 20_000), work / "tree_model", args.trees)
        _register(model, trained.model_file, trained.sample_file, trained.contract_file)
    return model


def _register(model: Model, model_file: Path, sample: Path, contract: Path) -> None:
    """Registered for this job and (g); saved in its native flavour for spark_udf."""
    import joblib
    import mlflow
    import pyarrow.parquet as pq
    from mlflow.models import infer_signature
    from scoring.lifecycle import registry
    from scoring.lifecycle.packaging import package

    info = package(model_file, model.name, sample, spec_file=contract)
    registry.promote(model.name, info.version)
    pipeline = joblib.load(model_file)
    frame = pq.read_table(sample).to_pandas()[[n for n, _ in model.features]].dropna()
    frame = frame.astype({n: "float64" for n, t in model.features if t == "double"})
    mlflow.sklearn.save_model(
        pipeline,
        str(model.native_dir),
        pyfunc_predict_fn="predict_proba",
        # The benchmark's own freshly trained model: pickle is safe here, and skops
        # refuses tree internals without a list of trusted types per model kind.
        serialization_format="cloudpickle",
        signature=infer_signature(frame, pipeline.predict_proba(frame)),
    )


def _command(path: str, model: Model, day: str, target: str, args: argparse.Namespace) -> list[str]:
    from scoring.batch.spark import submit_command

    uri = f"models:/{model.name}@champion"
    common = ["--source", model.source, "--target", target, "--date", day]
    if path == "arrow":
        scoring = str(Path(sys.executable).parent / "scoring")
        return [scoring, "batch", "run", "--model", uri, *common, "--engine", "arrow",
                "--threads", str(args.threads)]  # fmt: skip
    if path == "g":
        return [sys.executable, str(ROOT / "benchmarks" / "limit_job.py"), "--model", uri,
                *common, "--threads", str(args.threads)]  # fmt: skip
    if path == "spark_udf":
        job = ["--model-dir", str(model.native_dir), *common, "--key", model.key,
               "--features", json.dumps(model.features)]  # fmt: skip
        return submit_command(ROOT / "benchmarks/spark_udf_job.py", job, master=args.master)
    job = ["--model", uri, *common, "--engine", path]
    return submit_command(ROOT / "jobs/batch/score.py", job, master=args.master)


def _peak_rss(process: psutil.Process, stop: threading.Event, peak: list[int]) -> None:
    while not stop.wait(0.05):
        try:
            tree = [process, *process.children(recursive=True)]
            total = 0
            for p in tree:
                try:
                    total += p.memory_info().rss
                except psutil.Error:  # a child that just ended
                    continue
        except psutil.Error:
            return
        peak[0] = max(peak[0], total)


def _cold(
    path: str, model: Model, day: str, work: Path, args: argparse.Namespace
) -> dict[str, float]:
    """One fresh process: its wall time, the job's own seconds and the peak RSS of its tree."""
    target = str(work / f"out_{model.name}_{path}")
    command = _command(path, model, day, target, args)
    stop, peak = threading.Event(), [0]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = threading.Thread(target=_peak_rss, args=(psutil.Process(child.pid), stop, peak))
    sampler.start()
    out, err = child.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if child.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"{path} on {day} of {model.name} failed with {child.returncode}")
    summary = json.loads(out.strip().splitlines()[-1])
    phases = {f"phase {k}": float(v) for k, v in summary.get("timings", {}).items()}
    return {"process": wall, "job": float(summary["seconds"]), "peak_mb": peak[0] / 2**20, **phases}


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _marginal(model: Model, path: str, measure: str) -> float:
    """Rows between the two dates over the time between them (medians)."""
    runs = model.runs[path]
    seconds = statistics.median(r[measure] for r in runs[LARGE]) - statistics.median(
        r[measure] for r in runs[SMALL]
    )
    rows = model.rows[LARGE] - model.rows[SMALL]
    return rows / seconds if seconds > 0 else float("inf")


def _report(console: Console, model: Model, paths: list[str], args: argparse.Namespace) -> None:
    rounds = len(model.runs[paths[0]][LARGE])
    table = Table(
        title=f"{model.title}: {model.rows[SMALL]:,} and {model.rows[LARGE]:,} rows, "
        f"{args.master} / {args.threads} threads, {os.cpu_count()} cores, {rounds} rounds; "
        "seconds and MB: median (min-max)"
    )
    columns: list[tuple[str, Callable[[str], str]]] = [
        ("path", lambda p: NAMES[p]),
        ("process s, small", lambda p: _median([r["process"] for r in model.runs[p][SMALL]])),
        ("process s, large", lambda p: _median([r["process"] for r in model.runs[p][LARGE]])),
        ("job s, large", lambda p: _median([r["job"] for r in model.runs[p][LARGE]])),
        ("marginal rows/s", lambda p: f"{_marginal(model, p, 'job'):,.0f}"),
        ("peak MB, large", lambda p: _median([r["peak_mb"] for r in model.runs[p][LARGE]])),
    ]
    for name, _ in columns:
        table.add_column(name, justify="left" if name == "path" else "right")
    for path in paths:
        table.add_row(*[cell(path) for _, cell in columns])
    console.print(table)

    def whole(path: str) -> float:
        return statistics.median(r["process"] for r in model.runs[path][LARGE])

    lines = []
    if {"arrow", "spark_udf"} <= set(paths):
        ratio = whole("spark_udf") / whole("arrow")
        lines.append(f"arrow whole process vs spark_udf, large date: {ratio:.1f}x (target >= 5x)")
    if {"arrow", "g"} <= set(paths):
        ratio = _marginal(model, "arrow", "job") / _marginal(model, "g", "job")
        lines.append(f"arrow marginal rate vs (g): {ratio:.2f}x (target >= 0.8x)")
    if {"python", "spark_udf"} <= set(paths):
        ratio = _marginal(model, "python", "job") / _marginal(model, "spark_udf", "job")
        lines.append(f"Spark engine marginal rate vs spark_udf: {ratio:.2f}x (target >= 1.5x)")
    for line in lines:
        console.print(line)
    # Where this job's time goes on the large date: its own phases (the summary's timings).
    for path in [p for p in paths if p in ("arrow", "python")]:
        runs = model.runs[path][LARGE]
        names = [k for k in runs[0] if k.startswith("phase ")]
        phases = ", ".join(
            f"{k[len('phase ') :]} {statistics.median(r[k] for r in runs):.1f}s" for k in names
        )
        console.print(f"  {path}, large date, job phases (median): {phases}")


if __name__ == "__main__":
    main()
