"""The one place a SparkSession is built: Delta extensions, local jars, Arrow settings.

Jars come from ``infra/jars`` (resolved by Maven, see infra/pom.xml) through
``spark.jars``, so nothing is downloaded when a job runs. Under spark-submit the master
comes from spark-submit; otherwise from ``--master`` or ``SCORING_SPARK_MASTER``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from shared.errors import JarsMissingError
from shared.settings import Settings, load

__all__ = ["build_session", "jar_paths"]


def jar_paths(jars_dir: Path) -> list[str]:
    jars = sorted(str(p.resolve()) for p in jars_dir.glob("*.jar"))
    if not any(Path(j).name.startswith("delta-spark") for j in jars):
        raise JarsMissingError(str(jars_dir))
    return jars


def build_session(
    app_name: str,
    master: str | None = None,
    settings: Settings | None = None,
    conf: dict[str, str] | None = None,
) -> SparkSession:
    """Get or create the session every job and test uses."""
    settings = settings or load()
    # Every socket Spark opens (driver, block manager, UI) stays on loopback unless the
    # deployment says otherwise.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Executors run the same interpreter (and so the same onnxruntime) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    # spark-submit starts the JVM first and hands its gateway to Python: its --master wins.
    launched_by_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if master or not launched_by_submit:
        builder = builder.master(master or settings.spark_master)
    defaults = {
        "spark.jars": ",".join(jar_paths(settings.jars_dir)),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.driver.host": os.environ["SPARK_LOCAL_IP"],
        "spark.driver.bindAddress": os.environ["SPARK_LOCAL_IP"],
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Larger Arrow batches amortise the per-batch cost of each onnxruntime call.
        "spark.sql.execution.arrow.maxRecordsPerBatch": "20000",
        "spark.pyspark.python": os.environ["PYSPARK_PYTHON"],
        "spark.sql.warehouse.dir": str((settings.home / "warehouse").resolve()),
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
    }
    for key, value in {**defaults, **(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
