"""The one place a SparkSession is built: Delta extensions, local jars, Arrow settings.

Jars come from ``infra/jars`` (resolved by Maven, see infra/pom.xml) through
``spark.jars``, so nothing is downloaded when a job runs. Under spark-submit the master
comes from spark-submit; otherwise from ``--master`` or ``SCORING_SPARK_MASTER``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pyspark.sql import SparkSession

from scoring.errors import JarsMissingError
from scoring.settings import Settings, load

__all__ = [
    "DELTA_EXTENSION",
    "build_session",
    "jar_paths",
    "log_conf",
    "properties_text",
    "s3a_conf",
    "session_conf",
    "submit_command",
]

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"


def jar_paths(jars_dir: Path) -> list[str]:
    """The jars of ``spark.jars``: Delta Lake and S3A (required)."""
    jars = sorted(str(p.resolve()) for p in jars_dir.glob("*.jar"))
    if not any(Path(j).name.startswith("delta-spark") for j in jars):
        raise JarsMissingError(str(jars_dir))
    return jars


def _loopback() -> str:
    # Every socket Spark opens (driver, block manager, UI) stays on loopback unless the
    # deployment sets SPARK_LOCAL_IP itself.
    return os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def session_conf(settings: Settings) -> dict[str, str]:
    """The Spark settings every scoring session needs, wherever it runs."""
    host = _loopback()
    # Executors run the same interpreter (and so the same onnxruntime) as the driver.
    python = os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return {
        "spark.jars": ",".join(jar_paths(settings.jars_dir)),
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.driver.host": host,
        "spark.driver.bindAddress": host,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Larger Arrow batches amortise the per-batch cost of each onnxruntime call.
        "spark.sql.execution.arrow.maxRecordsPerBatch": "20000",
        "spark.pyspark.python": python,
        "spark.sql.warehouse.dir": str((settings.home / "warehouse").resolve()),
        # Plans of 20+ feature columns exceed the default and log a warning on every job.
        "spark.sql.debug.maxToStringFields": "200",
        # Spark's own INFO lines (hundreds per run: every jar, task and block) would bury
        # the job's progress; they come back with --verbose (log_conf).
        "spark.log.level": "WARN",
        **s3a_conf(settings),
    }


# S3A's own chain (session token, key pair from the Hadoop conf, which Spark fills from
# the AWS_* variables of the driver and ships with each task), then the SDK's default chain
# (environment, profile files, web identity, container and instance roles).
S3A_CREDENTIALS = ",".join(
    [
        "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider",
        "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider",
    ]
)


def s3a_conf(settings: Settings) -> dict[str, str]:
    """S3A settings for ``s3a://`` tables: endpoint, region, credential chain. No secrets.

    A custom endpoint (an S3-compatible store) is addressed path-style, since such stores
    seldom have per-bucket DNS names.
    """
    conf = {
        "spark.hadoop.fs.s3a.aws.credentials.provider": S3A_CREDENTIALS,
        # The JDK's TLS: the OpenSSL binding S3A would try first is not shipped (see
        # infra/pom.xml: its native library crashed beside ONNX Runtime's).
        "spark.hadoop.fs.s3a.ssl.channel.mode": "default_jsse",
    }
    if settings.s3_endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = settings.s3_endpoint
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(
            settings.s3_endpoint.startswith("https://")
        ).lower()
    if settings.s3_region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = settings.s3_region
    return conf


def properties_text(conf: dict[str, str]) -> str:
    """``conf`` as a Java properties file, for ``spark-submit --properties-file``.

    Schedulers that build the spark-submit command themselves (Airflow's
    SparkSubmitOperator) take the settings of :func:`session_conf` this way.
    """

    def escape(text: str, key: bool = False) -> str:
        text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        if key:
            for char in "=: ":
                text = text.replace(char, "\\" + char)
        return text

    return "".join(f"{escape(k, key=True)}={escape(v)}\n" for k, v in conf.items())


# On one machine, the cluster-sized defaults (200 shuffle partitions, 50 for rebuilding a
# Delta snapshot) turn every small job and every Delta commit into hundreds of tiny tasks:
# seconds per commit instead of a fraction of one.
_LOCAL = {
    "spark.sql.shuffle.partitions": "8",
    "spark.databricks.delta.snapshotPartitions": "4",
}


# Spark's default log4j2 profile at WARN, for a driver JVM this process launches.
_LOG4J2 = """\
# Written by scoring.batch.spark: Spark's own log at WARN from the driver JVM's first line.
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
# Said at every start on machines without Hadoop's native library, which Spark never needs.
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
logger.parquet.name = org.apache.parquet.CorruptStatistics
logger.parquet.level = error
"""


def _log4j2_file(settings: Settings) -> Path:
    """The WARN log4j2 config in the data dir, written when missing or out of date."""
    path = settings.home.resolve() / "spark" / "log4j2.properties"
    if not path.is_file() or path.read_text() != _LOG4J2:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(_LOG4J2)
        partial.replace(path)  # atomic: jobs starting side by side never read half a file
    return path


def log_conf(settings: Settings, verbose: bool = False) -> dict[str, str]:
    """Spark's own log level for a driver JVM this process launches: WARN, or INFO.

    ``spark.log.level`` (in :func:`session_conf`) applies once the SparkContext starts;
    the lines before that (Spark's version, the OS, the Java version) are INFO, so a
    quiet driver also gets a log4j2 config at WARN from its first line.
    """
    if verbose:
        return {"spark.log.level": "INFO"}
    return {"spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={_log4j2_file(settings)}"}


def _launch_conf(master: str, settings: Settings) -> dict[str, str]:
    """Settings that only count when the driver JVM starts: its heap on a local master.

    On ``local[...]`` the driver is also the executor, so Spark's 1g default heap holds
    every task's rows; a cluster's driver memory stays the deployment's choice. The
    caller's own conf is merged after this, so it wins.
    """
    if not master.startswith("local"):
        return {}
    return {"spark.driver.memory": settings.local_driver_memory}


def submit_command(
    script: Path,
    args: Sequence[str],
    master: str | None = None,
    settings: Settings | None = None,
    conf: dict[str, str] | None = None,
    verbose: bool = False,
) -> list[str]:
    """A ``spark-submit`` command line carrying :func:`session_conf`.

    spark-submit starts the driver JVM before any Python runs, so the jars must be on its
    command line; setting them from the session builder would be too late. So must
    Spark's log level (:func:`log_conf`; INFO when ``verbose``).
    """
    settings = settings or load()
    master = master or settings.spark_master
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", master]
    launch = {**_launch_conf(master, settings), **log_conf(settings, verbose)}
    for key, value in {**session_conf(settings), **launch, **(conf or {})}.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, str(script), *args]


def build_session(
    app_name: str,
    master: str | None = None,
    settings: Settings | None = None,
    conf: dict[str, str] | None = None,
    verbose: bool = False,
) -> SparkSession:
    """Get or create the session every job and test uses.

    Spark's own log is at WARN (:func:`log_conf`), at INFO when ``verbose``; under
    spark-submit, unless ``verbose``, its command line says (``scoring batch submit`` and
    ``spark-conf`` say WARN).
    """
    settings = settings or load()
    builder = SparkSession.builder.appName(app_name)
    # spark-submit starts the JVM first and hands its gateway to Python: its --master wins.
    launched_by_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    launch: dict[str, str] = {}
    if master or not launched_by_submit:
        master = master or settings.spark_master
        builder = builder.master(master)
        launch = _launch_conf(master, settings)
    common = session_conf(settings)
    if launched_by_submit:
        del common["spark.log.level"]
    if verbose or not launched_by_submit:
        launch |= log_conf(settings, verbose)
    for key, value in {**common, **launch, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    context = spark.sparkContext
    if (context.master or "").startswith("local"):
        for key, value in _LOCAL.items():
            if key not in (conf or {}) and not context.getConf().contains(key):
                spark.conf.set(key, value)
    if launched_by_submit and not _delta_loaded(spark):
        raise JarsMissingError(
            str(settings.jars_dir),
            "spark-submit was started without them; launch the job with `scoring batch "
            "submit` or pass --jars and the Delta --conf settings on its command line",
        )
    return spark


def _delta_loaded(spark: SparkSession) -> bool:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    return bool(jvm.org.apache.spark.util.Utils.classIsLoadable(DELTA_EXTENSION))
