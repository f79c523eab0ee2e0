"""``scoring demo``: both paths end to end on embedded defaults.

Generates a card-transaction Delta table, trains a fraud pipeline, packages and registers
it as ONNX, promotes it to ``champion`` and scores the newest date with the batch job;
then streams some of that date's rows through Kafka and the stream processor and checks
that both paths gave the same scores (:mod:`scoring.dev.demo.stream`). Everything lands under
the data dir (``SCORING_HOME``, default ``./.scoring``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from rich.console import Console
from rich.table import Table

from scoring.batch.job import BatchJob, run, table_version
from scoring.batch.spark import build_session
from scoring.batch.tables import for_spark
from scoring.dev.demo.data import DATE, FEATURES, KEY, write_parquet
from scoring.dev.demo.stream import run_stream_demo
from scoring.dev.demo.train import train
from scoring.lifecycle import registry
from scoring.lifecycle.packaging import package
from scoring.settings import load

__all__ = ["MODEL_NAME", "lake_paths", "run_demo", "write_demo_table"]

MODEL_NAME = "fraud"
START = date(2026, 11, 1)


def lake_paths(home: Path) -> dict[str, str]:
    lake = home.resolve() / "lake"
    return {
        name: str(lake / name) for name in ("transactions", "fraud_scores", "fraud_scores_rejects")
    }


def write_demo_table(
    spark: SparkSession, path: str, days: int, rows_per_day: int, start: date = START
) -> None:
    """Write the demo transactions as a Delta table partitioned by date (overwrites)."""
    with tempfile.TemporaryDirectory(prefix="scoring-demo-") as tmp:
        write_parquet(Path(tmp), start, days, rows_per_day)
        frame = spark.read.parquet(tmp)
        frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").partitionBy(
            DATE
        ).save(for_spark(path))


@contextmanager
def _step(console: Console, text: str) -> Iterator[None]:
    started = time.monotonic()
    with console.status(f"[bold]{text}…"):
        yield
    console.print(f"[green]✓[/] {text} [dim]({time.monotonic() - started:.1f}s)[/]")


def run_demo(
    console: Console,
    rows_per_day: int = 20_000,
    days: int = 7,
    stream_events: int = 3_000,
    secure: bool = False,
) -> dict[str, Any]:
    settings = load()
    paths = lake_paths(settings.home)
    work = settings.home.resolve() / "demo"
    last_day = (START + timedelta(days=days - 1)).isoformat()
    console.rule("[bold]scoring demo: one ONNX artifact, nightly on Spark + Delta, live on Kafka")
    with _step(console, "Starting Spark (local, Delta Lake jars from infra/jars)"):
        spark = build_session("scoring-demo", settings=settings)
    with _step(console, f"Writing {days} days x {rows_per_day:,} transactions as Delta"):
        write_demo_table(spark, paths["transactions"], days, rows_per_day)
        source_version = table_version(spark, paths["transactions"])
    with _step(console, "Training the fraud pipeline (impute, scale, one-hot, logistic)"):
        history = (
            spark.read.format("delta")
            .option("versionAsOf", source_version)
            .load(paths["transactions"])
            .where(f"{DATE} < '{last_day}'")
            .toArrow()
        )
        trained = train(history, work, paths["transactions"], source_version)
    with _step(console, "Converting to ONNX, verifying against scikit-learn, registering"):
        info = package(
            trained.model_file, MODEL_NAME, trained.sample_file, spec_file=trained.contract_file
        )
    with _step(console, f"Promoting version {info.version} to champion"):
        registry.promote(MODEL_NAME, info.version, "champion")
    with _step(console, f"Batch-scoring {last_day} with models:/{MODEL_NAME}@champion"):
        summary = run(
            spark,
            BatchJob(
                model=f"models:/{MODEL_NAME}@champion",
                source=paths["transactions"],
                target=paths["fraud_scores"],
                rejects=paths["fraud_scores_rejects"],
                date=last_day,
            ),
        )
    _show(console, spark, summary, trained.metrics, settings.mlflow_tracking_uri)
    if stream_events > 0:
        rows, batch_scores = _stream_sample(spark, paths, last_day, stream_events)
        console.rule(f"[bold]The same champion, live: {len(rows):,} events of {last_day} on Kafka")
        summary["stream"] = run_stream_demo(
            console,
            settings,
            f"models:/{MODEL_NAME}@champion",
            rows,
            batch_scores,
            [f.name for f in FEATURES],
            secure=secure,
        )
    return summary


def _stream_sample(
    spark: SparkSession, paths: dict[str, str], day: str, n: int
) -> tuple[pa.Table, dict[str, float]]:
    """The first ``n`` source rows of ``day`` and the batch scores of those that were scored."""
    rows = (
        spark.read.format("delta")
        .load(paths["transactions"])
        .where(f"{DATE} = '{day}'")
        .orderBy(KEY)
        .limit(n)
        .toArrow()
    )
    keys = rows.column(KEY).to_pylist()
    scored = (
        spark.read.format("delta")
        .load(paths["fraud_scores"])
        .where(f"{DATE} = '{day}'")
        .where(F.col(KEY).isin(keys))
        .select(KEY, "score")
        .toArrow()
    )
    return rows, dict(
        zip(scored.column(KEY).to_pylist(), scored.column("score").to_pylist(), strict=True)
    )


def _show(
    console: Console,
    spark: SparkSession,
    summary: dict[str, Any],
    metrics: dict[str, float],
    tracking_uri: str,
) -> None:
    table = Table(title="Batch run", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in [
        (
            "model",
            f"{summary['model_name']} v{summary['model_version']} "
            f"(holdout AUC {metrics['auc']:.3f})",
        ),
        ("source", f"{summary['source']} @ Delta version {summary['source_version']}"),
        ("date", summary["date"]),
        (
            "rows read / scored / rejected",
            f"{summary['rows_read']:,} / {summary['rows_scored']:,} / {summary['rows_rejected']:,}",
        ),
        (
            "elapsed",
            f"{summary['seconds']:.1f}s, Spark warm-up included (`make bench` measures throughput)",
        ),
        ("predictions", summary["target"]),
        ("rejects", summary["rejects"]),
        ("registry", tracking_uri),
    ]:
        table.add_row(label, str(value))
    console.print(table)
    top = Table(title="Highest fraud scores")
    for column in ("transaction_id", "score", "label", "model_version"):
        top.add_column(column)
    for row in (
        spark.read.format("delta")
        .load(summary["target"])
        .where(f"{DATE} = '{summary['date']}'")
        .orderBy("score", ascending=False)
        .limit(5)
        .collect()
    ):
        top.add_row(
            row["transaction_id"], f"{row['score']:.4f}", str(row["label"]), row["model_version"]
        )
    console.print(top)
    reasons = Table(title="Rejected rows by reason")
    reasons.add_column("reason")
    reasons.add_column("rows", justify="right")
    for row in (
        spark.read.format("delta")
        .load(summary["rejects"])
        .where(f"{DATE} = '{summary['date']}'")
        .groupBy("reason")
        .count()
        .orderBy("count", ascending=False)
        .limit(5)
        .collect()
    ):
        reasons.add_row(row["reason"], f"{row['count']:,}")
    console.print(reasons)
