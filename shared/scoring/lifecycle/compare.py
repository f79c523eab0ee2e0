"""How a challenger's predictions differ from the champion's on the same rows.

A shadow run leaves two sets of predictions for the same keys: the champion's and the
challenger's (two batch predictions tables, or an output and a shadow topic). This module
pairs them by key and measures how far apart they are:

- label agreement (share of paired rows with the same label),
- the PSI of the challenger's scores against the champion's,
- Spearman rank correlation of the two scores,
- the rows whose scores differ most,
- where the source has a label column, each metric (AUC, average precision) for both
  models and the difference with a bootstrap confidence interval.

:func:`pair` and :func:`compare` are pure functions over Arrow tables and arrays;
:func:`read_batch` reads one date of the tables with delta-rs, :func:`read_stream` a time
window of the output and shadow topics (with :mod:`scoring.lifecycle.compare_topics`);
:func:`write_report` and :func:`log_report` write the JSON report and the plot and log them
to MLflow.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from scoring.batch.checks import population_stability_index
from scoring.errors import ConfigError, GateFailedError
from scoring.lifecycle.compare_topics import latest_by_key, read_window

__all__ = [
    "GateThresholds",
    "Pairs",
    "bootstrap_difference",
    "compare",
    "gate",
    "log_report",
    "pair",
    "parse_time",
    "raise_for_gate",
    "rank_correlation",
    "read_batch",
    "read_stream",
    "write_report",
]

log = logging.getLogger(__name__)

REPORT_FILE = "comparison.json"
PLOT_FILE = "comparison.png"

Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Pairs:
    """The rows both models scored, aligned by key (one entry per key)."""

    keys: np.ndarray
    champion_score: np.ndarray
    challenger_score: np.ndarray
    champion_label: np.ndarray
    challenger_label: np.ndarray
    truth: np.ndarray | None = None  # the source's label, where it has one
    champion_only: int = 0  # keys the challenger did not score (refused, or missing)
    challenger_only: int = 0

    @property
    def rows(self) -> int:
        return int(self.keys.size)


def _column(table: pa.Table, name: str, what: str) -> np.ndarray:
    if name not in table.column_names:
        raise ConfigError(
            f"The {what} has no column {name!r} (columns: {', '.join(table.column_names)})."
        )
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False))


def pair(
    champion: pa.Table,
    challenger: pa.Table,
    key: str,
    truth: pa.Table | None = None,
    label_column: str | None = None,
) -> Pairs:
    """Align the champion's and the challenger's ``score``/``label`` rows by ``key``.

    Args:
        champion: The champion's predictions (``key``, ``score``, ``label``).
        challenger: The challenger's predictions, same columns.
        key: The key column both share.
        truth: Source rows with ``key`` and ``label_column`` (the true outcome), if any.
        label_column: The true outcome's column in ``truth``.

    Returns:
        The keys both scored, in key order, with both scores and labels and, where
        ``truth`` has the key, the true outcome.

    Raises:
        ConfigError: A table lacks a column, or a key appears twice in one table.
    """
    sides = []
    for table, what in ((champion, "champion's predictions"), (challenger, "challenger's")):
        keys = _column(table, key, what)
        if np.unique(keys).size != keys.size:
            raise ConfigError(
                f"The {what} repeat keys in {key!r}; compare one date (or one window) at a time."
            )
        sides.append(
            (keys, _column(table, "score", what).astype(np.float64), _column(table, "label", what))
        )
    (k1, s1, l1), (k2, s2, l2) = sides
    common, i1, i2 = np.intersect1d(k1, k2, assume_unique=True, return_indices=True)
    outcome = None
    if truth is not None:
        if label_column is None:
            raise ConfigError("A label column is needed to read the true outcome from the source.")
        tk = _column(truth, key, "source")
        tv = _column(truth, label_column, "source")
        known = dict(zip(tk.tolist(), tv.tolist(), strict=True))
        outcome = np.array([known.get(k) for k in common.tolist()], dtype=object)
    return Pairs(
        keys=common,
        champion_score=s1[i1],
        challenger_score=s2[i2],
        champion_label=l1[i1].astype(np.int64),
        challenger_label=l2[i2].astype(np.int64),
        truth=outcome,
        champion_only=int(k1.size - common.size),
        challenger_only=int(k2.size - common.size),
    )


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two score arrays (None when either is constant)."""
    from scipy.stats import rankdata

    if a.size < 2:
        return None
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def bootstrap_difference(
    truth: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    metric: Metric,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int]:
    """``metric(challenger) - metric(champion)`` with a percentile bootstrap interval.

    Both models are scored on the same resampled rows each time (a paired bootstrap), so
    the interval reflects the difference, not the two metrics' own noise. Resamples with
    a single class are skipped (AUC is undefined there).
    """
    rng = np.random.default_rng(seed)
    n = truth.size
    differences = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        sample = truth[rows]
        if sample.min() == sample.max():
            continue
        differences.append(metric(sample, challenger[rows]) - metric(sample, champion[rows]))
    champion_value, challenger_value = metric(truth, champion), metric(truth, challenger)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(differences, [tail, 1.0 - tail]) if differences else (np.nan, np.nan)
    return {
        "champion": champion_value,
        "challenger": challenger_value,
        "difference": challenger_value - champion_value,
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "resamples": len(differences),
    }


def _metrics() -> dict[str, Metric]:
    # The gates' own metric functions, so the shadow gate and the holdout gate agree.
    from scoring.lifecycle.rollout import METRICS

    return dict(METRICS)


def compare(
    pairs: Pairs,
    psi_bins: int = 10,
    top: int = 20,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The comparison report of ``pairs`` (JSON-able).

    Args:
        pairs: The aligned predictions (see :func:`pair`).
        psi_bins: Quantile bins of the PSI (the champion's scores are the reference).
        top: How many of the most different rows to list.
        resamples: Bootstrap resamples for each metric difference.
        seed: Seed of the bootstrap, so a report can be reproduced.

    Raises:
        ConfigError: No key was scored by both models.
    """
    if pairs.rows == 0:
        raise ConfigError(
            "The champion and the challenger have no scored key in common; check that both "
            "ran on the same date (or window) and the same key column."
        )
    a, b = pairs.champion_score, pairs.challenger_score
    gap = b - a
    order = np.argsort(-np.abs(gap), kind="stable")[:top]
    report: dict[str, Any] = {
        "rows": pairs.rows,
        "champion_only": pairs.champion_only,
        "challenger_only": pairs.challenger_only,
        "label_agreement": float(np.mean(pairs.champion_label == pairs.challenger_label)),
        "label_disagreements": int(np.sum(pairs.champion_label != pairs.challenger_label)),
        "psi": population_stability_index(a, b, psi_bins).value,
        "rank_correlation": rank_correlation(a, b),
        "score_difference": {
            "mean": float(gap.mean()),
            "mean_abs": float(np.abs(gap).mean()),
            "max_abs": float(np.abs(gap).max()),
        },
        "most_different": [
            {
                "key": pairs.keys[i].item() if hasattr(pairs.keys[i], "item") else pairs.keys[i],
                "champion_score": float(a[i]),
                "challenger_score": float(b[i]),
                "champion_label": int(pairs.champion_label[i]),
                "challenger_label": int(pairs.challenger_label[i]),
            }
            for i in order
        ],
        "metrics": None,
    }
    if pairs.truth is not None:
        known = np.array([t is not None for t in pairs.truth], dtype=bool)
        truth = pairs.truth[known].astype(np.int64)
        report["labelled_rows"] = int(known.sum())
        if truth.size and truth.min() != truth.max():
            report["metrics"] = {
                name: bootstrap_difference(truth, a[known], b[known], fn, resamples, seed=seed)
                for name, fn in _metrics().items()
            }
        else:
            log.warning("the labelled rows hold a single class: no metric difference")
    return report


class GateThresholds(BaseModel):
    """How close the challenger must stay to the champion (or how much better it must be)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_rows: int = Field(default=100, ge=1)
    min_label_agreement: float = Field(default=0.0, ge=0.0, le=1.0)
    max_psi: float | None = Field(default=None, gt=0.0)
    metric: str = "auc"
    # The challenger passes if the upper end of the metric difference's interval reaches
    # -max_metric_drop: it cannot be shown to be worse by more than that.
    max_metric_drop: float | None = Field(default=None, ge=0.0)


def gate(report: dict[str, Any], thresholds: GateThresholds) -> list[str]:
    """What keeps the challenger from promotion (empty: it passes)."""
    problems = []
    if report["rows"] < thresholds.min_rows:
        problems.append(f"only {report['rows']} paired rows (need {thresholds.min_rows})")
    if report["label_agreement"] < thresholds.min_label_agreement:
        problems.append(
            f"label agreement {report['label_agreement']:.4f} < {thresholds.min_label_agreement:g}"
        )
    if thresholds.max_psi is not None and report["psi"] > thresholds.max_psi:
        problems.append(f"score PSI {report['psi']:.4f} > {thresholds.max_psi:g}")
    if thresholds.max_metric_drop is not None:
        metrics = report.get("metrics") or {}
        found = metrics.get(thresholds.metric)
        if found is None:
            problems.append(f"no labelled rows to measure {thresholds.metric}")
        elif not found["ci_high"] >= -thresholds.max_metric_drop:
            problems.append(
                f"{thresholds.metric} {found['challenger']:.4f} vs champion "
                f"{found['champion']:.4f} (difference {found['difference']:+.4f}, "
                f"interval [{found['ci_low']:+.4f}, {found['ci_high']:+.4f}], "
                f"allowed drop {thresholds.max_metric_drop:g})"
            )
    return problems


def raise_for_gate(report: dict[str, Any], thresholds: GateThresholds) -> None:
    """Raise :class:`GateFailedError` with the numbers when :func:`gate` finds problems."""
    problems = gate(report, thresholds)
    if problems:
        raise GateFailedError("shadow comparison", "; ".join(problems))


def read_batch(
    champion: str,
    challenger: str,
    date: str,
    key: str,
    date_column: str = "ds",
    source: str | None = None,
    label_column: str | None = None,
) -> Pairs:
    """Pair one date of two predictions tables (paths or URIs), read with delta-rs."""
    from scoring.batch import lake

    columns: Sequence[str] = (key, "score", "label")
    truth = None
    if source is not None and label_column is not None:
        truth = lake.read_date(source, date, (key, label_column), date_column)
    return pair(
        lake.read_date(champion, date, columns, date_column),
        lake.read_date(challenger, date, columns, date_column),
        key,
        truth,
        label_column,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str) -> int:
    """Epoch milliseconds of ``text``: ISO-8601 (without a zone: UTC) or epoch milliseconds.

    Raises:
        ConfigError: ``text`` is neither.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a time: give ISO-8601 (2026-11-25T19:30:00Z) or epoch "
            "milliseconds (1795635000000)."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _iso(epoch_ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=epoch_ms)).isoformat(timespec="milliseconds")


def read_stream(
    output_topic: str,
    shadow_topic: str,
    key: str,
    since_ms: int,
    until_ms: int | None = None,
    challenger_version: str | None = None,
    bootstrap: str = "",
    kafka: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> tuple[Pairs, dict[str, Any]]:
    """Pair the champion's (output topic) and the challenger's (shadow topic) predictions.

    Reads the records committed in the window ``[since_ms, until_ms]`` (record
    timestamps; ``until_ms`` defaults to now) with ``read_committed``, keeps each key's
    last record, and pairs them by ``key``. With ``challenger_version``, the shadow
    topic's records of any other version (an earlier challenger) are left out.

    Args:
        output_topic: The champion's predictions.
        shadow_topic: The challenger's predictions, same keys and record shape.
        key: The contract's key field in the records.
        since_ms: The window's start, epoch milliseconds.
        until_ms: The window's end (default: now).
        challenger_version: Keep only the shadow records of this model version.
        bootstrap: ``host:port`` of the cluster.
        kafka: Extra client properties (security, SASL, TLS).
        timeout: Seconds the read may take.

    Returns:
        The pairs and, for the report, the window and what was read of each topic.
    """
    until_ms = int(time.time() * 1000) if until_ms is None else until_ms
    if until_ms < since_ms:
        raise ConfigError(f"the window ends ({_iso(until_ms)}) before it starts ({_iso(since_ms)})")
    read = read_window((output_topic, shadow_topic), since_ms, until_ms, bootstrap, kafka, timeout)
    champion = latest_by_key(read[output_topic], key, topic=output_topic)
    challenger = latest_by_key(read[shadow_topic], key, challenger_version, shadow_topic)
    window = {
        "since": _iso(since_ms),
        "until": _iso(until_ms),
        "challenger_version": challenger_version,
        "output_topic": {"topic": output_topic, **champion.counts()},
        "shadow_topic": {"topic": shadow_topic, **challenger.counts()},
    }
    for topic, side in ((output_topic, champion), (shadow_topic, challenger)):
        if side.repeated:
            log.warning(
                "%s: %d records replaced by a later one of the same key", topic, side.repeated
            )
    return pair(champion.table, challenger.table, key), window


def _plot(pairs: Pairs, report: dict[str, Any], title: str, path: Path) -> None:
    """Challenger vs champion scores (left) and both score distributions (right)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    a, b = pairs.champion_score, pairs.challenger_score
    left.scatter(a, b, s=3, alpha=0.3)
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    left.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    rho = report["rank_correlation"]
    left.set(
        title=f"per row: agreement {report['label_agreement']:.4f}, "
        f"rank corr. {'n/a' if rho is None else f'{rho:.4f}'}",
        xlabel="champion score",
        ylabel="challenger score",
    )
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 51)
    right.hist(a, bins=bins, density=True, histtype="step", lw=2, label="champion")
    right.hist(b, bins=bins, density=True, histtype="step", lw=2, ls="--", label="challenger")
    right.set_yscale("log")
    right.legend(fontsize=8)
    right.set(
        title=f"score distributions, PSI {report['psi']:.4f}",
        xlabel="score",
        ylabel="density (log)",
    )
    figure.suptitle(f"{title}: {pairs.rows:,} rows scored by both", fontsize=10)
    figure.savefig(path, dpi=100)


def write_report(
    pairs: Pairs, report: dict[str, Any], out_dir: Path, title: str = "shadow comparison"
) -> dict[str, Path]:
    """Write ``comparison.json`` and ``comparison.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"report": out_dir / REPORT_FILE, "plot": out_dir / PLOT_FILE}
    files["report"].write_text(json.dumps(report, indent=2, default=str))
    _plot(pairs, report, title, files["plot"])
    return files


def log_report(
    report: dict[str, Any], files: dict[str, Path], experiment: str, tags: dict[str, str]
) -> str:
    """Record the comparison as an MLflow run in ``experiment``; returns the run id."""
    from mlflow.entities import Metric as MlflowMetric
    from mlflow.entities import RunTag

    from scoring.lifecycle.registry import tracking

    mlc, experiment_id = tracking(experiment)
    run_id = mlc.create_run(experiment_id, run_name="shadow-comparison").info.run_id
    values: dict[str, float | None] = {
        "rows": report["rows"],
        "label_agreement": report["label_agreement"],
        "label_disagreements": report["label_disagreements"],
        "psi": report["psi"],
        "rank_correlation": report["rank_correlation"],
        "mean_abs_score_difference": report["score_difference"]["mean_abs"],
    }
    for name, found in (report.get("metrics") or {}).items():
        for part in ("champion", "challenger", "difference", "ci_low", "ci_high"):
            values[f"{name}_{part}"] = found[part]
    now = int(time.time() * 1000)
    mlc.log_batch(
        run_id,
        metrics=[
            MlflowMetric(k, float(v), now, 0)
            for k, v in values.items()
            if v is not None and np.isfinite(v)
        ],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    for path in files.values():
        mlc.log_artifact(run_id, str(path), artifact_path="comparison")
    mlc.set_terminated(run_id, "FINISHED")
    return run_id
