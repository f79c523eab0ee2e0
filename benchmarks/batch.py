"""Batch scoring throughput: this job vs MLflow's spark_udf vs the single-process limit.

Run it with ``make bench`` (or ``.venv/bin/python benchmarks/batch.py --rows 2000000``).
In one run, on the same Delta table and the same trained pipeline:

(a) this project's batch job (read pinned Delta version, validate, score with onnxruntime
    through mapInArrow, write predictions + rejects to Delta);
(b) ``mlflow.pyfunc.spark_udf`` on the same pipeline in its native scikit-learn flavour
    (read Delta, score, write predictions to Delta);
(c) the single-process limit: pyarrow reads the table's parquet files and the same
    scorer scores them in this process, one thread, no Spark.

It prints rows/s for each and the ratios a/b and a/c. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in the table")
    parser.add_argument("--days", type=int, default=4, help="date partitions")
    parser.add_argument("--master", default="local[2]")
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
    import pyarrow.dataset as ds
    from mlflow.models import infer_signature
    from pyspark.sql import functions as F

    from shared import registry
    from shared.artifact import load_artifact
    from shared.batch import BatchJob, run
    from shared.demo.data import FEATURES, KEY
    from shared.demo.run import START, write_demo_table
    from shared.demo.train import train
    from shared.packaging import package
    from shared.spark import build_session

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

    results: dict[str, float] = {}

    with console.status("(a) this batch job"):
        started = time.perf_counter()
        summary = run(
            spark,
            BatchJob(model="models:/bench@champion", source=source, target=str(work / "scores")),
        )
        results["a"] = rows / (time.perf_counter() - started)
        assert summary["rows_read"] == rows

    with console.status("(b) mlflow.pyfunc.spark_udf, scikit-learn flavour"):
        import joblib

        pipeline = joblib.load(trained.model_file)
        # The native flavour's signature wants doubles for numbers; Spark casts them.
        inputs = [
            F.col(f.name).cast("double" if f.type != "string" else "string").alias(f.name)
            for f in FEATURES
        ]
        frame = spark.read.format("delta").load(source)
        sample = frame.select(*inputs).limit(5000).toPandas()
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
        started = time.perf_counter()
        frame = spark.read.format("delta").load(source)
        scored = frame.select(KEY, "ds", udf(*inputs)[1].alias("score"))
        scored.write.format("delta").mode("overwrite").save(str(work / "scores_udf"))
        results["b"] = rows / (time.perf_counter() - started)

    with console.status("(c) single process: pyarrow + onnxruntime"):
        scorer = load_artifact("models:/bench@champion").scorer(threads=1)
        # A freshly written table: every data file belongs to its current version.
        files = [str(p) for p in Path(source).rglob("*.parquet") if "_delta_log" not in p.parts]
        started = time.perf_counter()
        seen = 0
        for batch in ds.dataset(files, format="parquet").to_batches(batch_size=20_000):
            seen += len(scorer.score(batch).score)
        results["c"] = seen / (time.perf_counter() - started)
        assert seen == rows

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


if __name__ == "__main__":
    main()
