"""Real Spark (local[2]) with Delta Lake and a real Kafka broker, started once per session."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from scoring.batch.spark import build_session
from scoring.batch.tables import for_spark
from scoring.dev import kafka_broker, services
from scoring.dev.demo.data import LABEL, generate_day, write_parquet
from scoring.dev.demo.train import TrainedModel, train
from scoring.dev.kafka_broker import Broker, SecureListeners, free_port
from scoring.dev.services import MlflowServer, S3Server
from scoring.settings import PROJECT_ROOT

from tests.integration.airflow.airflow_helpers import Airflow, airflow_in, migrated_db
from tests.integration.kafka_helpers import Topics, create_topics

START = date(2026, 11, 1)
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
ROWS_PER_DAY = 3000
STANDALONE = PROJECT_ROOT / "infra" / "spark" / "standalone.sh"


def write_demo_table(
    spark: SparkSession, path: str, days: int, rows_per_day: int, start: date = START
) -> None:
    """The demo transactions written by Spark as a Delta table partitioned by date."""
    with tempfile.TemporaryDirectory(prefix="scoring-demo-") as tmp:
        write_parquet(Path(tmp), start, days, rows_per_day)
        frame = spark.read.parquet(tmp)
        frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").partitionBy(
            "ds"
        ).save(for_spark(path))


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API server (moto's server mode, SigV4 checked) on loopback, bucket ``lake``.

    Its AWS_* variables are set for the whole session, as a user would set them, so the
    Spark session below, delta-rs and every child process reach it with no other setting.
    """
    state_dir = tmp_path_factory.mktemp("s3")
    server = services.start_s3(state_dir, ("lake",))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.env().items():
            patch.setenv(key, value)
        yield server
    services.stop(state_dir)


@pytest.fixture(scope="session")
def mlflow_server(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server`` on loopback with basic auth, its artifacts in the S3 server."""
    state_dir = tmp_path_factory.mktemp("mlflow-server")
    started = services.start_mlflow(state_dir, s3, basic_auth=True)
    yield started
    services.stop(state_dir)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[SparkSession]:
    # After s3: the session's S3A settings and credentials come from the environment.
    home = tmp_path_factory.mktemp("spark-home")
    session = build_session(
        "scoring-tests",
        master="local[2]",
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.sql.warehouse.dir": str(home / "warehouse"),
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def source_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three days of demo transactions as a Delta table partitioned by ``ds``."""
    path = str(tmp_path_factory.mktemp("lake") / "transactions")
    write_demo_table(spark, path, days=len(DAYS), rows_per_day=ROWS_PER_DAY, start=START)
    return path


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


def job_args(
    model: Path | str, source: str, target: Path | str, date: str | None = None
) -> list[str]:
    """Command-line options of jobs/batch/score.py."""
    args = ["--model", str(model), "--source", source, "--target", str(target)]
    return args + (["--date", date] if date else [])


def package_args(trained: TrainedModel, name: str = "fraud") -> list[str]:
    """`scoring model package` of a trained demo model, registered as ``name``."""
    return [
        "model",
        "package",
        str(trained.model_file),
        "--name",
        name,
        "--sample",
        str(trained.sample_file),
        "--contract",
        str(trained.contract_file),
    ]


@contextmanager
def standalone_cluster(state: Path, env: dict[str, str]) -> Iterator[str]:
    """A Spark standalone master and worker on free loopback ports; yields the master URL.

    Started and stopped by the project's own script, in ``env`` (it finds Spark through the
    ``PYTHON`` there), with ``state`` as their working and state directory.
    """
    env = env | {
        "SPARK_STATE_DIR": str(state),
        "SPARK_MASTER_PORT": str(free_port()),
        "SPARK_MASTER_WEBUI_PORT": str(free_port()),
        "SPARK_WORKER_WEBUI_PORT": str(free_port()),
        "SPARK_WORKER_MEMORY": "2g",
    }
    started = subprocess.run(
        [str(STANDALONE), "start"], capture_output=True, text=True, env=env, cwd=state, timeout=300
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(STANDALONE), "stop"], env=env, cwd=state, timeout=120, check=False)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One real KRaft broker on free loopback ports for the whole session.

    Started from the Maven jars (no Docker needed). With ``SCORING_TEST_KAFKA=testcontainers``
    on a machine with a Docker engine, testcontainers' Kafka is used instead; the tests
    that stop and restart a broker always start their own from the jars.
    """
    if os.environ.get("SCORING_TEST_KAFKA") == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield cast(Broker, SimpleNamespace(bootstrap=container.get_bootstrap_server()))
        return
    state_dir = tmp_path_factory.mktemp("kafka")
    # Secure listeners too (one broker for the session): see secure_kafka.
    broker = kafka_broker.start(state_dir, secure=True)
    yield broker
    kafka_broker.stop(state_dir)


@pytest.fixture(scope="session")
def secure_kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureListeners]:
    """The SASL_SSL (SCRAM-SHA-512) and mutual-TLS listeners of the session's broker.

    testcontainers' broker has no secure listeners, so with ``SCORING_TEST_KAFKA=
    testcontainers`` a secure broker is started from the jars for these tests.
    """
    if os.environ.get("SCORING_TEST_KAFKA") != "testcontainers":
        broker = request.getfixturevalue("kafka")
        assert broker.secure is not None
        yield broker.secure
        return
    state_dir = tmp_path_factory.mktemp("kafka-secure")
    secure = kafka_broker.start(state_dir, secure=True).secure
    assert secure is not None
    yield secure
    kafka_broker.stop(state_dir)


@pytest.fixture
def topics(kafka: Broker, request: pytest.FixtureRequest) -> Topics:
    """Fresh input, output and dead-letter topics for one test."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:150]
    made = Topics(f"{name}.in", f"{name}.out", f"{name}.dlq")
    create_topics(kafka.bootstrap, made)
    return made


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered-model name of this test's own, for registries a session shares."""
    node = request.node.nodeid
    words = re.sub(r"[^A-Za-z0-9]+", "_", request.node.name).strip("_")[:40]
    return f"{words}_{hashlib.sha1(node.encode()).hexdigest()[:8]}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data dir for one test module: its MLflow registry, Airflow home and lake."""
    path = tmp_path_factory.mktemp("airflow-home") / "scoring"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCORING_HOME", str(path))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield path


@pytest.fixture(scope="session")
def airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated Airflow metadata DB for the session, copied into each module's home."""
    return migrated_db(tmp_path_factory.mktemp("airflow-db") / "scoring")


@pytest.fixture(scope="module")
def airflow(home: Path, airflow_db: Path) -> Airflow:
    return airflow_in(home, airflow_db)


@pytest.fixture(scope="module")
def noise_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A model trained on shuffled labels: it has learnt nothing."""
    table = generate_day(START, 6000)
    shuffled = np.random.default_rng(1).permutation(table.column(LABEL).to_numpy())
    table = table.set_column(table.column_names.index(LABEL), LABEL, pa.array(shuffled))
    return train(table, tmp_path_factory.mktemp("noise"), "noise", 0)
