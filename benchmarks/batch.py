"""Batch scoring throughput: this job vs MLflow's spark_udf vs the single-process limit.

Run it with ``make bench`` (or ``.venv/bin/python benchmarks/batch.py --rows 2000000``).
In one run, on the same Delta table and the same trained pipeline:

(a) this project's batch job (read pinned Delta version, validate, score with onnxruntime
    through mapInArrow, write predictions + rejects to Delta);
(b) ``mlflow.pyfunc.spark_udf`` on the same pipeline in its native scikit-learn flavour
    (read Delta, score, write predictions to Delta);
(c) the single-process limit: pyarrow reads the table's parquet files and the same
    scorer scores them in this process, one thread, no Spark;
(d) for reference, the floor Spark itself sets: the same columns read from Delta, sent
    through a pass-through mapInArrow to Python and back, and dropped (no model, no write).

Each path is warmed up on one date first (JVM, Python workers, model sessions), then timed
``--repeat`` times on the whole table; the best run counts. It prints rows/s for each and
the ratios a/b and a/c. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in the table")
    parser.add_argument("--days", type=int, default=4, help="date partitions")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per path (best kept)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where tables and the registry go (default: a temp dir)",
    )
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scoring-bench-"))
    os.environ["SCORING_HOME"] = str(work / "home")
    console = Console()

    # Imports after SCORING_HOME is set: settings are read on first use.
    import mlflow
    import pyarrow as pa
    import pyarrow.dataset as ds
    from mlflow.models import infer_signature
    from pyspark.sql import functions as F
    from scoring.batch.job import BatchJob, run
    from scoring.batch.spark import build_session
    from scoring.dev.demo.data import FEATURES, KEY
    from scoring.dev.demo.run import START, write_demo_table
    from scoring.dev.demo.train import train
    from scoring.lifecycle import registry
    from scoring.lifecycle.packaging import package
    from scoring.model.artifact import load_artifact

    spark = build_session("scoring-bench", master=args.master)
    source = str(work / "transactions")
    with console.status(f"writing {args.rows:,} rows x {len(FEATURES)} features as Delta"):
        write_demo_table(spark, source, args.days, args.rows // args.days, START)
    with console.status("training and packaging the demo pipeline"):
        history = spark.read.format("delta").load(source).limit(60_000).toArrow()
        trained = train(history, work / "model", source, 0)
        info = package(
            trained.model_file, "bench", trained.sample_file, spec_file=trained.contract_file
        )
        registry.promote("bench", info.version)
    rows = spark.read.format("delta").load(source).count()

    first_day = START.isoformat()

    def job_a(target: str, date: str | None = None) -> None:
        summary = run(
            spark, BatchJob(model="models:/bench@champion", source=source, target=target, date=date)
        )
        assert date or summary["rows_read"] == rows

    import joblib

    pipeline = joblib.load(trained.model_file)
    # The native flavour's signature wants doubles for numbers; Spark casts them.
    inputs = [
        F.col(f.name).cast("double" if f.type != "string" else "string").alias(f.name)
        for f in FEATURES
    ]
    sample = spark.read.format("delta").load(source).select(*inputs).limit(5000).toPandas()
    native = work / "native_model"
    mlflow.sklearn.save_model(
        pipeline,
        str(native),
        pyfunc_predict_fn="predict_proba",
        skops_trusted_types=["numpy.dtype"],
        signature=infer_signature(sample, pipeline.predict_proba(sample)),
    )
    udf = mlflow.pyfunc.spark_udf(
        spark, str(native), result_type="array<double>", env_manager="local"
    )

    def job_b(target: str, date: str | None = None) -> None:
        frame = spark.read.format("delta").load(source)
        if date:
            frame = frame.where(F.col("ds") == date)
        scored = frame.select(KEY, "ds", udf(*inputs)[1].alias("score"))
        scored.write.format("delta").mode("overwrite").save(target)

    scorer = load_artifact("models:/bench@champion").scorer(threads=1)
    # A freshly written table: every data file belongs to its current version.
    files = [str(p) for p in Path(source).rglob("*.parquet") if "_delta_log" not in p.parts]

    def job_c(target: str, date: str | None = None) -> None:
        seen = 0
        for batch in ds.dataset(files[:1] if date else files, format="parquet").to_batches(
            batch_size=20_000
        ):
            seen += len(scorer.score(batch).score)
        assert date or seen == rows

    columns = [KEY, "ds"] + [f.name for f in FEATURES]

    def passthrough(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from batches

    def job_d(target: str, date: str | None = None) -> None:
        frame = spark.read.format("delta").load(source).select(*columns)
        if date:
            frame = frame.where(F.col("ds") == date)
        frame.mapInArrow(passthrough, frame.schema).write.format("noop").mode("overwrite").save()

    results: dict[str, float] = {}
    for key, job in {"a": job_a, "b": job_b, "c": job_c, "d": job_d}.items():
        with console.status(f"({key}) warming up on {first_day}, then {args.repeat} timed runs"):
            job(str(work / f"warm_{key}"), first_day)  # JVM, Python workers, model loaded
            best = min(_seconds(job, str(work / f"out_{key}")) for _ in range(args.repeat))
        results[key] = rows / best

    table = Table(
        title=f"Batch scoring, {rows:,} rows x {len(FEATURES)} features, "
        f"{args.master}, {os.cpu_count()} cores"
    )
    table.add_column("path")
    table.add_column("rows/s", justify="right")
    table.add_column("vs spark_udf", justify="right")
    table.add_column("vs single-process limit", justify="right")
    names = {
        "a": "(a) this batch job (Delta in, Delta out)",
        "b": "(b) mlflow spark_udf, sklearn flavour",
        "c": "(c) pyarrow + onnxruntime, 1 process",
        "d": "(d) Spark's Arrow round trip alone: no model, no write",
    }
    for key, label in names.items():
        table.add_row(
            label,
            f"{results[key]:,.0f}",
            f"{results[key] / results['b']:.2f}x",
            f"{results[key] / results['c']:.0%}",
        )
    console.print(table)
    console.print(
        f"a/b = {results['a'] / results['b']:.2f}x (target >= 3x), "
        f"a/c = {results['a'] / results['c']:.0%} (target >= 40%)"
    )
    spark.stop()
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def _seconds(job: Callable[[str], None], target: str) -> float:
    started = time.perf_counter()
    job(target)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
