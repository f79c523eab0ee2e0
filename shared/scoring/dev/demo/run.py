"""``scoring demo``: both paths end to end on embedded defaults.

Generates a card-transaction Delta table, trains a fraud pipeline, packages and registers
it as ONNX, promotes it to ``champion`` and scores the newest date with the batch job (on
its default engine on one machine, the embedded arrow engine: no JVM);
then streams some of that date's rows through Kafka and the stream processor and checks
that both paths gave the same scores (:mod:`scoring.dev.demo.stream`). Everything lands under
the data dir (``SCORING_HOME``, default ``./.scoring``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from rich.console import Console
from rich.table import Table

from scoring.batch import lake
from scoring.batch.main import run_job
from scoring.batch.spec import BatchJob
from scoring.dev.demo.data import DATE, FEATURES, KEY, generate_day
from scoring.dev.demo.stream import run_stream_demo
from scoring.dev.demo.train import train
from scoring.lifecycle import registry
from scoring.lifecycle.packaging import package
from scoring.settings import load

__all__ = ["MODEL_NAME", "lake_paths", "run_demo", "write_demo_lake"]

MODEL_NAME = "fraud"
START = date(2026, 11, 1)


def lake_paths(home: Path) -> dict[str, str]:
    lake = home.resolve() / "lake"
    return {
        name: str(lake / name) for name in ("transactions", "fraud_scores", "fraud_scores_rejects")
    }


def write_demo_lake(path: str, days: int, rows_per_day: int, start: date = START) -> int:
    """Write the demo transactions as a Delta table partitioned by date, in one commit
    (replacing what was there); returns the table's version."""
    schema = generate_day(start, 1).schema
    batches = (
        batch
        for offset in range(days)
        for batch in generate_day(start + timedelta(days=offset), rows_per_day).to_batches()
    )
    write_deltalake(
        path,
        pa.RecordBatchReader.from_batches(schema, batches),
        partition_by=[DATE],
        mode="overwrite",
        schema_mode="overwrite",
    )
    return DeltaTable(path).version()


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
    console.rule("[bold]scoring demo: one ONNX artifact, nightly on Delta, live on Kafka")
    with _step(console, f"Writing {days} days x {rows_per_day:,} transactions as Delta"):
        source_version = write_demo_lake(paths["transactions"], days, rows_per_day)
    with _step(console, "Training the fraud pipeline (impute, scale, one-hot, logistic)"):
        history = (
            DeltaTable(paths["transactions"], version=source_version)
            .to_pyarrow_dataset()
            .to_table(filter=pc.field(DATE) < pa.scalar(date.fromisoformat(last_day)))
        )
        trained = train(history, work, paths["transactions"], source_version)
    with _step(console, "Converting to ONNX, verifying against scikit-learn, registering"):
        info = package(
            trained.model_file, MODEL_NAME, trained.sample_file, spec_file=trained.contract_file
        )
    with _step(console, f"Promoting version {info.version} to champion"):
        registry.promote(MODEL_NAME, info.version, "champion")
    with _step(console, f"Batch-scoring {last_day} with models:/{MODEL_NAME}@champion"):
        summary = run_job(
            BatchJob(
                model=f"models:/{MODEL_NAME}@champion",
                source=paths["transactions"],
                target=paths["fraud_scores"],
                rejects=paths["fraud_scores_rejects"],
                date=last_day,
            )
        )
    _show(console, summary, trained.metrics, settings.mlflow_tracking_uri)
    if stream_events > 0:
        rows, batch_scores = _stream_sample(paths, last_day, stream_events)
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


def _stream_sample(paths: dict[str, str], day: str, n: int) -> tuple[pa.Table, dict[str, float]]:
    """The first ``n`` source rows of ``day`` and the batch scores of those that were scored."""
    source = DeltaTable(paths["transactions"]).to_pyarrow_dataset()
    rows = source.to_table(filter=lake.date_filter(source.schema, DATE, day))
    rows = rows.sort_by(KEY).slice(0, n)
    scored = lake.read_date(paths["fraud_scores"], day, [KEY, "score"])
    scored = scored.filter(pc.is_in(scored[KEY], rows[KEY]))
    return rows, dict(
        zip(scored.column(KEY).to_pylist(), scored.column("score").to_pylist(), strict=True)
    )


def _show(
    console: Console,
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
            "engine",
            f"{summary['engine']} ({summary['engine_reason']}); {summary['seconds']:.1f}s "
            "(`make bench` compares the engines)",
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
    scores = lake.read_date(
        summary["target"], summary["date"], [KEY, "score", "label", "model_version"]
    )
    for row in scores.sort_by([("score", "descending")]).slice(0, 5).to_pylist():
        top.add_row(row[KEY], f"{row['score']:.4f}", str(row["label"]), row["model_version"])
    console.print(top)
    reasons = Table(title="Rejected rows by reason")
    reasons.add_column("reason")
    reasons.add_column("rows", justify="right")
    refused = lake.read_date(summary["rejects"], summary["date"], ["reason"])
    counts = refused.group_by("reason").aggregate([("reason", "count")])
    for row in counts.sort_by([("reason_count", "descending")]).slice(0, 5).to_pylist():
        reasons.add_row(row["reason"], f"{row['reason_count']:,}")
    console.print(reasons)
