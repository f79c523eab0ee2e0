"""The batch engines on real Delta tables: the same rows, reasons and scores, bit for bit.

The Spark engine (mapInArrow, the shared Scorer in Python workers) and the embedded
arrow engine (delta-rs and the shared Scorer on a thread pool, no Spark) score the same
Delta table; both are compared with each other and with the Scorer the stream processor
uses, on the demo pipeline and on a gradient-boosted tree ensemble.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring.batch.main import run_job
from scoring.batch.spec import ENGINES, BatchJob
from scoring.dev import trees
from scoring.lifecycle.loading import load_artifact
from scoring.lifecycle.packaging import build, write_artifact

from tests.integration.conftest import DAYS, START

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tree_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trees")
    model = trees.train_trees(trees.generate(4000, START, seed=3), folder / "trained", trees=40)
    packaged = build(
        model.model_file, model.sample_file, spec=json.loads(model.contract_file.read_text())
    )
    write_artifact(packaged, folder / "model")
    return folder / "model"


@pytest.fixture(scope="module")
def tree_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("trees-lake") / "points")
    table = trees.generate(6000, START, seed=4, bad_share=0.01)
    spark.createDataFrame(table).write.format("delta").partitionBy(trees.DATE).save(path)
    return path


@pytest.fixture(params=["demo", "trees"])
def case(
    request: pytest.FixtureRequest,
    artifact_dir: Path,
    source_table: str,
    tree_artifact: Path,
    tree_table: str,
) -> tuple[Path, str, str]:
    """(artifact, source table, key column) of one model."""
    if request.param == "demo":
        return artifact_dir, source_table, "transaction_id"
    return tree_artifact, tree_table, trees.KEY


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} in features_json is not strict JSON")


def _bits(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64).view(np.int64)


def test_every_engine_gives_the_same_rows_reasons_and_scores_bit_for_bit(
    spark: SparkSession, case: tuple[Path, str, str], tmp_path: Path
) -> None:
    model, source, key = case
    outputs = {}
    for engine in ENGINES:
        job = BatchJob(
            model=str(model),
            source=source,
            target=str(tmp_path / engine / "scores"),
            date=DAYS[0],
            engine=engine,  # type: ignore[arg-type]
        )
        summary = run_job(job, spark=spark)
        assert summary["engine"] == engine
        # Read back by Spark and Delta, whoever wrote them.
        scores = spark.read.format("delta").load(job.target).toArrow().sort_by(key)
        rejects = spark.read.format("delta").load(job.rejects_table).toArrow().sort_by(key)
        outputs[engine] = (summary, scores, rejects)

    on_spark, spark_scores, spark_rejects = outputs["python"]
    arrow, arrow_scores, arrow_rejects = outputs["arrow"]
    assert on_spark["rows_read"] > 0 and on_spark["rows_rejected"] > 0
    assert (arrow["rows_read"], arrow["rows_rejected"]) == (
        on_spark["rows_read"],
        on_spark["rows_rejected"],
    )
    assert arrow_scores.schema == spark_scores.schema
    assert arrow_rejects.schema == spark_rejects.schema
    assert spark_scores[key].to_pylist() == arrow_scores[key].to_pylist()
    assert np.array_equal(_bits(spark_scores["score"]), _bits(arrow_scores["score"]))
    assert spark_scores["label"].to_pylist() == arrow_scores["label"].to_pylist()
    assert spark_rejects[key].to_pylist() == arrow_rejects[key].to_pylist()
    assert spark_rejects["reason"].to_pylist() == arrow_rejects["reason"].to_pylist()
    # The refused rows' feature values, not only their names. Strict JSON on every
    # engine: NaN and infinities are strings.
    for spark_json, arrow_json in zip(
        spark_rejects["features_json"].to_pylist(),
        arrow_rejects["features_json"].to_pylist(),
        strict=True,
    ):
        assert json.loads(spark_json, parse_constant=_refuse) == json.loads(
            arrow_json, parse_constant=_refuse
        )

    # ... and all equal the Scorer the stream processor calls, row by row.
    rows = (
        spark.read.format("delta").load(source).where(F.col("ds") == DAYS[0]).toArrow().sort_by(key)
    )
    direct = load_artifact(str(model)).scorer().score(rows)
    valid = pa.array(direct.valid)
    assert rows.filter(valid)[key].to_pylist() == spark_scores[key].to_pylist()
    assert np.array_equal(_bits(direct.score.filter(valid)), _bits(spark_scores["score"]))
