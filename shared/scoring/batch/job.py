"""Nightly batch scoring of a Delta table: extract -> check -> score -> load.

The transforms (:func:`check_schema`, :func:`score_frame`, :func:`predictions`,
:func:`rejects`) are pure ``DataFrame -> DataFrame`` functions; reading and writing Delta
lives in :func:`read_source` and :func:`write_delta`; :func:`run` strings them together.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyspark import Accumulator, StorageLevel, TaskContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from scoring.batch import spec
from scoring.batch.progress import (
    Display,
    Progress,
    model_line,
    plan_line,
    rejects_line,
    scored_line,
)
from scoring.batch.spec import (
    ENGINES,
    FEATURES_JSON,
    REASON,
    SPARK_DEFAULT,
    SPARK_ENGINES,
    BatchJob,
    Engine,
)
from scoring.batch.tables import for_spark, is_catalog_name, raise_for_access
from scoring.errors import ConfigError, SchemaMismatchError, SourceNotFoundError
from scoring.lifecycle.loading import load_artifact
from scoring.model.artifact import Artifact, cached_scorer
from scoring.model.contract import Contract

__all__ = [
    "ENGINES",
    "REASON",
    "BatchJob",
    "Engine",
    "check_schema",
    "predictions",
    "read_source",
    "rejects",
    "rows_for_date",
    "run",
    "score_frame",
    "write_delta",
]

_NUMERIC = (
    T.ByteType,
    T.ShortType,
    T.IntegerType,
    T.LongType,
    T.FloatType,
    T.DoubleType,
    T.DecimalType,
    T.BooleanType,
)


def _reader(spark: SparkSession, table: str, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.table(table) if is_catalog_name(table) else reader.load(for_spark(table))


def table_version(spark: SparkSession, table: str) -> int:
    """The latest committed version of a Delta table (a location or a catalog name)."""
    target = table if is_catalog_name(table) else f"delta.`{for_spark(table)}`"
    try:
        row = spark.sql(f"DESCRIBE HISTORY {target} LIMIT 1").first()
    except Exception as exc:  # Spark raises AnalysisException and friends
        raise_for_access(table, exc)
        raise SourceNotFoundError(
            table,
            f"{type(exc).__name__}: {str(exc).splitlines()[0]}. "
            "Is it a Delta table path or catalog name?",
        ) from exc
    assert row is not None
    return int(row["version"])


def read_source(spark: SparkSession, table: str) -> tuple[DataFrame, int]:
    """Read ``table`` in place, pinned to its current version (returned for lineage)."""
    version = table_version(spark, table)
    return _reader(spark, table, version), version


def check_schema(
    schema: T.StructType, contract: Contract, date_column: str | None, source: str = "table"
) -> None:
    """Raise :class:`SchemaMismatchError` naming every missing or mistyped column."""

    def kind(t: T.DataType) -> spec.ColumnKind:
        if isinstance(t, T.StringType):
            return "string", t.simpleString()
        return ("number" if isinstance(t, _NUMERIC) else "other"), t.simpleString()

    problems = spec.schema_problems(
        {f.name: kind(f.dataType) for f in schema.fields}, contract, date_column
    )
    if problems:
        raise SchemaMismatchError(source, problems)


def rows_for_date(frame: DataFrame, date_column: str, date: str) -> DataFrame:
    kind = frame.schema[date_column].dataType
    return frame.where(F.col(date_column) == F.lit(date).cast(kind))


def _score_batches(
    contract_json: str,
    graph: Callable[[], bytes],
    passthrough: list[str],
    rows: Accumulator[int] | None,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function each Python worker runs over its Arrow batches."""

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        contract = Contract.from_json(contract_json)
        context = TaskContext.get()
        threads = max(1, context.cpus()) if context else 1
        # Built once per Python worker process and reused by every later task there.
        scorer = cached_scorer(contract, graph, threads)
        for batch in batches:
            if rows is not None:
                rows.add(batch.num_rows)
            yield spec.score_batch(scorer, batch, passthrough)

    return score


def score_frame(
    frame: DataFrame,
    artifact: Artifact,
    date_column: str | None,
    engine: Engine = SPARK_DEFAULT,
    rows: Accumulator[int] | None = None,
) -> DataFrame:
    """Score every row: key (+date), score, label, and a reason where a row was refused.

    The same columns, reasons and scores (bit for bit) as the arrow engine and the stream,
    vectorised through ``mapInArrow``; the ONNX bytes travel once per executor as a
    broadcast variable and are read only when a worker has no session for them yet.
    ``rows``: counts the rows scored, for progress (the driver sees a task's count when
    the task ends; a recomputed partition counts twice, so it is never a result).
    """
    contract = artifact.contract
    passthrough = [contract.key] + ([date_column] if date_column else [])
    if engine not in SPARK_ENGINES:
        raise ConfigError(
            f"The {engine!r} engine does not run on Spark; choose one of "
            f"{', '.join(SPARK_ENGINES)}, or run the job without Spark (`scoring batch run`)."
        )
    columns = list(dict.fromkeys(passthrough + contract.feature_names))
    narrow = frame.select(*columns)
    spark = frame.sparkSession
    graph = spark.sparkContext.broadcast(artifact.onnx_bytes)
    schema = T.StructType(
        [narrow.schema[c] for c in passthrough]
        + [
            T.StructField("score", T.DoubleType()),
            T.StructField("label", T.IntegerType()),
            T.StructField(REASON, T.StringType()),
            T.StructField(FEATURES_JSON, T.StringType()),
        ]
    )
    return narrow.mapInArrow(
        _score_batches(contract.to_json(), lambda: graph.value, passthrough, rows), schema
    )


def _lineage(artifact: Artifact, source_version: int, run_id: str, at: datetime) -> list[Column]:
    return [
        F.lit(artifact.name or artifact.source).alias("model_name"),
        F.lit(artifact.version).cast("string").alias("model_version"),
        F.lit(source_version).cast("long").alias("source_version"),
        F.lit(run_id).alias("run_id"),
        F.lit(at).cast("timestamp").alias("scored_at"),
    ]


def predictions(scored: DataFrame, lineage: list[Column], date_column: str | None) -> DataFrame:
    keys = [scored.columns[0]] + ([date_column] if date_column else [])
    return scored.where(F.col(REASON).isNull()).select(*keys, "score", "label", *lineage)


def rejects(scored: DataFrame, lineage: list[Column], date_column: str | None) -> DataFrame:
    keys = [scored.columns[0]] + ([date_column] if date_column else [])
    return scored.where(F.col(REASON).isNotNull()).select(
        *keys, F.col(REASON).alias("reason"), FEATURES_JSON, *lineage
    )


def write_delta(
    frame: DataFrame,
    table: str,
    date_column: str | None,
    date: str | None,
    metadata: dict[str, Any],
) -> None:
    """Replace this run's slice of ``table`` in one atomic Delta commit.

    With a date only that date's rows are replaced (``replaceWhere``), so re-running a
    date never duplicates; without one the whole table is replaced.
    """
    writer = (
        frame.write.format("delta")
        .mode("overwrite")
        .option("userMetadata", json.dumps(metadata, sort_keys=True))
    )
    if date is not None and date_column:
        kind = frame.schema[date_column].dataType.simpleString()
        writer = writer.option(
            "replaceWhere", f"`{date_column}` = CAST('{date}' AS {kind})"
        ).partitionBy(date_column)
    else:
        writer = writer.option("overwriteSchema", "true")
    try:
        if is_catalog_name(table):
            writer.saveAsTable(table)
        else:
            writer.save(for_spark(table))
    except Exception as exc:  # Py4J/Spark errors; a refused credential gets its own message
        raise_for_access(table, exc)
        raise


@contextmanager
def _rows_while_running(progress: Progress, rows: Accumulator[int]) -> Iterator[None]:
    """Report the rows scored by finished tasks every second while a Spark job runs."""
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(1.0):
            progress.rows(rows.value)

    reporter = threading.Thread(target=report, name="scoring-progress", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join()


def _score_and_write(
    source: DataFrame,
    artifact: Artifact,
    job: BatchJob,
    tables: tuple[str, str],
    source_version: int,
    progress: Progress,
    phase: str = "",
) -> tuple[dict[bool, int], datetime]:
    """Score ``source`` with ``artifact`` into ``tables`` (predictions, rejects).

    ``progress`` is in this run's ``{phase}plan`` phase when this is called. Returns the
    counts of scored (True) and refused (False) rows and the lineage time.
    """
    date_column = job.date_column if job.date else None
    spark = source.sparkSession
    rows = spark.sparkContext.accumulator(0)
    # Cached as the predictions are written, then read back for the counts and the rejects:
    # each row is read, checked and scored once, by the write itself (no job runs over the
    # source only to fill the cache).
    scored = score_frame(source, artifact, date_column, job.engine or SPARK_DEFAULT, rows).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    master = spark.sparkContext.master
    progress.done(plan_line(artifact, f"Spark ({master}), the {job.engine} engine", job))
    try:
        scored_at = datetime.now(UTC)
        lineage = _lineage(artifact, source_version, job.run_id, scored_at)
        metadata = spec.metadata(artifact, job, source_version)
        target, rejects_table = tables
        progress.start(f"{phase}score_and_write_predictions")
        with _rows_while_running(progress, rows):
            write_delta(
                predictions(scored, lineage, date_column), target, date_column, job.date, metadata
            )
        totals = scored.groupBy(F.col(REASON).isNull().alias("ok")).count().collect()
        counts = {True: 0, False: 0} | {bool(r["ok"]): int(r["count"]) for r in totals}
        progress.done(scored_line(counts, target))
        progress.start(f"{phase}write_rejects")
        write_delta(
            rejects(scored, lineage, date_column), rejects_table, date_column, job.date, metadata
        )
        progress.done(rejects_line(counts, rejects_table))
    finally:
        scored.unpersist()
    return counts, scored_at


def run(
    spark: SparkSession,
    job: BatchJob,
    artifact: Artifact | None = None,
    display: Display | None = None,
) -> dict[str, Any]:
    """Score ``job.source`` into ``job.target`` (+ rejects) on Spark; returns the run summary.

    With ``job.shadow`` the challenger then scores the same rows, read once at the same
    pinned version, into ``job.shadow_target`` (+ ``_rejects``) with the same columns and
    lineage; the summary's ``shadow`` entry says how that went. ``display``: where each
    phase is shown as it ends (default: log lines).
    """
    progress = Progress(display)
    job = job.on(job.engine or SPARK_DEFAULT)
    if job.engine not in SPARK_ENGINES:
        raise ConfigError(
            f"The {job.engine!r} engine runs without Spark: call scoring.batch.embedded.run, "
            f"or choose one of {', '.join(SPARK_ENGINES)}."
        )
    progress.start("load_model")
    artifact = artifact or load_artifact(job.model)
    progress.done(model_line(artifact))
    progress.start("pin_source")
    source, source_version = read_source(spark, job.source)
    progress.done(f"{job.source} version {source_version}")
    progress.start("plan")
    date_column = job.date_column if job.date else None
    where = f"{job.source} (version {source_version})"
    check_schema(source.schema, artifact.contract, date_column, where)
    if job.date:
        source = rows_for_date(source, job.date_column, job.date)
    if job.shadow:
        # Read once: both models score these cached rows, not two reads of the files.
        source = source.persist(StorageLevel.MEMORY_AND_DISK)

    def score_shadow(challenger: Artifact, tables: tuple[str, str]) -> dict[bool, int]:
        check_schema(source.schema, challenger.contract, date_column, where)
        counts, _ = _score_and_write(
            source, challenger, job, tables, source_version, progress, phase="shadow_"
        )
        return counts

    try:
        counts, scored_at = _score_and_write(
            source, artifact, job, (job.target, job.rejects_table), source_version, progress
        )
        shadow = progress.shadow(job, score_shadow)
    finally:
        if job.shadow:
            source.unpersist()
    return spec.summary(
        job,
        artifact,
        source_version,
        counts,
        time.monotonic() - progress.started,
        scored_at,
        progress.timings,
        shadow,
    )
