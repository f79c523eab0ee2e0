"""The embedded engine (``--engine arrow``): one process, no JVM, for dates that fit a machine.

delta-rs pins the source to its current version and reads only the date's files
(partition values and file statistics prune the rest) as a stream of Arrow record
batches; a pool of threads scores them with the shared :class:`~scoring.model.artifact.Scorer`
(one onnxruntime intra-op thread per call, parallel across batches: onnxruntime and
pyarrow release the GIL), so the scores are bit for bit those of the Spark engine and
the stream; delta-rs writes the predictions as they come, replacing the date in one
commit. Refused rows are spilled to a local Parquet file on the way and written to the
rejects table in a second commit, as the Spark engine does.

Memory stays bounded whatever the date's size: at most ``2 x threads`` batches are being
scored, the scanner reads ahead a couple of batches, and delta-rs flushes Parquet files
as it goes (ADR 0010).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from scoring.batch import lake, spec
from scoring.batch.progress import (
    Display,
    Progress,
    model_line,
    plan_line,
    rejects_line,
    scored_line,
)
from scoring.batch.spec import FEATURES_JSON, REASON, BatchJob
from scoring.batch.tables import for_delta_rs, is_catalog_name, raise_for_access
from scoring.errors import ConfigError, TableFeatureError
from scoring.lifecycle.loading import load_artifact
from scoring.model.artifact import Artifact, Scorer

__all__ = ["BATCH_ROWS", "check_readable", "check_writable", "open_source", "run"]

# Rows per scored batch: large enough that a call's fixed cost vanishes, small enough that
# 2 x threads of them in flight stay a few tens of MB for a 20-feature model.
BATCH_ROWS = 65_536

# What delta-rs reads and writes correctly (the rest it refuses, or worse, misreads: a
# table with column mapping reads as nulls). Anything else is refused before any work.
_READER_FEATURES = {"timestampNtz", "vacuumProtocolCheck"}
_WRITER_FEATURES = {
    "appendOnly",
    "invariants",
    "checkConstraints",
    "timestampNtz",
    "domainMetadata",
    "vacuumProtocolCheck",
}
# Legacy protocol versions before table features: writer 5 is column mapping, 6 identity
# columns; reader 2 is column mapping.
_LEGACY_WRITER = {5: "columnMapping", 6: "identityColumns"}


def _unsupported(table: DeltaTable, write: bool) -> list[str]:
    protocol = table.protocol()
    found: list[str] = []
    if protocol.min_reader_version == 2:
        found.append("columnMapping")
    found += sorted(set(protocol.reader_features or ()) - _READER_FEATURES)
    if write:
        legacy = _LEGACY_WRITER.get(protocol.min_writer_version)
        if legacy:
            found.append(legacy)
        found += sorted(set(protocol.writer_features or ()) - _WRITER_FEATURES)
    mapping = table.metadata().configuration.get("delta.columnMapping.mode", "none")
    if mapping not in {"none", None}:
        found.append("columnMapping")
    return sorted(set(found))


def check_readable(table: DeltaTable, location: str) -> None:
    """Refuse a source with a Delta feature the embedded engine cannot read correctly."""
    found = _unsupported(table, write=False)
    if found:
        raise TableFeatureError(location, found, "read")


def check_writable(location: str, schema: pa.Schema, partition_by: list[str]) -> None:
    """Refuse, before anything is written, a target delta-rs cannot replace this run's rows in.

    A missing table is fine (the write creates it); an existing one must have no Delta
    feature delta-rs cannot write safely, the same partitioning and the same columns.
    """
    where, options = for_delta_rs(location)
    try:
        table = DeltaTable(where, storage_options=options or None)
    except TableNotFoundError:
        return
    except Exception as exc:  # delta-rs raises plain exceptions for I/O and protocol errors
        raise_for_access(location, exc)
        raise
    found = _unsupported(table, write=True)
    if found:
        raise TableFeatureError(location, found, "write")
    existing = table.metadata().partition_columns
    if partition_by and list(existing) != partition_by:
        raise ConfigError(
            f"The table {location} is partitioned by {list(existing) or 'nothing'}, not "
            f"{partition_by}; give another --target, or move that table away."
        )
    have = {f.name: f.type for f in pa.schema(table.schema().to_arrow())}
    differ = [
        f"{f.name} ({have.get(f.name, 'missing')}, this run writes {f.type})"
        for f in schema
        if have.get(f.name) != f.type
    ]
    if differ or set(have) != set(schema.names):
        extra = sorted(set(have) - set(schema.names))
        raise ConfigError(
            f"The table {location} has other columns than this run writes: "
            + "; ".join(differ + [f"{name} (not written by this run)" for name in extra])
            + ". Give another --target, or move that table away."
        )


@dataclass(frozen=True)
class _Outputs:
    """The two tables one model writes, their schemas and the lineage every row carries."""

    keys: list[str]
    predictions: pa.Schema
    rejects: pa.Schema
    lineage: dict[str, pa.Scalar]
    # The lineage columns, BATCH_ROWS long, built once: each batch takes a slice.
    constants: list[pa.Array] = field(repr=False)

    @classmethod
    def of(
        cls,
        source: pa.Schema,
        keys: list[str],
        artifact: Artifact,
        version: int,
        job: BatchJob,
        at: datetime,
    ) -> _Outputs:
        lineage = {
            "model_name": pa.scalar(artifact.name or artifact.source, pa.string()),
            "model_version": pa.scalar(
                None if artifact.version is None else str(artifact.version), pa.string()
            ),
            "source_version": pa.scalar(version, pa.int64()),
            "run_id": pa.scalar(job.run_id, pa.string()),
            "scored_at": pa.scalar(at, pa.timestamp("us", tz="UTC")),
        }
        head = [source.field(k) for k in keys]
        tail = [pa.field(name, value.type) for name, value in lineage.items()]
        return cls(
            keys,
            pa.schema(
                [*head, pa.field("score", pa.float64()), pa.field("label", pa.int32()), *tail]
            ),
            pa.schema(
                [
                    *head,
                    pa.field("reason", pa.string()),
                    pa.field(FEATURES_JSON, pa.string()),
                    *tail,
                ]
            ),
            lineage,
            [pa.repeat(value, BATCH_ROWS) for value in lineage.values()],
        )

    def split(self, scored: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """The scored rows as predictions, the refused ones as rejects, lineage added.

        Each side filters only the columns it keeps, and the lineage columns are slices of
        arrays built once: per batch, this is the engine's own cost beyond scoring.
        """
        ok = pc.is_null(scored.column(REASON))
        good = scored.select([*self.keys, "score", "label"])
        bad = scored.select([*self.keys, REASON, FEATURES_JSON])
        refused = scored.num_rows - pc.sum(ok.cast(pa.int64())).as_py()
        if refused:
            good, bad = good.filter(ok), bad.filter(pc.invert(ok))
        else:
            bad = bad.slice(0, 0)
        return self._with_lineage(good, self.predictions), self._with_lineage(bad, self.rejects)

    def _with_lineage(self, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
        n = batch.num_rows
        constant = [
            column.slice(0, n) if n <= len(column) else pa.repeat(value, n)
            for column, value in zip(self.constants, self.lineage.values(), strict=True)
        ]
        return pa.RecordBatch.from_arrays([*batch.columns, *constant], schema=schema)


def _scored(
    batches: Iterator[pa.RecordBatch],
    step: Callable[[pa.RecordBatch], tuple[pa.RecordBatch, pa.RecordBatch]],
    threads: int,
) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
    """``step`` over ``batches`` on ``threads`` threads, in order, at most 2 x threads in flight."""
    with ThreadPoolExecutor(threads, thread_name_prefix="scoring") as pool:
        pending: deque[Future[tuple[pa.RecordBatch, pa.RecordBatch]]] = deque()
        try:
            for batch in batches:
                pending.append(pool.submit(step, batch))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _write(
    location: str,
    data: pa.RecordBatchReader,
    date_column: str | None,
    predicate: str | None,
    metadata: dict[str, Any],
) -> None:
    """Replace this run's slice of ``location`` in one atomic Delta commit (delta-rs)."""
    where, options = for_delta_rs(location)
    try:
        write_deltalake(
            where,
            data,
            mode="overwrite",
            predicate=predicate,
            partition_by=[date_column] if date_column else None,
            schema_mode=None if predicate else "overwrite",
            storage_options=options or None,
            commit_properties=CommitProperties(
                custom_metadata={"userMetadata": json.dumps(metadata, sort_keys=True)}
            ),
        )
    except Exception as exc:  # delta-rs errors; a refused credential gets its own message
        raise_for_access(location, exc)
        raise


def _score_and_write(
    table: DeltaTable,
    artifact: Artifact,
    job: BatchJob,
    tables: tuple[str, str],
    source_version: int,
    progress: Progress,
    threads: int,
    phase: str = "",
) -> tuple[dict[bool, int], datetime]:
    """Score the pinned rows of ``table`` with ``artifact`` into (predictions, rejects).

    ``progress`` is in this run's ``{phase}plan`` phase when this is called.
    """
    contract = artifact.contract
    date_column = job.date_column if job.date else None
    keys = [contract.key] + ([date_column] if date_column else [])
    data = table.to_pyarrow_dataset()
    columns = list(dict.fromkeys(keys + contract.feature_names))
    where = lake.date_filter(data.schema, job.date_column, job.date) if job.date else None
    predicate = lake.date_predicate(data.schema, job.date_column, job.date) if job.date else None
    scored_at = datetime.now(UTC)
    outputs = _Outputs.of(data.schema, keys, artifact, source_version, job, scored_at)
    target, rejects_table = tables
    partition_by = [date_column] if date_column else []
    check_writable(target, outputs.predictions, partition_by)
    check_writable(rejects_table, outputs.rejects, partition_by)
    # One session, shared by the threads: onnxruntime's run() is thread-safe and each call
    # uses one intra-op thread, so the threads score different batches side by side.
    scorer: Scorer = artifact.scorer(1)
    metadata = spec.metadata(artifact, job, source_version)
    progress.done(plan_line(artifact, f"the arrow engine, {threads} threads", job))
    progress.start(f"{phase}score_and_write_predictions")

    def step(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return outputs.split(spec.score_batch(scorer, batch, keys))

    scanner = data.scanner(
        columns=columns,
        filter=where,
        batch_size=BATCH_ROWS,
        batch_readahead=2,
        fragment_readahead=1,
    )
    counts = {True: 0, False: 0}
    with tempfile.TemporaryDirectory(prefix="scoring-rejects-") as spill:
        spilled = Path(spill) / "rejects.parquet"
        with pq.ParquetWriter(spilled, outputs.rejects) as refused:

            def predictions() -> Iterator[pa.RecordBatch]:
                batches = (b for b in scanner.to_batches() if b.num_rows)
                for good, bad in _scored(batches, step, threads):
                    counts[True] += good.num_rows
                    counts[False] += bad.num_rows
                    if bad.num_rows:
                        refused.write_batch(bad)
                    progress.rows(counts[True] + counts[False])
                    yield good

            _write(
                target,
                pa.RecordBatchReader.from_batches(outputs.predictions, predictions()),
                date_column,
                predicate,
                metadata,
            )
        progress.done(scored_line(counts, target))
        progress.start(f"{phase}write_rejects")
        _write(
            rejects_table,
            pa.RecordBatchReader.from_batches(
                outputs.rejects,
                pq.ParquetFile(spilled).iter_batches(batch_size=BATCH_ROWS)
                if counts[False]
                else iter(()),
            ),
            date_column,
            predicate,
            metadata,
        )
    progress.done(rejects_line(counts, rejects_table))
    return counts, scored_at


def open_source(location: str) -> DeltaTable:
    """The source table at its latest version, refused when delta-rs cannot read it right."""
    table = lake.open_table(location)
    check_readable(table, location)
    return table


def run(
    job: BatchJob,
    artifact: Artifact | None = None,
    threads: int | None = None,
    display: Display | None = None,
) -> dict[str, Any]:
    """Score ``job.source`` into ``job.target`` (+ rejects) in this process; returns the summary.

    ``threads``: scoring threads (default: the machine's cores). With ``job.shadow`` the
    challenger then scores the same pinned version of the source into its own tables.
    ``display``: where each phase is shown as it ends (default: log lines).
    """
    progress = Progress(display)
    job = job.on("arrow")
    catalog = [t for t in job.tables if is_catalog_name(t)]
    if catalog:
        raise ConfigError(
            f"{catalog[0]!r} is a catalog table name, which only Spark's metastore resolves; "
            "give the table's location (a path or s3:// URI), or run on Spark (--engine python)."
        )
    threads = max(1, threads or os.cpu_count() or 1)
    progress.start("load_model")
    artifact = artifact or load_artifact(job.model)
    progress.done(model_line(artifact))
    progress.start("pin_source")
    table = open_source(job.source)
    source_version = table.version()
    progress.done(f"{job.source} version {source_version}")
    progress.start("plan")
    date_column = job.date_column if job.date else None
    where = f"{job.source} (version {source_version})"
    schema = table.to_pyarrow_dataset().schema
    spec.check_arrow_schema(schema, artifact.contract, date_column, where)
    counts, scored_at = _score_and_write(
        table, artifact, job, (job.target, job.rejects_table), source_version, progress, threads
    )

    def score_shadow(challenger: Artifact, tables: tuple[str, str]) -> dict[bool, int]:
        # The same pinned version, read again: delta-rs reads only the date's files.
        spec.check_arrow_schema(schema, challenger.contract, date_column, where)
        shadow_counts, _ = _score_and_write(
            table, challenger, job, tables, source_version, progress, threads, "shadow_"
        )
        return shadow_counts

    shadow = progress.shadow(job, score_shadow)
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
