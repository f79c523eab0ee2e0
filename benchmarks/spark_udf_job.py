"""Path (b) of benchmarks/batch.py as its own spark-submit job: MLflow's spark_udf.

Reads the Delta table, drops rows with a NaN feature, scores the rest with
``mlflow.pyfunc.spark_udf`` on the model's native scikit-learn flavour, writes key, date
and score to Delta. The last stdout line is JSON
with the job's own time (from the session being ready to the commit), measured like the
batch job's ``seconds``. Run by the benchmark; nothing else uses it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="MLflow model folder (sklearn flavour)")
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--features", required=True, help="JSON list of [name, spark type]")
    parser.add_argument("--date", help="score only this date")
    args = parser.parse_args()

    from scoring.batch.spark import build_session

    spark = build_session("scoring-bench-spark-udf")
    started = time.monotonic()
    score(spark, args)
    print(json.dumps({"seconds": round(time.monotonic() - started, 3)}))
    spark.stop()


def score(spark: Any, args: argparse.Namespace) -> None:
    """Run path (b) once in ``spark``: load the model, read, score, write."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    udf = mlflow.pyfunc.spark_udf(
        spark, args.model_dir, result_type="array<double>", env_manager="local"
    )
    features = json.loads(args.features)
    inputs = [F.col(n).cast(t).alias(n) for n, t in features]
    frame = spark.read.format("delta").load(args.source)
    # scikit-learn's tree ensembles refuse NaN for the whole batch, so rows with one are
    # dropped first, as a spark_udf user must (the job under test refuses them by reason).
    for name, kind in features:
        if kind == "double":
            frame = frame.where(~F.isnan(F.col(name).cast("double")))
    if args.date:
        frame = frame.where(F.col("ds") == args.date)
    scored = frame.select(args.key, "ds", udf(*inputs)[1].alias("score"))
    scored.write.format("delta").mode("overwrite").save(args.target)


if __name__ == "__main__":
    main()
