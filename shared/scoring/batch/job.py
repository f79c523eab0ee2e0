"""Nightly batch scoring of a Delta table: extract -> check -> score -> load.

The transforms (:func:`check_schema`, :func:`score_frame`, :func:`predictions`,
:func:`rejects`) are pure ``DataFrame -> DataFrame`` functions; reading and writing Delta
lives in :func:`read_source` and :func:`write_delta`; :func:`run` strings them together.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel, TaskContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from scoring.batch.tables import for_spark, is_catalog_name, normalize, raise_for_access
from scoring.errors import ConfigError, SchemaMismatchError, SourceNotFoundError
from scoring.model.artifact import Artifact, cached_scorer, load_artifact
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

log = logging.getLogger(__name__)

# jvm: validation in Spark SQL, ONNX Runtime for Java in the executors (scoring.batch.jvm).
# python: mapInArrow to Python workers running the shared Scorer; for clusters that take no
# custom jars and for Spark Connect clients (ADR 0006).
Engine = Literal["jvm", "python"]
ENGINES: tuple[str, ...] = get_args(Engine)

REASON = "reject_reason"
FEATURES_JSON = "features_json"
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


@dataclass(frozen=True)
class BatchJob:
    """What one run scores, and where the results go."""

    model: str
    source: str
    target: str
    rejects: str | None = None
    date: str | None = None
    date_column: str = "ds"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    engine: Engine = "jvm"
    # A challenger scoring the same pinned rows into its own tables (ADR 0009).
    shadow: str | None = None
    shadow_target: str | None = None

    def __post_init__(self) -> None:
        if (self.shadow is None) != (self.shadow_target is None):
            raise ConfigError(
                "--shadow and --shadow-target go together: give the challenger model and the "
                "Delta table its predictions go to (its rejects go to TABLE_rejects)."
            )

    @property
    def rejects_table(self) -> str:
        return self.rejects or f"{self.target.rstrip('/')}_rejects"

    @property
    def shadow_rejects_table(self) -> str | None:
        return f"{self.shadow_target.rstrip('/')}_rejects" if self.shadow_target else None


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
    fields = {f.name: f.dataType for f in schema.fields}
    problems: list[str] = []
    wanted = [(contract.key, None)] + [(f.name, f.type) for f in contract.features]
    if date_column:
        wanted.append((date_column, None))
    for name, kind in wanted:
        actual = fields.get(name)
        if actual is None:
            problems.append(f"missing column {name!r}" + (f" ({kind})" if kind else ""))
        elif kind == "string" and not isinstance(actual, T.StringType):
            problems.append(f"column {name!r} is {actual.simpleString()}, expected string")
        elif kind in {"double", "int64"} and not isinstance(actual, _NUMERIC):
            problems.append(f"column {name!r} is {actual.simpleString()}, expected {kind}")
    if problems:
        raise SchemaMismatchError(source, problems)


def rows_for_date(frame: DataFrame, date_column: str, date: str) -> DataFrame:
    kind = frame.schema[date_column].dataType
    return frame.where(F.col(date_column) == F.lit(date).cast(kind))


def _score_batches(
    contract_json: str, graph: Callable[[], bytes], passthrough: list[str]
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function each Python worker runs over its Arrow batches."""

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        contract = Contract.from_json(contract_json)
        context = TaskContext.get()
        threads = max(1, context.cpus()) if context else 1
        # Built once per Python worker process and reused by every later task there.
        scorer = cached_scorer(contract, graph, threads)
        names = contract.feature_names
        for batch in batches:
            result = scorer.score(batch)
            features: list[str | None] = [None] * batch.num_rows
            if result.rejected:  # rare: only refused rows are turned into Python objects
                rows = np.flatnonzero(~result.valid)
                values = batch.select(names).take(pa.array(rows)).to_pylist()
                for row, row_values in zip(rows, values, strict=True):
                    features[row] = json.dumps(row_values, default=str)
            yield pa.RecordBatch.from_arrays(
                [batch.column(c) for c in passthrough]
                + [result.score, result.label, result.reason, pa.array(features, pa.string())],
                names=[*passthrough, "score", "label", REASON, FEATURES_JSON],
            )

    return score


def score_frame(
    frame: DataFrame, artifact: Artifact, date_column: str | None, engine: Engine = "jvm"
) -> DataFrame:
    """Score every row: key (+date), score, label, and a reason where a row was refused.

    Both engines give the same columns, reasons and scores (bit for bit). ``jvm`` stays in
    the executors' JVMs (:mod:`scoring.batch.jvm`). ``python`` is vectorised through
    ``mapInArrow``; the ONNX bytes travel once per executor as a broadcast variable and are
    read only when a worker has no session for them yet.
    """
    contract = artifact.contract
    passthrough = [contract.key] + ([date_column] if date_column else [])
    if engine == "jvm":
        from scoring.batch import jvm

        return jvm.score_frame(frame, artifact, passthrough, REASON, FEATURES_JSON)
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
        _score_batches(contract.to_json(), lambda: graph.value, passthrough), schema
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


def _score_and_write(
    source: DataFrame,
    artifact: Artifact,
    job: BatchJob,
    tables: tuple[str, str],
    source_version: int,
    lap: Callable[[str], None],
    phase: str = "",
) -> tuple[dict[bool, int], datetime]:
    """Score ``source`` with ``artifact`` into ``tables`` (predictions, rejects).

    Returns the counts of scored (True) and refused (False) rows and the lineage time.
    """
    date_column = job.date_column if job.date else None
    # Cached as the predictions are written, then read back for the counts and the rejects:
    # each row is read, checked and scored once, by the write itself (no job runs over the
    # source only to fill the cache).
    scored = score_frame(source, artifact, date_column, job.engine).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    lap(f"{phase}plan")
    try:
        scored_at = datetime.now(UTC)
        lineage = _lineage(artifact, source_version, job.run_id, scored_at)
        metadata = {
            "model": artifact.name,
            "model_version": artifact.version,
            "source": job.source,
            "source_version": source_version,
            "run_id": job.run_id,
            "date": job.date,
        }
        target, rejects_table = tables
        write_delta(
            predictions(scored, lineage, date_column), target, date_column, job.date, metadata
        )
        lap(f"{phase}score_and_write_predictions")
        totals = scored.groupBy(F.col(REASON).isNull().alias("ok")).count().collect()
        counts = {True: 0, False: 0} | {bool(r["ok"]): int(r["count"]) for r in totals}
        log.info(
            "%s v%s scored %s rows (%s refused); wrote %s",
            artifact.name,
            artifact.version,
            counts[True] + counts[False],
            counts[False],
            target,
        )
        write_delta(
            rejects(scored, lineage, date_column), rejects_table, date_column, job.date, metadata
        )
        lap(f"{phase}write_rejects")
        log.info("wrote %s", rejects_table)
    finally:
        scored.unpersist()
    return counts, scored_at


def _shadow(
    source: DataFrame,
    job: BatchJob,
    source_version: int,
    lap: Callable[[str], None],
) -> dict[str, Any]:
    """Score the challenger into its own tables; a failure is reported, never raised.

    The champion's tables are already written when this runs, so a challenger that
    cannot be loaded, does not fit the source or fails while scoring leaves them as they
    are; the summary says what went wrong.
    """
    assert job.shadow is not None and job.shadow_target is not None
    tables = (job.shadow_target, job.shadow_rejects_table or "")
    summary: dict[str, Any] = {"model": job.shadow, "target": tables[0], "rejects": tables[1]}
    try:
        artifact = load_artifact(job.shadow)
        date_column = job.date_column if job.date else None
        check_schema(
            source.schema,
            artifact.contract,
            date_column,
            f"{job.source} (version {source_version})",
        )
        counts, _ = _score_and_write(
            source, artifact, job, tables, source_version, lap, phase="shadow_"
        )
    except Exception as exc:  # the challenger must never fail the champion's run
        log.exception("shadow %s failed; the champion's output stands", job.shadow)
        return {**summary, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {
        **summary,
        "status": "ok",
        "model_name": artifact.name,
        "model_version": artifact.version,
        "rows_scored": counts[True],
        "rows_rejected": counts[False],
    }


def run(spark: SparkSession, job: BatchJob, artifact: Artifact | None = None) -> dict[str, Any]:
    """Score ``job.source`` into ``job.target`` (+ rejects); returns the run summary.

    With ``job.shadow`` the challenger then scores the same rows, read once at the same
    pinned version, into ``job.shadow_target`` (+ ``_rejects``) with the same columns and
    lineage; the summary's ``shadow`` entry says how that went.
    """
    started = time.monotonic()
    # Where the job's own time goes, phase by phase (seconds, in the summary): a slow or
    # cold run can be told apart from a slow model without a profiler.
    timings: dict[str, float] = {}
    mark = started

    def lap(phase: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings[phase] = round(now - mark, 3)
        mark = now

    # One spelling of every table from here on: lineage, metadata and summary record it.
    job = replace(
        job,
        source=normalize(job.source),
        target=normalize(job.target),
        rejects=normalize(job.rejects_table),
        shadow_target=normalize(job.shadow_target) if job.shadow_target else None,
    )
    artifact = artifact or load_artifact(job.model)
    lap("load_model")
    source, source_version = read_source(spark, job.source)
    lap("pin_source")
    date_column = job.date_column if job.date else None
    check_schema(
        source.schema, artifact.contract, date_column, f"{job.source} (version {source_version})"
    )
    log.info(
        "scoring %s version %s with %s v%s (%s engine)",
        job.source,
        source_version,
        artifact.name,
        artifact.version,
        job.engine,
    )
    if job.date:
        source = rows_for_date(source, job.date_column, job.date)
    if job.shadow:
        # Read once: both models score these cached rows, not two reads of the files.
        source = source.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts, scored_at = _score_and_write(
            source, artifact, job, (job.target, job.rejects_table), source_version, lap
        )
        shadow = _shadow(source, job, source_version, lap) if job.shadow else None
    finally:
        if job.shadow:
            source.unpersist()
    seconds = time.monotonic() - started
    rows = counts[True] + counts[False]
    summary = {
        **asdict(job),
        "rejects": job.rejects_table,
        "model_name": artifact.name,
        "model_version": artifact.version,
        "source_version": source_version,
        "rows_read": rows,
        "rows_scored": counts[True],
        "rows_rejected": counts[False],
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds, 1) if seconds else None,
        "scored_at": scored_at.isoformat(),
        "timings": timings,
    }
    if shadow is not None:
        summary["shadow"] = shadow
    return summary
