"""The JVM engine: validation and scoring without leaving the executors' JVMs.

Validation is the contract compiled into Spark SQL (:mod:`scoring.batch.validation`);
scoring is ``scoring.engine.OnnxEngine`` (Java, ``infra/engine/``), which runs the
artifact's ONNX graph with ONNX Runtime for Java in ``mapPartitions``: one session per
executor JVM per graph, built from bytes broadcast once, thousands of rows per call. The
PySpark driver reaches it through the py4j gateway; no row is sent to a Python worker.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from scoring.batch.validation import reason_columns
from scoring.errors import EngineMissingError
from scoring.model.artifact import Artifact
from scoring.settings import load

__all__ = ["BATCH_ROWS", "ENGINE_CLASS", "engine", "label_column", "register", "score_frame"]

ENGINE_CLASS = "scoring.engine.OnnxEngine"
# Rows per ONNX Runtime call: large enough that the per-call cost vanishes, small enough
# that a task's buffers stay in cache-friendly sizes (20 features x 8192 rows x 8 bytes).
BATCH_ROWS = 8192


def engine(spark: SparkSession) -> Any:
    """The engine class through the gateway; a clear error when its jar is not loaded."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    if not jvm.org.apache.spark.util.Utils.classIsLoadable(ENGINE_CLASS):
        raise EngineMissingError(str(load().engine_jars_dir))
    return jvm.scoring.engine.OnnxEngine


def register(spark: SparkSession) -> None:
    """Register the engine's SQL functions (Python-style value text for the reasons)."""
    engine(spark).registerFunctions(spark._jsparkSession)


def label_column(score: Column, artifact: Artifact) -> Column:
    """``label`` as the Python engine computes it: ``score >= threshold``, null if unscored.

    Spark orders NaN above every number, so a NaN score is caught first: numpy's
    ``nan >= t`` is False.
    """
    output = artifact.contract.output
    if output.task != "binary_classification":
        return F.lit(None).cast("int")
    return (
        F.when(score.isNull(), F.lit(None))
        .when(F.isnan(score), F.lit(0))
        .when(score >= F.lit(output.threshold), F.lit(1))
        .otherwise(F.lit(0))
        .cast("int")
    )


def score_frame(
    frame: DataFrame,
    artifact: Artifact,
    passthrough: list[str],
    reason_name: str,
    features_name: str,
    batch_rows: int = BATCH_ROWS,
) -> DataFrame:
    """Columns ``passthrough + [score, label, reason, features JSON]``, like the Python engine.

    Refused rows keep their features as JSON (Spark's ``to_json``, nulls kept) and get no
    score; the rest are scored by the ONNX graph in the executors.
    """
    spark = frame.sparkSession
    register(spark)
    contract = artifact.contract
    reason, _ = reason_columns(frame.schema, contract.features)
    names = contract.feature_names
    features_json = F.when(
        F.col(reason_name).isNotNull(),
        F.to_json(F.struct(*[F.col(f"`{n}`") for n in names]), {"ignoreNullFields": "false"}),
    )
    inputs = [
        F.col(f"`{f.name}`").try_cast("string" if f.type == "string" else "double").alias(f.name)
        for f in contract.features
    ]
    keep = [*passthrough, reason_name, features_name]
    checked = frame.withColumn(reason_name, reason).select(
        *[F.col(f"`{c}`") for c in passthrough],
        F.col(reason_name),
        features_json.alias(features_name),
        *inputs,
    )
    output = contract.output
    scored = engine(spark).score(
        checked._jdf,
        len(keep),
        len(passthrough),
        artifact.onnx_bytes,
        contract.onnx_sha256,
        contract.tensor_input if contract.input_mode == "tensor" else None,
        output.score_output,
        output.score_index if output.score_index is not None else -1,
        batch_rows,
    )
    result = DataFrame(scored, spark)
    return result.select(
        *[F.col(f"`{c}`") for c in passthrough],
        F.col("score"),
        label_column(F.col("score"), artifact).alias("label"),
        F.col(reason_name),
        F.col(features_name),
    )
