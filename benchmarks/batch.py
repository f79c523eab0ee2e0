"""Batch scoring: the JVM engine vs the Python engine vs MLflow's spark_udf vs the limits.

Run it with ``make bench`` (``.venv/bin/python benchmarks/batch.py``). Two models with
different cost profiles score the same kind of Delta table: the demo pipeline (20
features: imputation, scaling, one-hot, logistic regression) and a gradient-boosted
ensemble (30 numeric features, 200 trees). For each model, in one run:

(e) this job with the JVM engine (Spark SQL validation, ONNX Runtime for Java in the
    executors; predictions and rejects to Delta);
(a) this job with the Python engine (mapInArrow, the shared Scorer in Python workers);
(b) ``mlflow.pyfunc.spark_udf`` on the same model in its native scikit-learn flavour
    (read Delta, score, write key, date and score to Delta);
(c) the single-process limit: pyarrow reads the table's parquet files and the Scorer
    validates and scores them in this process, one thread, no Spark;
(d) Spark's own Arrow round trip: the same columns to Python workers and back through a
    pass-through mapInArrow, no model, no write.

**Cold** (what a scheduler runs: every night is a fresh process): (e), (a) and (b) each
run as a fresh ``spark-submit`` process on the whole table; the job's own time (its
summary's ``seconds``, from a ready session to the last commit) and the whole process's
wall time are reported, plus the job's phase timings. **Warm**: in this process's one
session, each path is warmed up on one date, then timed ``--repeat`` times on the whole
table (best kept). Targets: cold (e) at least 3x (b) on the job's own time, for both
models; warm (e) at least 0.8x (c). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
START = date(2026, 11, 1)


@dataclass
class Model:
    """One benchmarked model: its registered name, native folder and table."""

    name: str
    title: str
    source: str
    key: str
    features: list[tuple[str, str]]  # name, Spark type spark_udf's signature wants
    native_dir: Path
    rows: int = 0
    cold: dict[str, dict[str, Any]] = field(default_factory=dict)
    warm: dict[str, float] = field(default_factory=dict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per table")
    parser.add_argument("--days", type=int, default=4, help="date partitions")
    parser.add_argument("--trees", type=int, default=200, help="trees in the second model")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=2, help="warm timed runs per path")
    parser.add_argument("--skip-warm", action="store_true", help="cold runs only")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the tables and models a previous run left in --workdir",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="tables and registry (default: a temp dir)"
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scoring-bench-"))
    os.environ["SCORING_HOME"] = str(work / "home")
    console = Console()

    # Imports after SCORING_HOME is set: settings are read on first use.
    from scoring.batch.spark import build_session

    spark = build_session("scoring-bench", master=args.master)
    models = [
        _demo_model(spark, work, args, console),
        _tree_model(spark, work, args, console),
    ]
    # One Spark at a time: this session stops while the cold processes run.
    spark.stop()
    for model in models:
        for path in ("e", "a", "b"):
            with console.status(f"{model.title}: cold ({path}), a fresh spark-submit process"):
                model.cold[path] = _cold(path, model, work, args.master)
            console.print(f"{model.title}: cold ({path}) {model.cold[path]}")
    if not args.skip_warm:
        spark = build_session("scoring-bench", master=args.master)
        for model in models:
            _warm(spark, model, work, args.repeat, console)
        spark.stop()
    for model in models:
        _report(console, model, args)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def _demo_model(spark: Any, work: Path, args: argparse.Namespace, console: Console) -> Model:
    from scoring.dev.demo.data import FEATURES, KEY
    from scoring.dev.demo.run import write_demo_table
    from scoring.dev.demo.train import train

    source = str(work / "transactions")
    features = [(f.name, "string" if f.type == "string" else "double") for f in FEATURES]
    model = Model(
        "bench_demo",
        f"demo pipeline ({len(FEATURES)} features)",
        source,
        KEY,
        features,
        work / "demo_native",
    )
    if args.reuse and model.native_dir.exists():
        model.rows = spark.read.format("delta").load(source).count()
        return model
    with console.status(f"demo: {args.rows:,} rows x {len(FEATURES)} features as Delta"):
        write_demo_table(spark, source, args.days, args.rows // args.days, START)
    with console.status("demo: training, packaging, registering"):
        history = spark.read.format("delta").load(source).limit(60_000).toArrow()
        trained = train(history, work / "demo_model", source, 0)
        _register("bench_demo", trained.model_file, trained.sample_file, trained.contract_file)
    _save_native(spark, trained.model_file, model)
    return model


def _tree_model(spark: Any, work: Path, args: argparse.Namespace, console: Console) -> Model:
    from scoring.dev import trees

    source = str(work / "points")
    features = [(f.name, "double") for f in trees.FEATURES]
    model = Model(
        "bench_trees",
        f"gradient boosting ({len(trees.FEATURES)} features, {args.trees} trees)",
        source,
        trees.KEY,
        features,
        work / "trees_native",
    )
    if args.reuse and model.native_dir.exists():
        model.rows = spark.read.format("delta").load(source).count()
        return model
    with console.status(f"trees: {args.rows:,} rows x {len(trees.FEATURES)} features as Delta"):
        table = trees.generate(args.rows, START, days=args.days)
        frame = spark.createDataFrame(table)
        frame.write.format("delta").mode("overwrite").partitionBy(trees.DATE).save(source)
    with console.status(f"trees: training {args.trees} trees, packaging, registering"):
        trained = trees.train_trees(table.slice(0, 20_000), work / "tree_model", args.trees)
        _register("bench_trees", trained.model_file, trained.sample_file, trained.contract_file)
    _save_native(spark, trained.model_file, model)
    return model


def _register(name: str, model_file: Path, sample: Path, contract: Path) -> None:
    from scoring.lifecycle import registry
    from scoring.lifecycle.packaging import package

    info = package(model_file, name, sample, spec_file=contract)
    registry.promote(name, info.version)


def _save_native(spark: Any, model_file: Path, model: Model) -> None:
    """The native scikit-learn flavour for spark_udf (b), with a signature of doubles."""
    import joblib
    import mlflow
    from mlflow.models import infer_signature
    from pyspark.sql import functions as F

    pipeline = joblib.load(model_file)
    inputs = [F.col(n).cast(t).alias(n) for n, t in model.features]
    sample = spark.read.format("delta").load(model.source).select(*inputs).limit(5000)
    sample = sample.toPandas().dropna()
    mlflow.sklearn.save_model(
        pipeline,
        str(model.native_dir),
        pyfunc_predict_fn="predict_proba",
        # The benchmark's own freshly trained model: pickle is safe here, and skops
        # refuses tree internals without a list of trusted types per model kind.
        serialization_format="cloudpickle",
        signature=infer_signature(sample, pipeline.predict_proba(sample)),
    )
    model.rows = spark.read.format("delta").load(model.source).count()


def _job_args(path: str, model: Model, target: str, date_: str | None = None) -> list[str]:
    if path == "b":
        args = [
            "--model-dir",
            str(model.native_dir),
            "--source",
            model.source,
            "--target",
            target,
            "--key",
            model.key,
            "--features",
            json.dumps(model.features),
        ]
    else:
        args = [
            "--model",
            f"models:/{model.name}@champion",
            "--source",
            model.source,
            "--target",
            target,
            "--engine",
            "jvm" if path == "e" else "python",
        ]
    return args + (["--date", date_] if date_ else [])


def _cold(path: str, model: Model, work: Path, master: str) -> dict[str, Any]:
    """One fresh spark-submit process: the job's own seconds, the process's, the phases."""
    from scoring.batch.spark import submit_command

    script = ROOT / ("benchmarks/spark_udf_job.py" if path == "b" else "jobs/batch/score.py")
    target = str(work / f"cold_{model.name}_{path}")
    command = submit_command(script, _job_args(path, model, target), master=master)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"cold run ({path}) of {model.name} failed with {done.returncode}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"job": summary["seconds"], "process": wall, "timings": summary.get("timings", {})}


def _warm(spark: Any, model: Model, work: Path, repeat: int, console: Console) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds
    from pyspark.sql import functions as F
    from scoring.batch.job import BatchJob, run
    from scoring.model.artifact import load_artifact

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import spark_udf_job

    day = START.isoformat()

    def job(engine: str) -> Callable[[str, str | None], None]:
        def go(target: str, date_: str | None) -> None:
            summary = run(
                spark,
                BatchJob(
                    model=f"models:/{model.name}@champion",
                    source=model.source,
                    target=target,
                    date=date_,
                    engine=engine,  # type: ignore[arg-type]
                ),
            )
            assert date_ or summary["rows_read"] == model.rows

        return go

    def job_b(target: str, date_: str | None) -> None:
        args = argparse.Namespace(
            model_dir=str(model.native_dir),
            source=model.source,
            target=target,
            key=model.key,
            features=json.dumps(model.features),
            date=date_,
        )
        spark_udf_job.score(spark, args)

    scorer = load_artifact(f"models:/{model.name}@champion").scorer(threads=1)
    # A freshly written table: every data file belongs to its current version.
    files = [str(p) for p in Path(model.source).rglob("*.parquet") if "_delta_log" not in p.parts]

    def job_c(target: str, date_: str | None) -> None:
        seen = 0
        for batch in ds.dataset(files[:1] if date_ else files, format="parquet").to_batches(
            batch_size=20_000
        ):
            seen += len(scorer.score(batch).score)
        assert date_ or seen == model.rows

    columns = [model.key, "ds"] + [n for n, _ in model.features]

    def passthrough(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from batches

    def job_d(target: str, date_: str | None) -> None:
        frame = spark.read.format("delta").load(model.source).select(*columns)
        if date_:
            frame = frame.where(F.col("ds") == date_)
        frame.mapInArrow(passthrough, frame.schema).write.format("noop").mode("overwrite").save()

    paths = {"e": job("jvm"), "a": job("python"), "b": job_b, "c": job_c, "d": job_d}
    for key, go in paths.items():
        with console.status(f"{model.title}: warm ({key}), warm-up then {repeat} timed runs"):
            go(str(work / f"warm_{model.name}_{key}"), day)
            target = str(work / f"out_{model.name}_{key}")
            best = min(_seconds(go, target) for _ in range(repeat))
        model.warm[key] = model.rows / best
        console.print(f"{model.title}: warm ({key}) {model.warm[key]:,.0f} rows/s")


def _seconds(job: Callable[[str, str | None], None], target: str) -> float:
    started = time.perf_counter()
    job(target, None)
    return time.perf_counter() - started


NAMES = {
    "e": "(e) this job, JVM engine",
    "a": "(a) this job, Python engine",
    "b": "(b) mlflow spark_udf, sklearn flavour",
    "c": "(c) pyarrow + onnxruntime, 1 process, 1 thread",
    "d": "(d) Spark's Arrow round trip alone",
}


def _report(console: Console, model: Model, args: argparse.Namespace) -> None:
    table = Table(
        title=f"{model.title}: {model.rows:,} rows, {args.master}, {os.cpu_count()} cores"
    )
    for column, justify in [
        ("path", "left"),
        ("cold job s", "right"),
        ("cold process s", "right"),
        ("cold job vs (b)", "right"),
        ("warm rows/s", "right"),
        ("warm vs (b)", "right"),
        ("warm vs (c)", "right"),
    ]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    cold_b = model.cold["b"]["job"]
    for key, label in NAMES.items():
        cold = model.cold.get(key)
        warm = model.warm.get(key)
        table.add_row(
            label,
            f"{cold['job']:.1f}" if cold else "",
            f"{cold['process']:.1f}" if cold else "",
            f"{cold_b / cold['job']:.2f}x" if cold else "",
            f"{warm:,.0f}" if warm else "",
            f"{warm / model.warm['b']:.2f}x" if warm else "",
            f"{warm / model.warm['c']:.2f}x" if warm else "",
        )
    console.print(table)
    ratio = cold_b / model.cold["e"]["job"]
    line = f"cold (e) vs (b), job's own time: {ratio:.2f}x (target >= 3x)"
    if model.warm:
        line += f"; warm (e) vs (c): {model.warm['e'] / model.warm['c']:.2f}x (target >= 0.8x)"
    console.print(line)
    for key in ("e", "a"):
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in model.cold[key]["timings"].items())
        console.print(f"  cold ({key}) phases: {phases}")


if __name__ == "__main__":
    main()
