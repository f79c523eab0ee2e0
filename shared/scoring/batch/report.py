"""One date of a batch run's output: observed from the tables, checked, reported.

:func:`observe` reads what the checks in :mod:`scoring.batch.checks` need from the Delta tables
(without Spark, see :mod:`scoring.batch.lake`); :func:`write_report` writes the run report (JSON
plus a score-distribution plot) and :func:`log_report` records it as an MLflow run. The
``scoring batch check`` and ``scoring batch report`` commands, which the nightly DAG runs
after the batch job, are thin wrappers around these.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoring.batch import lake
from scoring.batch.checks import CheckReport, Observed, Thresholds
from scoring.batch.tables import normalize
from scoring.errors import SourceNotFoundError

__all__ = ["Tables", "log_report", "observe", "write_report"]

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
PLOT_FILE = "score_distribution.png"
SUMMARY_FILE = "batch_summary.json"


@dataclass(frozen=True)
class Tables:
    """Where a batch run read and wrote (paths or URIs)."""

    source: str
    predictions: str
    rejects: str | None = None
    date_column: str = "ds"

    def __post_init__(self) -> None:
        # One spelling per table (absolute path, s3:// URI), as the batch job records it.
        for name in ("source", "predictions", "rejects"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, normalize(value))

    @property
    def rejects_table(self) -> str:
        # The batch job's default (scoring.batch.job.BatchJob.rejects_table).
        return self.rejects or f"{self.predictions.rstrip('/')}_rejects"


def _distinct(table: pa.Table, column: str) -> list[Any]:
    return [v for v in pc.unique(table[column]).to_pylist() if v is not None]


def _most_common(table: pa.Table, column: str) -> Any:
    counts = Counter(table[column].to_pylist())
    return counts.most_common(1)[0][0] if counts else None


def _scores_of_version(
    tables: Tables, day: str, model_name: str | None, model_version: str | None
) -> np.ndarray:
    data = lake.read_date(
        tables.predictions, day, ["score", "model_name", "model_version"], tables.date_column
    )
    mask = pc.and_kleene(
        pc.equal(data["model_name"], model_name)
        if model_name is not None
        else pc.is_null(data["model_name"]),
        pc.equal(data["model_version"], model_version)
        if model_version is not None
        else pc.is_null(data["model_version"]),
    )
    return data.filter(pc.fill_null(mask, False))["score"].to_numpy()


def observe(
    tables: Tables, date: str, reference_date: str | None = None, lookback_days: int = 7
) -> Observed:
    """Counts, versions, run ids and scores of ``date``, plus the reference scores.

    The source is counted at the version the run recorded on its output rows, so data
    that lands after the run does not make the counts disagree. Without
    ``reference_date`` the reference is the newest of the previous ``lookback_days``
    dates in the predictions table scored by the same model version.
    """
    column = tables.date_column
    predicted = lake.read_date(
        tables.predictions,
        date,
        ["score", "model_name", "model_version", "source_version", "run_id"],
        column,
    )
    rejected = lake.read_date(tables.rejects_table, date, ["source_version", "run_id"], column)
    versions = sorted(
        {int(v) for t in (predicted, rejected) for v in _distinct(t, "source_version")}
    )
    notes: list[str] = []
    if len(versions) == 1:
        try:
            source_rows = lake.count_rows(tables.source, date, column, versions[0])
        except SourceNotFoundError as exc:  # that version was vacuumed or its log cleaned up
            notes.append(
                f"source version {versions[0]} is no longer readable ({exc}); counted latest"
            )
            source_rows = lake.count_rows(tables.source, date, column)
    else:
        source_rows = lake.count_rows(tables.source, date, column)
    model_name = _most_common(predicted, "model_name")
    model_version = _most_common(predicted, "model_version")
    reference_scores: np.ndarray | None = None
    reference: str | None = None
    if reference_date:
        reference_scores = lake.read_date(tables.predictions, reference_date, ["score"], column)[
            "score"
        ].to_numpy()
        reference = f"{reference_date} (configured)"
    else:
        for day in lake.earlier_dates(tables.predictions, date, column, lookback_days):
            scores = _scores_of_version(tables, day, model_name, model_version)
            if scores.size:
                reference_scores, reference = scores, f"{day} (model version {model_version})"
                break
        else:
            reference = (
                f"no date in the {lookback_days} before {date} was scored by model "
                f"version {model_version}"
            )
    return Observed(
        date=date,
        source_rows=source_rows,
        predicted_rows=predicted.num_rows,
        rejected_rows=rejected.num_rows,
        source_versions=tuple(versions),
        prediction_run_ids=tuple(sorted(_distinct(predicted, "run_id"))),
        reject_run_ids=tuple(sorted(_distinct(rejected, "run_id"))),
        model_name=model_name,
        model_version=model_version,
        scores=predicted["score"].to_numpy(zero_copy_only=False).astype(np.float64),
        reference_scores=reference_scores,
        reference=reference,
        notes=tuple(notes),
    )


def _plot(report: CheckReport, thresholds: Thresholds, path: Path) -> None:
    """Score histograms (today vs reference) and the PSI bins, side by side."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    o = report.observed
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    current = o.scores[np.isfinite(o.scores)]
    reference = None
    if o.reference_scores is not None:
        reference = o.reference_scores[np.isfinite(o.reference_scores)]
    both = np.concatenate([current, reference]) if reference is not None else current
    if both.size:
        lo, hi = float(both.min()), float(both.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 51)
        left.hist(current, bins=bins, density=True, histtype="step", lw=2, label=f"{o.date}")
        if reference is not None and reference.size:
            left.hist(
                reference, bins=bins, density=True, histtype="step", lw=2, ls="--",
                label=f"reference {o.reference}",
            )  # fmt: skip
        left.set_yscale("log")
        left.legend(loc="upper right", fontsize=8)
    left.set(title=f"Score distribution, {o.date}", xlabel="score", ylabel="density (log)")
    if report.psi is not None:
        psi = report.psi
        positions = np.arange(psi.expected.size)
        right.bar(positions - 0.2, psi.expected, width=0.4, label="reference")
        right.bar(positions + 0.2, psi.actual, width=0.4, label=o.date)
        edges = psi.edges
        labels = [f"<{edges[1]:.3g}"] + [f"≥{e:.3g}" for e in edges[1:-1]]
        right.set_xticks(positions, labels, rotation=45, fontsize=7)
        right.legend(fontsize=8)
        right.set(
            title=f"PSI {psi.value:.4f} (max {thresholds.max_psi:g}) over reference quantile bins",
            xlabel="bin (lower edge)",
            ylabel="share of rows",
        )
    else:
        right.axis("off")
        drift = next(c for c in report.checks if c.name == "drift")
        right.text(0.5, 0.5, drift.message, ha="center", va="center", wrap=True)
    figure.suptitle(
        f"{o.model_name} v{o.model_version}: {o.predicted_rows:,} scored, "
        f"{o.rejected_rows:,} rejected, {o.source_rows:,} source rows - checks "
        f"{'passed' if report.passed else 'FAILED'}",
        fontsize=10,
    )
    figure.savefig(path, dpi=100)


def write_report(
    report: CheckReport,
    tables: Tables,
    thresholds: Thresholds,
    out_dir: Path,
    summary: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, the plot, and the batch summary (if any) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"report": out_dir / REPORT_FILE, "plot": out_dir / PLOT_FILE}
    document = {
        **report.as_dict(),
        "tables": {
            "source": tables.source,
            "predictions": tables.predictions,
            "rejects": tables.rejects_table,
            "date_column": tables.date_column,
        },
        "thresholds": thresholds.model_dump(),
        "batch": summary,
    }
    if report.psi is not None:
        document["psi_bins"] = {
            "edges": [float(e) for e in report.psi.edges],
            "reference_share": report.psi.expected.tolist(),
            "current_share": report.psi.actual.tolist(),
        }
    files["report"].write_text(json.dumps(document, indent=2, default=str))
    _plot(report, thresholds, files["plot"])
    if summary is not None:
        files["summary"] = out_dir / SUMMARY_FILE
        files["summary"].write_text(json.dumps(summary, indent=2))
    return files


def _metrics(
    report: CheckReport, thresholds: Thresholds, summary: dict[str, Any] | None
) -> dict[str, float]:
    o = report.observed
    values: dict[str, float | None] = {
        "source_rows": o.source_rows,
        "predicted_rows": o.predicted_rows,
        "rejected_rows": o.rejected_rows,
        "max_rejects_ratio": thresholds.max_rejects_ratio,
        "max_psi": thresholds.max_psi,
    }
    for check in report.checks:
        for key in ("rejects_ratio", "psi", "reference_rows"):
            if key in check.values:
                values[key] = check.values[key]
    for key, name in (("seconds", "batch_seconds"), ("rows_per_second", "batch_rows_per_second")):
        if summary and summary.get(key) is not None:
            values[name] = summary[key]
    return {k: float(v) for k, v in values.items() if v is not None}


def log_report(
    report: CheckReport,
    tables: Tables,
    thresholds: Thresholds,
    files: dict[str, Path],
    experiment: str,
    summary: dict[str, Any] | None = None,
) -> str:
    """Record the report as an MLflow run in ``experiment``; returns the run id.

    One MLflow run per date and batch run: reporting the same output again (a retried
    task, a re-run of the report) updates that run instead of adding another.
    """
    from mlflow.entities import Metric, RunTag

    from scoring.lifecycle.registry import tracking

    mlc, experiment_id = tracking(experiment)
    o = report.observed
    batch_run = ",".join(sorted(set(o.prediction_run_ids) | set(o.reject_run_ids)))
    tags = {
        "scoring.date": o.date,
        "scoring.batch_run_id": batch_run,
        "scoring.model_name": str(o.model_name),
        "scoring.model_version": str(o.model_version),
        "scoring.source_version": ",".join(map(str, o.source_versions)),
        "scoring.checks": "passed" if report.passed else "failed",
        "scoring.source": tables.source,
        "scoring.predictions": tables.predictions,
        "scoring.rejects": tables.rejects_table,
        "scoring.reference": str(o.reference),
    }
    existing: list[Any] = []
    if "'" not in o.date + batch_run:
        existing = mlc.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.`scoring.date` = '{o.date}' and tags.`scoring.batch_run_id` = '{batch_run}'"
            ),
            max_results=1,
        )
    if existing:
        run_id = existing[0].info.run_id
        log.info("updating MLflow run %s for %s (run %s)", run_id, o.date, batch_run)
    else:
        run_id = mlc.create_run(experiment_id, run_name=f"batch-{o.date}").info.run_id
    now = int(time.time() * 1000)
    mlc.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in _metrics(report, thresholds, summary).items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    for path in files.values():
        mlc.log_artifact(run_id, str(path), artifact_path="report")
    mlc.set_terminated(run_id, "FINISHED" if report.passed else "FAILED")
    return run_id
