"""Output checks: reconciliation, rejects ratio and score drift, each naming its numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring.batch.checks import (
    Observed,
    Thresholds,
    drift,
    population_stability_index,
    reconcile,
    rejects_ratio,
    run_checks,
)
from scoring.errors import ChecksFailedError

rng = np.random.default_rng(11)
# Fraud-like scores: most near zero, a long tail.
REFERENCE = rng.beta(0.6, 30.0, 5000)


def _observed(**changes: object) -> Observed:
    base: dict[str, object] = {
        "date": "2026-11-02",
        "source_rows": 3000,
        "predicted_rows": 2990,
        "rejected_rows": 10,
        "source_versions": (4,),
        "prediction_run_ids": ("run-a",),
        "reject_run_ids": ("run-a",),
        "model_name": "fraud",
        "model_version": "3",
        "scores": rng.beta(0.6, 30.0, 2990),
        "reference_scores": REFERENCE,
        "reference": "2026-11-01 (model version 3)",
    }
    return Observed(**{**base, **changes})  # type: ignore[arg-type]


def test_reconciled_output_passes() -> None:
    result = reconcile(_observed())
    assert result.status == "passed"
    assert result.message == (
        "reconcile: predictions 2990 + rejects 10 = source 3000 rows (version 4)"
    )


def test_missing_rows_fail_reconciliation_with_the_numbers() -> None:
    result = reconcile(_observed(predicted_rows=2985, rejected_rows=10))
    assert result.failed
    assert result.message == (
        "reconcile: source has 3000 rows for 2026-11-02 (version 4) but predictions 2985 "
        "+ rejects 10 = 2995 (5 missing)"
    )
    assert result.values["difference"] == -5


def test_duplicated_rows_fail_reconciliation() -> None:
    result = reconcile(_observed(predicted_rows=3000, rejected_rows=10))
    assert result.failed and "(10 too many)" in result.message


def test_outputs_of_two_runs_fail_reconciliation() -> None:
    # Counts add up, but the rejects are a leftover of another run of the date.
    result = reconcile(_observed(reject_run_ids=("run-b",)))
    assert result.failed
    assert "rejects by ['run-b']" in result.message and "re-run the date" in result.message


def test_rejects_ratio_over_the_threshold_fails_with_the_numbers() -> None:
    result = rejects_ratio(_observed(predicted_rows=2400, rejected_rows=600), 0.05)
    assert result.failed
    assert result.message == "rejects_ratio: 600 of 3000 rows rejected (20.00%) > max 5.00%"
    assert result.values["rejects_ratio"] == pytest.approx(0.2)


def test_rejects_ratio_under_the_threshold_passes() -> None:
    result = rejects_ratio(_observed(), 0.05)
    assert result.status == "passed" and "<= max 5.00%" in result.message


def test_similar_scores_pass_the_drift_check() -> None:
    result, psi = drift(_observed(), Thresholds())
    assert result.status == "passed" and psi is not None
    assert psi.value < 0.05
    assert result.message.startswith(f"drift: score PSI {psi.value:.4f} against 2026-11-01")


def test_shifted_scores_fail_the_drift_check_with_the_psi() -> None:
    shifted = rng.beta(2.0, 10.0, 2990)  # much riskier-looking traffic
    result, psi = drift(_observed(scores=shifted), Thresholds(max_psi=0.2))
    assert result.failed and psi is not None and psi.value > 0.2
    assert result.message == (
        f"drift: score PSI {psi.value:.4f} against 2026-11-01 (model version 3) "
        "(5000 rows) > max 0.2000"
    )


def test_drift_is_skipped_without_a_reference_or_with_too_few_rows() -> None:
    none, _ = drift(
        _observed(reference_scores=None, reference="nothing scored before"), Thresholds()
    )
    assert none.status == "skipped" and "nothing scored before" in none.message
    few, psi = drift(_observed(scores=REFERENCE[:50]), Thresholds(min_drift_rows=100))
    assert few.status == "skipped" and psi is None and "50 current" in few.message


def test_psi_matches_the_formula_on_known_shares() -> None:
    reference = np.repeat(np.arange(4.0), 25)  # 4 equal bins of 25
    current = np.repeat(np.arange(4.0), [10, 20, 30, 40])
    psi = population_stability_index(reference, current, bins=4)
    expected = sum((a - 0.25) * math.log(a / 0.25) for a in (0.1, 0.2, 0.3, 0.4))
    assert psi.value == pytest.approx(expected)
    assert psi.expected.tolist() == [0.25] * 4
    assert psi.actual.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_psi_ignores_non_finite_scores() -> None:
    with_nan = np.concatenate([REFERENCE, [np.nan, np.inf]])
    assert population_stability_index(REFERENCE, with_nan).value == pytest.approx(0.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=300),
    st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=300),
    st.integers(2, 20),
)
def test_psi_is_never_negative_and_zero_against_itself(
    reference: list[float], current: list[float], bins: int
) -> None:
    assert population_stability_index(reference, current, bins).value >= 0.0
    assert population_stability_index(reference, reference, bins).value == 0.0


def test_all_checks_together_raise_one_error_naming_each_failure() -> None:
    observed = _observed(predicted_rows=2000, rejected_rows=500, scores=rng.beta(2.0, 10.0, 2000))
    report = run_checks(observed, Thresholds(max_rejects_ratio=0.05, max_psi=0.2))
    assert [c.name for c in report.failures] == ["reconcile", "rejects_ratio", "drift"]
    with pytest.raises(ChecksFailedError) as caught:
        report.raise_for_failures("ds = 2026-11-02 in /lake/fraud_scores")
    message = str(caught.value)
    assert caught.value.exit_code == 5
    assert "Output checks failed for ds = 2026-11-02 in /lake/fraud_scores" in message
    assert "- reconcile: source has 3000 rows" in message
    assert "- rejects_ratio: 500 of 2500 rows rejected (20.00%)" in message
    assert "- drift: score PSI" in message


def test_passing_checks_raise_nothing() -> None:
    report = run_checks(_observed())
    assert report.passed and report.as_dict()["status"] == "passed"
    report.raise_for_failures("anything")


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError):
        Thresholds(max_rejects_ratio=1.5)
