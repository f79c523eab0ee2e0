"""The two batch engines on real Spark and Delta: the same rows, reasons and scores, bit for bit.

The JVM engine (Spark SQL validation, ONNX Runtime for Java in the executors) and the
Python engine (mapInArrow, the shared Scorer in Python workers) score the same Delta
table; both are compared with each other and with the Scorer the stream processor uses,
on the demo pipeline and on a gradient-boosted tree ensemble.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring.batch import jvm
from scoring.batch.job import ENGINES, BatchJob, run
from scoring.dev import trees
from scoring.lifecycle.packaging import build, write_artifact
from scoring.model.artifact import load_artifact

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


def _bits(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64).view(np.int64)


def test_both_engines_give_the_same_rows_reasons_and_scores_bit_for_bit(
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
            engine=engine,
        )
        summary = run(spark, job)
        assert summary["engine"] == engine
        scores = spark.read.format("delta").load(job.target).toArrow().sort_by(key)
        rejects = spark.read.format("delta").load(job.rejects_table).toArrow().sort_by(key)
        outputs[engine] = (summary, scores, rejects)

    (jvm, jvm_scores, jvm_rejects), (py, py_scores, py_rejects) = outputs["jvm"], outputs["python"]
    assert jvm["rows_read"] == py["rows_read"] > 0
    assert jvm["rows_rejected"] == py["rows_rejected"] > 0
    assert jvm_scores[key].to_pylist() == py_scores[key].to_pylist()
    assert np.array_equal(_bits(jvm_scores["score"]), _bits(py_scores["score"]))
    assert jvm_scores["label"].to_pylist() == py_scores["label"].to_pylist()
    assert jvm_rejects[key].to_pylist() == py_rejects[key].to_pylist()
    assert jvm_rejects["reason"].to_pylist() == py_rejects["reason"].to_pylist()
    for jvm_json, py_json in zip(
        jvm_rejects["features_json"].to_pylist(),
        py_rejects["features_json"].to_pylist(),
        strict=True,
    ):
        assert json.loads(jvm_json).keys() == json.loads(py_json).keys()

    # ... and both equal the Scorer the stream processor calls, row by row.
    rows = (
        spark.read.format("delta").load(source).where(F.col("ds") == DAYS[0]).toArrow().sort_by(key)
    )
    direct = load_artifact(str(model)).scorer().score(rows)
    valid = pa.array(direct.valid)
    assert rows.filter(valid)[key].to_pylist() == jvm_scores[key].to_pylist()
    assert np.array_equal(_bits(direct.score.filter(valid)), _bits(jvm_scores["score"]))


@pytest.mark.parametrize("batch_rows", [64, 1])
def test_many_small_batches_with_refused_rows_between_them(
    spark: SparkSession, artifact_dir: Path, source_table: str, batch_rows: int
) -> None:
    """Small ONNX Runtime calls: batches of every fill level follow one another in a task.

    With one row per call, every row goes the way a partition's lone last row does: its
    score must still be the one it gets among others.
    """
    artifact = load_artifact(str(artifact_dir))
    frame = spark.read.format("delta").load(source_table).where(F.col("ds") == DAYS[1])
    scored = jvm.score_frame(
        frame, artifact, ["transaction_id"], "reason", "features", batch_rows=batch_rows
    ).toArrow()
    rows = frame.toArrow()
    direct = artifact.scorer().score(rows)
    expected = dict(zip(rows["transaction_id"].to_pylist(), direct.score.to_pylist(), strict=True))
    got = dict(zip(scored["transaction_id"].to_pylist(), scored["score"].to_pylist(), strict=True))
    assert sum(s is None for s in got.values()) == direct.rejected > 0
    assert got == expected
