"""Champion vs challenger comparison: pure functions, and the command on delta-rs tables."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from scoring.cli import app
from scoring.errors import ConfigError
from scoring.lifecycle.compare import (
    GateThresholds,
    bootstrap_difference,
    compare,
    gate,
    pair,
    parse_time,
    rank_correlation,
    write_report,
)
from scoring.lifecycle.rollout import METRICS
from typer.testing import CliRunner

DAY = "2026-11-02"


def _predictions(keys: list[str], scores: np.ndarray, threshold: float = 0.5) -> pa.Table:
    return pa.table({"id": keys, "score": scores, "label": (scores >= threshold).astype(np.int32)})


def _world(n: int = 2000, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Keys, the truth, a weak champion and a strong challenger on the same rows."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    champion = np.clip(0.5 + (truth - 0.5) * 0.2 + rng.normal(0, 0.3, n), 0, 1)
    challenger = np.clip(0.5 + (truth - 0.5) * 0.8 + rng.normal(0, 0.2, n), 0, 1)
    return [f"k{i}" for i in range(n)], truth, champion, challenger


def test_pair_aligns_by_key_and_counts_the_unpaired() -> None:
    champion = _predictions(["a", "b", "c"], np.array([0.1, 0.6, 0.9]))
    challenger = _predictions(["d", "c", "b"], np.array([0.2, 0.8, 0.3]))
    pairs = pair(champion, challenger, "id")
    assert pairs.keys.tolist() == ["b", "c"]
    assert pairs.champion_score.tolist() == [0.6, 0.9]
    assert pairs.challenger_score.tolist() == [0.3, 0.8]
    assert pairs.champion_label.tolist() == [1, 1] and pairs.challenger_label.tolist() == [0, 1]
    assert (pairs.champion_only, pairs.challenger_only) == (1, 1)


def test_pair_refuses_repeated_keys_and_missing_columns() -> None:
    twice = _predictions(["a", "a"], np.array([0.1, 0.2]))
    with pytest.raises(ConfigError, match="repeat keys"):
        pair(twice, twice, "id")
    with pytest.raises(ConfigError, match="no column 'txn'"):
        pair(twice, twice, "txn")


def test_identical_models_agree_fully() -> None:
    keys, _, champion, _ = _world()
    table = _predictions(keys, champion)
    report = compare(pair(table, table, "id"))
    assert report["label_agreement"] == 1.0 and report["label_disagreements"] == 0
    assert report["psi"] == pytest.approx(0.0, abs=1e-12)
    assert report["rank_correlation"] == pytest.approx(1.0)
    assert report["score_difference"]["max_abs"] == 0.0
    assert report["metrics"] is None  # no truth given


def test_compare_finds_the_rows_that_differ_most() -> None:
    keys = [f"k{i}" for i in range(200)]
    scores = np.linspace(0.0, 0.4, 200)
    moved = scores.copy()
    moved[[17, 150]] = [0.95, 0.9]  # two rows the challenger flags, nobody else changes
    report = compare(pair(_predictions(keys, scores), _predictions(keys, moved), "id"), top=2)
    assert [r["key"] for r in report["most_different"]] == ["k17", "k150"]
    assert report["label_disagreements"] == 2
    assert report["label_agreement"] == pytest.approx(198 / 200)
    assert report["rank_correlation"] < 1.0


def test_rank_correlation_is_spearman() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert rank_correlation(a, a**3) == pytest.approx(1.0)  # monotone, not linear
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.ones(4)) is None


def test_bootstrap_interval_excludes_zero_for_a_clearly_better_challenger() -> None:
    _, truth, champion, challenger = _world()
    found = bootstrap_difference(truth, champion, challenger, METRICS["auc"], resamples=200)
    assert found["challenger"] > found["champion"]
    assert 0.0 < found["ci_low"] <= found["difference"] <= found["ci_high"]
    same = bootstrap_difference(truth, champion, champion, METRICS["auc"], resamples=50)
    assert same["difference"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.0


def test_metric_difference_uses_the_truth_and_the_gate_reads_it() -> None:
    keys, truth, champion, challenger = _world()
    source = pa.table({"id": keys, "is_fraud": truth})
    better = pair(
        _predictions(keys, champion), _predictions(keys, challenger), "id", source, "is_fraud"
    )
    report = compare(better, resamples=200)
    assert report["labelled_rows"] == len(keys)
    assert set(report["metrics"]) == set(METRICS)
    assert report["metrics"]["auc"]["difference"] > 0.1
    strict = GateThresholds(max_metric_drop=0.0, min_label_agreement=0.5)
    assert gate(report, strict) == []
    # The other way round the challenger is surely worse: the gate says by how much.
    worse = compare(
        pair(
            _predictions(keys, challenger), _predictions(keys, champion), "id", source, "is_fraud"
        ),
        resamples=200,
    )
    problems = gate(worse, strict)
    assert len(problems) == 1 and problems[0].startswith("auc ") and "interval" in problems[0]


def test_gate_names_each_problem() -> None:
    keys, _, champion, challenger = _world(n=50)
    report = compare(pair(_predictions(keys, champion), _predictions(keys, challenger), "id"))
    problems = gate(
        report,
        GateThresholds(min_rows=100, min_label_agreement=0.99, max_psi=1e-6, max_metric_drop=0.01),
    )
    assert [p.split(" ")[0] for p in problems] == ["only", "label", "score", "no"]


def test_write_report_writes_json_and_plot(tmp_path: Path) -> None:
    keys, _, champion, challenger = _world(n=300)
    pairs = pair(_predictions(keys, champion), _predictions(keys, challenger), "id")
    report = compare(pairs)
    files = write_report(pairs, report, tmp_path)
    assert json.loads(files["report"].read_text())["rows"] == 300
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _table(path: Path, keys: list[str], columns: dict[str, object]) -> str:
    day = dt.date.fromisoformat(DAY)
    data = {"id": keys, "ds": pa.array([day] * len(keys), pa.date32()), **columns}
    write_deltalake(path, pa.table(data), partition_by=["ds"])
    return str(path)


def test_compare_command_reads_delta_and_gates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCORING_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    keys, truth, champion, challenger = _world(n=600)
    first = _table(tmp_path / "champ", keys, {"score": champion, "label": champion >= 0.5})
    second = _table(tmp_path / "chall", keys, {"score": challenger, "label": challenger >= 0.5})
    source = _table(tmp_path / "src", keys, {"is_fraud": truth})
    common = [
        "model",
        "compare",
        "--date",
        DAY,
        "--key",
        "id",
        "--source",
        source,
        "--label",
        "is_fraud",
        "--out-dir",
        str(tmp_path / "out"),
        "--resamples",
        "200",
    ]
    runner = CliRunner()
    passed = runner.invoke(
        app,
        [
            *common,
            "--champion",
            first,
            "--challenger",
            second,
            "--max-metric-drop",
            "0",
            "--experiment",
            "shadow",
        ],
    )
    assert passed.exit_code == 0, passed.output
    last = json.loads(passed.stdout.strip().splitlines()[-1])
    assert last["rows"] == 600 and last["metrics"]["auc"]["difference"] > 0.1
    assert (tmp_path / "out" / "comparison.png").exists()
    from scoring.lifecycle.registry import tracking

    mlc, _ = tracking("shadow")
    logged = mlc.get_run(last["mlflow_run_id"])
    assert logged.data.metrics["auc_difference"] == pytest.approx(
        last["metrics"]["auc"]["difference"]
    )
    assert {a.path for a in mlc.list_artifacts(last["mlflow_run_id"], "comparison")} == {
        "comparison/comparison.json",
        "comparison/comparison.png",
    }
    held = runner.invoke(
        app, [*common, "--champion", second, "--challenger", first, "--max-metric-drop", "0"]
    )
    assert held.exit_code == 5
    assert "shadow comparison failed: auc" in held.output


def test_parse_time_takes_iso_and_epoch_milliseconds() -> None:
    moment = dt.datetime(2026, 11, 25, 19, 30, 0, 123000, tzinfo=dt.UTC)
    expected = int(moment.timestamp() * 1000)
    assert parse_time("2026-11-25T19:30:00.123Z") == expected
    assert parse_time("2026-11-25T20:30:00.123+01:00") == expected
    assert parse_time("2026-11-25T19:30:00.123") == expected  # no zone: UTC
    assert parse_time(str(expected)) == expected
    with pytest.raises(ConfigError, match="not a time"):
        parse_time("yesterday")


COMPARE = ["model", "compare", "--key", "id", "--out-dir", "out"]
TOPICS = ["--output-topic", "t", "--shadow-topic", "s", "--since", "0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give either --champion, --challenger, --date"),
        (
            ["--champion", "a", "--output-topic", "t"],
            "not both (got --champion, --output-topic)",
        ),
        (["--output-topic", "t", "--shadow-topic", "s"], "the stream form also needs --since"),
        (["--champion", "a", "--date", DAY], "the batch form also needs --challenger"),
        (["--challenger-version", "3"], "the stream form also needs --output-topic"),
        (
            [*TOPICS, "--source", "x"],
            "--source and --label go together",
        ),
        (
            [*TOPICS, "--source", "x", "--label", "y"],
            "batch form only",
        ),
    ],
)
def test_compare_command_takes_exactly_one_form(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["model", "compare", "--key", "id", "--out-dir", "out", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())  # rich's box unwrapped


def test_compare_command_refuses_a_bad_time() -> None:
    result = CliRunner().invoke(
        app,
        [*COMPARE, "--output-topic", "t", "--shadow-topic", "s", "--since", "last week"],
    )
    assert result.exit_code == 2 and "not a time" in result.output
