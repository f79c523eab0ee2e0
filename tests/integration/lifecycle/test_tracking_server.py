"""The registry on a real MLflow tracking server with basic auth and artifacts in S3.

``mlflow server`` runs on loopback (SQLite store, ``--artifacts-destination`` in the S3
server's bucket, MLflow's basic-auth app); every command reaches it only through
``MLFLOW_TRACKING_URI`` and ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring.batch.job import BatchJob, run
from scoring.dev import services
from scoring.dev.demo.train import TrainedModel
from scoring.dev.kafka_broker import Broker
from scoring.dev.services import MlflowServer, S3Server
from scoring.lifecycle import registry
from scoring.lifecycle.loading import load_artifact
from scoring.stream.events import to_events

from tests.integration.conftest import DAYS, package_args
from tests.integration.kafka_helpers import ProcessorProcess, Topics, produce, read_all

SCORING = str(Path(sys.executable).parent / "scoring")


@pytest.fixture(scope="module")
def server(mlflow_server: MlflowServer) -> MlflowServer:
    return mlflow_server


@pytest.fixture
def client_env(server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process and its children use the server (and fail fast while it is down)."""
    env = {
        **server.env(),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **env}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCORING, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.fixture
def name(model_name: str) -> str:
    return model_name


def test_model_commands_and_the_batch_job_work_through_the_server(
    client_env: dict[str, str],
    name: str,
    trained: TrainedModel,
    s3: S3Server,
    spark: SparkSession,
    source_table: str,
    artifact_dir: Path,
    tmp_path: Path,
) -> None:
    versions = []
    for _ in range(2):
        packaged = _cli(client_env, *package_args(trained, name))
        assert packaged.returncode == 0, packaged.stderr
        versions.append(packaged.stdout.strip().splitlines()[-1])
    assert _cli(client_env, "model", "promote", name, versions[0]).returncode == 0
    assert _cli(client_env, "model", "promote", name, versions[1]).returncode == 0
    listed = _cli(client_env, "model", "list", name)
    assert listed.returncode == 0 and "champion" in listed.stdout
    rolled = _cli(client_env, "model", "rollback", name)
    assert rolled.returncode == 0, rolled.stderr
    assert registry.resolve(f"models:/{name}@champion").version == versions[0]

    # The artifacts went through the server's proxy into the S3 bucket.
    bucket = boto3.client("s3", endpoint_url=s3.endpoint, region_name=s3.region)
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert sum(k.endswith("model/model.onnx") for k in keys) >= 2

    # The batch job resolves the alias on the server; the executors get the verified bytes.
    summary = run(
        spark,
        BatchJob(f"models:/{name}@champion", source_table, str(tmp_path / "s"), date=DAYS[1]),
    )
    assert summary["model_version"] == versions[0]
    scored = spark.read.format("delta").load(str(tmp_path / "s")).orderBy("transaction_id")
    source = spark.read.format("delta").load(source_table).where(F.col("ds") == DAYS[1])
    direct = load_artifact(str(artifact_dir)).scorer().score(source.toArrow())
    expected = np.sort(direct.score.filter(pa.array(direct.valid)).to_numpy())
    assert np.array_equal(np.sort(scored.toArrow()["score"].to_numpy()), expected)


def test_a_wrong_password_is_a_clear_error(client_env: dict[str, str], name: str) -> None:
    env = {**client_env, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    listed = _cli(env, "model", "list", name)
    assert listed.returncode == 2, listed.stderr
    assert "refused the credentials" in listed.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in listed.stderr
    assert "not-the-password" not in listed.stdout + listed.stderr


def _alias_check_failures(metrics: str) -> float:
    found = re.search(r"^scoring_stream_model_alias_check_failures_total (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_worker_keeps_scoring_through_a_registry_outage_and_follows_the_alias_after(
    client_env: dict[str, str],
    server: MlflowServer,
    s3: S3Server,
    name: str,
    kafka: Broker,
    topics: Topics,
    demo_table: pa.Table,
    artifact_dir: Path,
    trained: TrainedModel,
    tmp_path: Path,
) -> None:
    first, second = _two_versions_first_promoted(trained, name)
    rows = demo_table.slice(0, 900)
    local = load_artifact(str(artifact_dir))
    events = list(to_events(rows, local.contract.key, local.contract.feature_names))
    valid = int(local.scorer().score(rows).valid.sum())
    processor = ProcessorProcess(
        kafka.bootstrap,
        f"models:/{name}@champion",
        topics,
        tmp_path,
        extra=["--model-poll-seconds", "0.5"],
        env=client_env,
    )
    port = int(server.uri.rsplit(":", 1)[1])
    try:
        processor.wait_ready()
        produce(kafka.bootstrap, topics.input, events[:300])
        processor.wait_until(lambda h: h["events_in"] == 300, what="the first events")
        services.stop(Path(server.state_dir))
        processor.wait_until(
            lambda _: _alias_check_failures(processor.metrics()) >= 2,
            what="failed alias checks counted",
        )
        produce(kafka.bootstrap, topics.input, events[300:600])
        processor.wait_until(lambda h: h["events_in"] == 600, what="events during the outage")
        assert processor.health()["model_version"] == first  # type: ignore[index]
        services.start_mlflow(Path(server.state_dir), s3, port=port, basic_auth=True)
        registry.promote(name, second)
        processor.wait_until(
            lambda h: h["model_version"] == second, timeout=60, what="the promoted version"
        )
        produce(kafka.bootstrap, topics.input, events[600:])
        processor.wait_until(lambda h: h["events_in"] == 900, what="every event")
        out = read_all(kafka.bootstrap, topics.output, valid)
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()
    versions = [dict(r.headers)["model_version"].decode() for r in out]
    assert versions.count(first) > 0 and versions.count(second) > 0
    assert len(out) == len({r.key for r in out}) == valid  # every valid event, once


def test_a_server_keeps_serving_through_a_registry_outage_and_follows_the_alias_after(
    client_env: dict[str, str],
    server: MlflowServer,
    s3: S3Server,
    name: str,
    demo_table: pa.Table,
    trained: TrainedModel,
    tmp_path: Path,
) -> None:
    from scoring.lifecycle.rollout import wait_for_version

    from tests.integration.serve.serve_process import ServeProcess, get, post, v2_json

    first, second = _two_versions_first_promoted(trained, name)
    contract = load_artifact(f"models:/{name}/{first}").contract
    body = v2_json(demo_table.slice(0, 20), contract)
    served = ServeProcess(
        f"models:/{name}@champion", tmp_path, "--model-poll-seconds", "0.5", env=client_env
    )
    infer, metadata = f"{served.url}/v2/models/{name}/infer", f"{served.url}/v2/models/{name}"
    port = int(server.uri.rsplit(":", 1)[1])
    try:
        served.wait_ready()
        assert post(infer, body)[1]["model_version"] == first
        services.stop(Path(server.state_dir))
        deadline = time.monotonic() + 60
        while _serve_alias_check_failures(get(f"{served.url}/metrics")[1]) < 2:
            assert time.monotonic() < deadline, served.log()
            time.sleep(0.5)
        status, answer = post(infer, body)  # the registry is down: the loaded version serves
        assert (status, answer["model_version"]) == (200, first)
        services.start_mlflow(Path(server.state_dir), s3, port=port, basic_auth=True)
        registry.promote(name, second)
        # What the rollout's confirm step runs: the server reports the promoted version.
        assert wait_for_version([metadata], name, second, timeout=60)["version"] == second
        status, answer = post(infer, body)
        assert (status, answer["model_version"]) == (200, second)
        assert served.terminate() == 0, served.log()
    finally:
        served.stop()


def _two_versions_first_promoted(trained: TrainedModel, name: str) -> tuple[str, str]:
    """The trained model registered twice as ``name``; ``champion`` names the first."""
    from scoring.lifecycle.packaging import package

    first, second = (
        package(
            trained.model_file, name, trained.sample_file, spec_file=trained.contract_file
        ).version
        for _ in range(2)
    )
    registry.promote(name, first)
    return first, second


def _serve_alias_check_failures(metrics: str) -> float:
    found = re.search(r"^scoring_serve_model_alias_check_failures_total (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0
