"""Data checks on one date of a batch run's output: pure functions over counts and scores.

Three checks, each returning a :class:`CheckResult` whose message names the check and
its numbers:

- ``reconcile``: predictions + rejects for the date equal the source rows for the date (at
  the source version the run recorded), all written by one run;
- ``rejects_ratio``: the share of refused rows is under a threshold;
- ``drift``: the population stability index (PSI) of the scores against a reference
  distribution (an earlier date scored by the same model version, or a configured one) is
  under a threshold.

What is observed (:class:`Observed`) is gathered from the tables by
:func:`scoring.batch.report.observe`; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scoring.errors import ChecksFailedError

__all__ = [
    "CheckReport",
    "CheckResult",
    "Observed",
    "Psi",
    "Thresholds",
    "drift",
    "population_stability_index",
    "reconcile",
    "rejects_ratio",
    "run_checks",
]

Status = Literal["passed", "failed", "skipped"]


class Thresholds(BaseModel):
    """Limits the output must stay within."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_rejects_ratio: float = Field(default=0.05, ge=0.0, le=1.0)
    max_psi: float = Field(default=0.2, gt=0.0)
    psi_bins: int = Field(default=10, ge=2, le=100)
    # Below this many rows on either side a PSI is mostly sampling noise.
    min_drift_rows: int = Field(default=100, ge=1)


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, **self.values}


@dataclass(frozen=True)
class Psi:
    """A population stability index and the per-bin figures behind it."""

    value: float
    edges: np.ndarray  # bin edges from the reference's quantiles (first -inf, last +inf)
    expected: np.ndarray  # reference share per bin
    actual: np.ndarray  # current share per bin

    @property
    def contributions(self) -> np.ndarray:
        e, a = _floored(self.expected), _floored(self.actual)
        return (a - e) * np.log(a / e)


_FLOOR = 1e-4  # an empty bin counts as this share, so one empty bin cannot make PSI infinite


def _floored(shares: np.ndarray) -> np.ndarray:
    return np.maximum(shares, _FLOOR)


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def population_stability_index(
    reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray, bins: int = 10
) -> Psi:
    """PSI of ``current`` against ``reference`` over the reference's quantile bins.

    ``sum((a - e) * ln(a / e))`` over bins, where ``e`` and ``a`` are the reference's and the
    current's share of rows in each bin. Quantile bins give each bin about the same share
    of the reference, so skewed scores (most near 0) still get resolution where they are.
    Non-finite values are ignored; both inputs must have at least one finite value.
    """
    ref, cur = _finite(reference), _finite(current)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("PSI needs at least one finite value on each side")
    inner = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=inner.size + 1)
    actual = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=inner.size + 1)
    psi = Psi(
        value=0.0,
        edges=np.concatenate([[-np.inf], inner, [np.inf]]),
        expected=expected / ref.size,
        actual=actual / cur.size,
    )
    return Psi(float(psi.contributions.sum()), psi.edges, psi.expected, psi.actual)


@dataclass(frozen=True)
class Observed:
    """What one date of a run's output looks like (gathered by scoring.batch.report.observe)."""

    date: str
    source_rows: int
    predicted_rows: int
    rejected_rows: int
    source_versions: tuple[int, ...] = ()  # recorded on the date's output rows
    prediction_run_ids: tuple[str, ...] = ()
    reject_run_ids: tuple[str, ...] = ()
    model_name: str | None = None
    model_version: str | None = None
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    reference_scores: np.ndarray | None = None
    reference: str | None = None  # where the reference came from, e.g. "2026-11-01"
    notes: tuple[str, ...] = ()


def reconcile(observed: Observed) -> CheckResult:
    """Every source row of the date is either a prediction or a reject, from one run."""
    o = observed
    output = o.predicted_rows + o.rejected_rows
    values: dict[str, Any] = {
        "source_rows": o.source_rows,
        "predicted_rows": o.predicted_rows,
        "rejected_rows": o.rejected_rows,
        "difference": output - o.source_rows,
        "source_versions": list(o.source_versions),
    }
    runs = sorted(set(o.prediction_run_ids) | set(o.reject_run_ids))
    version = f" (version {o.source_versions[0]})" if len(o.source_versions) == 1 else ""
    problems = []
    if output != o.source_rows:
        gap = o.source_rows - output
        problems.append(
            f"source has {o.source_rows} rows for {o.date}{version} but predictions "
            f"{o.predicted_rows} + rejects {o.rejected_rows} = {output} "
            f"({abs(gap)} {'missing' if gap > 0 else 'too many'})"
        )
    if len(o.source_versions) > 1:
        problems.append(
            f"the date's output was read from source versions {list(o.source_versions)}, not one"
        )
    if len(runs) > 1:
        problems.append(
            f"predictions were written by run(s) {list(o.prediction_run_ids)} and rejects by "
            f"{list(o.reject_run_ids)}: a run did not finish both writes; re-run the date"
        )
    if problems:
        return CheckResult("reconcile", "failed", "reconcile: " + "; ".join(problems), values)
    return CheckResult(
        "reconcile",
        "passed",
        f"reconcile: predictions {o.predicted_rows} + rejects {o.rejected_rows} = source "
        f"{o.source_rows} rows{version}",
        values,
    )


def rejects_ratio(observed: Observed, max_ratio: float) -> CheckResult:
    """The share of the date's rows refused by the contract is at most ``max_ratio``."""
    total = observed.predicted_rows + observed.rejected_rows
    ratio = observed.rejected_rows / total if total else 0.0
    values = {"rejects_ratio": ratio, "max_rejects_ratio": max_ratio}
    text = (
        f"rejects_ratio: {observed.rejected_rows} of {total} rows rejected ({ratio:.2%}) "
        f"{'>' if ratio > max_ratio else '<='} max {max_ratio:.2%}"
    )
    return CheckResult("rejects_ratio", "failed" if ratio > max_ratio else "passed", text, values)


def drift(observed: Observed, thresholds: Thresholds) -> tuple[CheckResult, Psi | None]:
    """The scores' PSI against the reference is at most ``thresholds.max_psi``."""
    values: dict[str, Any] = {"psi": None, "max_psi": thresholds.max_psi}
    reference = observed.reference_scores
    if reference is None or reference.size == 0:
        return (
            CheckResult(
                "drift",
                "skipped",
                f"drift: skipped, no reference scores ({observed.reference or 'none found'})",
                values,
            ),
            None,
        )
    ref, cur = _finite(reference), _finite(observed.scores)
    values.update(reference=observed.reference, reference_rows=ref.size, current_rows=cur.size)
    if min(ref.size, cur.size) < thresholds.min_drift_rows:
        return (
            CheckResult(
                "drift",
                "skipped",
                f"drift: skipped, {cur.size} current and {ref.size} reference scores; at least "
                f"{thresholds.min_drift_rows} on each side are needed for a stable PSI",
                values,
            ),
            None,
        )
    psi = population_stability_index(ref, cur, thresholds.psi_bins)
    values["psi"] = psi.value
    over = psi.value > thresholds.max_psi
    text = (
        f"drift: score PSI {psi.value:.4f} against {observed.reference} ({ref.size} rows) "
        f"{'>' if over else '<='} max {thresholds.max_psi:.4f}"
    )
    return CheckResult("drift", "failed" if over else "passed", text, values), psi


@dataclass(frozen=True)
class CheckReport:
    observed: Observed
    checks: tuple[CheckResult, ...]
    psi: Psi | None = None

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.failed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        o = self.observed
        return {
            "date": o.date,
            "status": "passed" if self.passed else "failed",
            "model_name": o.model_name,
            "model_version": o.model_version,
            "source_versions": list(o.source_versions),
            "run_ids": sorted(set(o.prediction_run_ids) | set(o.reject_run_ids)),
            "checks": [c.as_dict() for c in self.checks],
            "notes": list(o.notes),
        }

    def raise_for_failures(self, what: str) -> None:
        if self.failures:
            raise ChecksFailedError(what, [c.message for c in self.failures])


def run_checks(observed: Observed, thresholds: Thresholds | None = None) -> CheckReport:
    """All checks on one date's output."""
    thresholds = thresholds or Thresholds()
    drift_result, psi = drift(observed, thresholds)
    return CheckReport(
        observed,
        (reconcile(observed), rejects_ratio(observed, thresholds.max_rejects_ratio), drift_result),
        psi,
    )
