"""A challenger in the batch job's shadow, on real Spark and Delta, with both engines.

The champion (the demo model) and a challenger that learnt nothing (trained on shuffled
labels) score the same pinned rows; each writes its own tables with the same columns and
lineage, and the comparison over them finds the challenger worse. A challenger that
cannot be loaded leaves the champion's output as it would have been.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scoring.batch import lake as delta
from scoring.batch.main import run_job
from scoring.batch.spec import ENGINES, BatchJob
from scoring.dev.demo.data import KEY, LABEL
from scoring.dev.demo.train import TrainedModel
from scoring.errors import ConfigError
from scoring.lifecycle.compare import compare, read_batch
from scoring.lifecycle.packaging import build, write_artifact

from tests.integration.conftest import DAYS

pytestmark = pytest.mark.integration

DAY = DAYS[1]


@pytest.fixture(scope="module")
def challenger(tmp_path_factory: pytest.TempPathFactory, noise_model: TrainedModel) -> Path:
    packaged = build(
        noise_model.model_file,
        noise_model.sample_file,
        spec=json.loads(noise_model.contract_file.read_text()),
    )
    folder = tmp_path_factory.mktemp("challenger") / "model"
    write_artifact(packaged, folder)
    return folder


def _rows(table: str) -> list[dict[str, object]]:
    columns = [KEY, "score", "label", "model_version", "source_version", "run_id"]
    return delta.read_date(table, DAY, columns).sort_by(KEY).to_pylist()


@pytest.mark.parametrize("engine", ENGINES)
def test_shadow_scores_the_same_rows_into_its_own_tables(
    spark: object,
    source_table: str,
    artifact_dir: Path,
    challenger: Path,
    lake: Path,
    engine: str,
) -> None:
    job = BatchJob(
        model=str(artifact_dir),
        source=source_table,
        target=str(lake / "scores"),
        date=DAY,
        engine=engine,  # type: ignore[arg-type]
        shadow=str(challenger),
        shadow_target=str(lake / "shadow_scores"),
    )
    summary = run_job(job, spark=spark)  # type: ignore[arg-type]
    shadow = summary["shadow"]
    assert shadow["status"] == "ok", shadow
    champion_rows, challenger_rows = _rows(str(lake / "scores")), _rows(str(lake / "shadow_scores"))
    # Same keys, same pinned source version and run, different model and scores.
    assert [r[KEY] for r in champion_rows] == [r[KEY] for r in challenger_rows]
    assert len(champion_rows) == summary["rows_scored"] == shadow["rows_scored"]
    assert {(r["source_version"], r["run_id"]) for r in champion_rows + challenger_rows} == {
        (summary["source_version"], job.run_id)
    }
    assert [r["score"] for r in champion_rows] != [r["score"] for r in challenger_rows]
    for table in ("scores", "shadow_scores"):
        columns = delta.open_table(str(lake / table)).schema().to_arrow().names
        assert columns == delta.open_table(str(lake / "scores")).schema().to_arrow().names
    rejected = delta.count_rows(str(lake / "shadow_scores_rejects"), DAY)
    assert rejected == shadow["rows_rejected"] == summary["rows_rejected"] > 0
    # The comparison over the two tables sees a challenger that learnt nothing.
    pairs = read_batch(
        str(lake / "scores"), str(lake / "shadow_scores"), DAY, KEY, source=source_table,
        label_column=LABEL,
    )  # fmt: skip
    report = compare(pairs, resamples=100)
    assert report["rows"] == summary["rows_scored"]
    auc = report["metrics"]["auc"]
    assert auc["champion"] > 0.8 and auc["ci_high"] < 0


@pytest.mark.parametrize("engine", ["python", "arrow"])
def test_a_broken_shadow_leaves_the_champion_alone(
    spark: object, source_table: str, artifact_dir: Path, lake: Path, tmp_path: Path, engine: str
) -> None:
    plain = BatchJob(
        model=str(artifact_dir), source=source_table, target=str(lake / "plain"), date=DAY,
        engine=engine,  # type: ignore[arg-type]
    )  # fmt: skip
    with_broken = BatchJob(
        model=str(artifact_dir), source=source_table, target=str(lake / "scores"), date=DAY,
        engine=engine, shadow=str(tmp_path / "no-such-model"),  # type: ignore[arg-type]
        shadow_target=str(lake / "shadow_scores"),
    )  # fmt: skip
    run_job(plain, spark=spark)  # type: ignore[arg-type]
    summary = run_job(with_broken, spark=spark)  # type: ignore[arg-type]
    assert summary["shadow"]["status"] == "failed"
    assert "no-such-model" in summary["shadow"]["error"]
    strip = [{k: v for k, v in r.items() if k != "run_id"} for r in _rows(str(lake / "plain"))]
    assert strip == [
        {k: v for k, v in r.items() if k != "run_id"} for r in _rows(str(lake / "scores"))
    ]
    assert not (lake / "shadow_scores").exists()


def test_shadow_needs_its_target() -> None:
    with pytest.raises(ConfigError, match="--shadow and --shadow-target go together"):
        BatchJob(model="m", source="s", target="t", shadow="models:/fraud@challenger")
