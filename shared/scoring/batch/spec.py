"""What a batch run is, whatever engine runs it: the job, the engines, the checks and the summary.

Nothing here imports Spark: the embedded engine (:mod:`scoring.batch.embedded`) runs in a
process without a JVM, and the Spark engine (:mod:`scoring.batch.job`) share the same
job description, schema check, per-batch scoring, lineage metadata and summary, so the
two give the same tables and the same summary keys.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa

from scoring.batch.tables import is_catalog_name, normalize
from scoring.errors import ConfigError, SchemaMismatchError
from scoring.model.artifact import Artifact, Scorer
from scoring.model.contract import Contract

__all__ = [
    "ENGINES",
    "FEATURES_JSON",
    "REASON",
    "SPARK_DEFAULT",
    "SPARK_ENGINES",
    "BatchJob",
    "Engine",
    "Laps",
    "check_arrow_schema",
    "choose_engine",
    "engine_for",
    "metadata",
    "schema_problems",
    "score_batch",
    "shadow",
    "summary",
]

log = logging.getLogger(__name__)

# arrow: one process, no JVM: delta-rs reads and writes, onnxruntime scores on a thread
# pool (scoring.batch.embedded, ADR 0010). python: Spark, mapInArrow to Python workers
# running the shared Scorer (scoring.batch.job; ADR 0006 says why it is Spark's one engine).
Engine = Literal["arrow", "python"]
ENGINES: tuple[str, ...] = get_args(Engine)
SPARK_ENGINES: tuple[str, ...] = ("python",)
# The engine a Spark run uses when none is named.
SPARK_DEFAULT: Engine = "python"

REASON = "reject_reason"
FEATURES_JSON = "features_json"


@dataclass(frozen=True)
class BatchJob:
    """What one run scores, and where the results go.

    ``engine`` None: the default of where the job runs (:func:`choose_engine`).
    """

    model: str
    source: str
    target: str
    rejects: str | None = None
    date: str | None = None
    date_column: str = "ds"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    engine: Engine | None = None
    # A challenger scoring the same pinned rows into its own tables (ADR 0009).
    shadow: str | None = None
    shadow_target: str | None = None

    def __post_init__(self) -> None:
        if (self.shadow is None) != (self.shadow_target is None):
            raise ConfigError(
                "--shadow and --shadow-target go together: give the challenger model and the "
                "Delta table its predictions go to (its rejects go to TABLE_rejects)."
            )
        if self.engine is not None and self.engine not in ENGINES:
            raise ConfigError(
                f"Unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}."
            )

    @property
    def rejects_table(self) -> str:
        return self.rejects or f"{self.target.rstrip('/')}_rejects"

    @property
    def shadow_rejects_table(self) -> str | None:
        return f"{self.shadow_target.rstrip('/')}_rejects" if self.shadow_target else None

    def on(self, engine: Engine) -> BatchJob:
        """This job on ``engine``, every table in its one spelling (recorded in lineage,
        metadata and the summary)."""
        return replace(
            self,
            engine=engine,
            source=normalize(self.source),
            target=normalize(self.target),
            rejects=normalize(self.rejects_table),
            shadow_target=normalize(self.shadow_target) if self.shadow_target else None,
        )

    @property
    def tables(self) -> list[str]:
        """Every table the job reads or writes."""
        out = [self.source, self.target, self.rejects_table]
        if self.shadow_target:
            out += [self.shadow_target, self.shadow_rejects_table or ""]
        return out


def choose_engine(
    job: BatchJob, master: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Engine, str]:
    """The engine that runs ``job`` and why (:func:`engine_for` its tables)."""
    return engine_for(job.tables, job.engine, master, environ)


def engine_for(
    tables: Sequence[str],
    named: Engine | None = None,
    master: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Engine, str]:
    """The engine for work on ``tables`` and why: the one named, else the default of where
    it runs.

    One machine (``scoring batch run`` without ``--master``) gets the embedded engine: for a
    date that fits a machine it is many times faster than starting Spark (README,
    benchmarks). Work launched by spark-submit or given a Spark master runs on Spark, and
    so does work that names a catalog table, which only Spark's metastore can resolve.
    """
    if named is not None:
        return named, "named with --engine"
    env = os.environ if environ is None else environ
    catalog = [t for t in tables if is_catalog_name(t)]
    if catalog:
        return SPARK_DEFAULT, f"catalog table {catalog[0]!r} needs Spark's metastore"
    if "PYSPARK_GATEWAY_PORT" in env:
        return SPARK_DEFAULT, "launched by spark-submit"
    if master:
        return SPARK_DEFAULT, f"Spark master {master} given"
    return "arrow", "one machine: the embedded engine needs no JVM"


# How the schema check names a column's kind: string, number or something else.
ColumnKind = tuple[Literal["string", "number", "other"], str]


def schema_problems(
    columns: Mapping[str, ColumnKind], contract: Contract, date_column: str | None
) -> list[str]:
    """Every missing or mistyped column of a source, by its columns' kinds and type names."""
    problems: list[str] = []
    wanted = [(contract.key, None)] + [(f.name, f.type) for f in contract.features]
    if date_column:
        wanted.append((date_column, None))
    for name, kind in wanted:
        actual = columns.get(name)
        if actual is None:
            problems.append(f"missing column {name!r}" + (f" ({kind})" if kind else ""))
        elif kind == "string" and actual[0] != "string":
            problems.append(f"column {name!r} is {actual[1]}, expected string")
        elif kind in {"double", "int64"} and actual[0] != "number":
            problems.append(f"column {name!r} is {actual[1]}, expected {kind}")
    return problems


def check_arrow_schema(
    schema: pa.Schema, contract: Contract, date_column: str | None, source: str
) -> None:
    """Raise :class:`SchemaMismatchError` naming every missing or mistyped column."""

    def kind(t: pa.DataType) -> ColumnKind:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "string", str(t)
        number = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
        return ("number" if number or pa.types.is_boolean(t) else "other"), str(t)

    problems = schema_problems({f.name: kind(f.type) for f in schema}, contract, date_column)
    if problems:
        raise SchemaMismatchError(source, problems)


def _json_number(value: Any) -> Any:
    """A value as strict JSON holds it: NaN and infinities as strings, as Spark's to_json does."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def score_batch(scorer: Scorer, batch: pa.RecordBatch, passthrough: list[str]) -> pa.RecordBatch:
    """``passthrough`` columns, then score, label, reason and the refused rows' features as JSON.

    The one per-batch step of the Python engine's workers and the embedded engine's threads.
    """
    result = scorer.score(batch)
    features: list[str | None] = [None] * batch.num_rows
    if result.rejected:  # rare: only refused rows are turned into Python objects
        rows = np.flatnonzero(~result.valid)
        values = batch.select(scorer.contract.feature_names).take(pa.array(rows)).to_pylist()
        for row, row_values in zip(rows, values, strict=True):
            features[row] = json.dumps(
                {k: _json_number(v) for k, v in row_values.items()}, default=str
            )
    return pa.RecordBatch.from_arrays(
        [batch.column(c) for c in passthrough]
        + [result.score, result.label, result.reason, pa.array(features, pa.string())],
        names=[*passthrough, "score", "label", REASON, FEATURES_JSON],
    )


def metadata(artifact: Artifact, job: BatchJob, source_version: int) -> dict[str, Any]:
    """What every commit of the run records in its ``userMetadata``."""
    return {
        "model": artifact.name,
        "model_version": artifact.version,
        "source": job.source,
        "source_version": source_version,
        "run_id": job.run_id,
        "date": job.date,
    }


def shadow(
    job: BatchJob, score: Callable[[Artifact, tuple[str, str]], dict[bool, int]]
) -> dict[str, Any]:
    """Score the challenger with ``score(artifact, tables)``; a failure is reported, never raised.

    The champion's tables are already written when this runs, so a challenger that
    cannot be loaded, does not fit the source or fails while scoring leaves them as they
    are; the summary says what went wrong.
    """
    from scoring.lifecycle.loading import load_artifact

    assert job.shadow is not None and job.shadow_target is not None
    tables = (job.shadow_target, job.shadow_rejects_table or "")
    out: dict[str, Any] = {"model": job.shadow, "target": tables[0], "rejects": tables[1]}
    try:
        artifact = load_artifact(job.shadow)
        counts = score(artifact, tables)
    except Exception as exc:  # the challenger must never fail the champion's run
        log.exception("shadow %s failed; the champion's output stands", job.shadow)
        return {**out, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {
        **out,
        "status": "ok",
        "model_name": artifact.name,
        "model_version": artifact.version,
        "rows_scored": counts[True],
        "rows_rejected": counts[False],
    }


def summary(
    job: BatchJob,
    artifact: Artifact,
    source_version: int,
    counts: dict[bool, int],
    seconds: float,
    scored_at: datetime,
    timings: dict[str, float],
    shadow: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run's summary, the same keys whatever the engine."""
    rows = counts[True] + counts[False]
    out = {
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
        out["shadow"] = shadow
    return out


class Laps:
    """Seconds per phase of a run, for the summary's ``timings``.

    Where the job's own time goes, phase by phase: a slow or cold run can be told apart
    from a slow model without a profiler.
    """

    def __init__(self, started: float) -> None:
        self.timings: dict[str, float] = {}
        self._mark = started

    def __call__(self, phase: str) -> None:
        now = time.monotonic()
        self.timings[phase] = round(now - self._mark, 3)
        self._mark = now
