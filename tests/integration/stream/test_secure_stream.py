"""The stream processor and the parity gate on the broker's SASL_SSL and mutual-TLS listeners.

The processor gets nothing but ``--kafka-config FILE``; its outputs are checked key by key
with kafka-python (an independent client) reading ``read_committed`` through the same
file. The password is known to the test, which greps everything the run left behind for it,
also when the run fails: a refused login, a client key that its password does not open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from scoring.dev.demo.data import KEY
from scoring.dev.demo.train import TrainedModel
from scoring.dev.kafka_broker import SecureListeners
from scoring.lifecycle.loading import load_artifact
from scoring.lifecycle.packaging import package
from scoring.lifecycle.rollout import parity
from scoring.stream import topics as shared_topics
from scoring.stream.events import to_events
from scoring.stream.kafka_config import KafkaClientConfig, resolve

from tests.integration.conftest import DAYS
from tests.integration.kafka_helpers import (
    PARTITIONS,
    ProcessorProcess,
    Topics,
    kafka_python_options,
    outputs_by_key,
    read_all,
)

pytestmark = pytest.mark.integration

PASSWORD_VARIABLE = "TEST_SCORING_KAFKA_SECRET"


def secret_file(secure: SecureListeners, listener: str, tmp_path: Path) -> tuple[Path, str]:
    """A client file for ``listener`` whose secret comes from ``$TEST_SCORING_KAFKA_SECRET``.

    Returns the file and the secret (the SCRAM password, or the client key's password).
    """
    source = secure.sasl_ssl_config if listener == "sasl_ssl" else secure.mtls_config
    config = resolve(config_file=source)
    secret_key = "sasl.password" if listener == "sasl_ssl" else "ssl.key.password"
    lines = {
        "bootstrap.servers": config.bootstrap,
        **config.properties,
        secret_key: "${" + PASSWORD_VARIABLE + "}",
    }
    path = tmp_path / f"{listener}.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return path, config.properties[secret_key]


def fresh_topics(config: KafkaClientConfig, name: str) -> Topics:
    made = Topics(f"{name}.in", f"{name}.out", f"{name}.dlq")
    shared_topics.create(
        config.bootstrap, (made.input, made.output, made.dlq), PARTITIONS, config.properties
    )
    return made


@pytest.fixture(autouse=True)
def _no_ambient_kafka_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SCORING_KAFKA_CONFIG", "SCORING_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("listener", ["sasl_ssl", "mtls"])
def test_processor_exactly_once_over_a_secured_listener_and_no_secret_leaks(
    secure_kafka: SecureListeners,
    artifact_dir: Path,
    demo_table: pa.Table,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: str,
) -> None:
    path, secret = secret_file(secure_kafka, listener, tmp_path)
    monkeypatch.setenv(PASSWORD_VARIABLE, secret)
    config = resolve(config_file=path)
    topics = fresh_topics(config, f"secure-stream-{listener}-{uuid.uuid4().hex[:6]}")
    table = demo_table.slice(0, 1500)
    scored = load_artifact(str(artifact_dir)).scorer().score(table)
    keys = [str(k).encode() for k in table.column(KEY).to_pylist()]
    valid = {
        k: s for k, s, ok in zip(keys, scored.score.to_pylist(), scored.valid, strict=True) if ok
    }
    refused = {k for k, ok in zip(keys, scored.valid, strict=True) if not ok}
    contract = load_artifact(str(artifact_dir)).contract
    events = list(to_events(table, contract.key, contract.feature_names))

    # The processor is told nothing but the file (its bootstrap.servers, its ${VAR}).
    processor = ProcessorProcess(
        "", artifact_dir, topics, tmp_path, extra=("--kafka-config", str(path))
    )
    try:
        processor.wait_ready(timeout=90)
        shared_topics.produce(config.bootstrap, topics.input, events, kafka=config.properties)
        reader_options = kafka_python_options(config)
        out = read_all(config.bootstrap, topics.output, len(valid), **reader_options)
        dead = read_all(config.bootstrap, topics.dlq, len(refused), **reader_options)
        processor.wait_until(lambda h: h["events_in"] == len(events), what="all events counted")
        health = json.dumps(processor.health())
        metrics = processor.metrics()
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()

    by_key = outputs_by_key(out)
    assert set(by_key) == set(valid)
    assert all(len(predictions) == 1 for predictions in by_key.values())
    assert all(p[0]["score"] == valid[k] for k, p in by_key.items())
    assert {r.key for r in dead} == refused

    log = processor.log_file.read_text()
    summary = json.loads(log.strip().splitlines()[-1])
    assert summary["status"] == "stopped" and summary["events_in"] == len(events)
    assert config.describe() in log  # the run says where it connected and how
    for where, text in {"log and summary": log, "/health": health, "/metrics": metrics}.items():
        assert secret not in text, f"the secret appears in the processor's {where}"


def served(port: int) -> list[str]:
    """What ``/health`` and ``/metrics`` answer on ``port`` now (503 bodies included)."""
    bodies = []
    for path in ("/health", "/metrics"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=0.5) as reply:
                bodies.append(reply.read().decode())
        except urllib.error.HTTPError as refused:
            bodies.append(refused.read().decode())
        except OSError:
            pass  # not serving (yet, or any more)
    return bodies


def test_a_wrong_password_makes_the_processor_exit_4_at_once(
    secure_kafka: SecureListeners,
    artifact_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, secret = secret_file(secure_kafka, "sasl_ssl", tmp_path)
    wrong = "Wrong-" + uuid.uuid4().hex
    monkeypatch.setenv(PASSWORD_VARIABLE, wrong)
    topics = Topics("never.in", "never.out", "never.dlq")
    began = time.monotonic()
    processor = ProcessorProcess(
        "", artifact_dir, topics, tmp_path, extra=("--kafka-config", str(path))
    )
    # Whatever it serves before it exits (it checks the login before it serves anything).
    answers: list[str] = []
    try:
        while processor.process.poll() is None and time.monotonic() - began < 60:
            answers += served(processor.metrics_port)
            time.sleep(0.05)
        code = processor.wait(timeout=5)
    finally:
        processor.stop()
    elapsed = time.monotonic() - began
    log = processor.log_file.read_text()
    assert code == 4, log
    # Python start-up and loading the model take a few seconds of this; the login is ~1 s.
    assert elapsed < 30, f"exited after {elapsed:.0f}s:\n{log}"
    assert f"Kafka refused the login at {secure_kafka.sasl_ssl_bootstrap}" in log
    assert "SASL_SSL" in log and "SCRAM-SHA-512" in log and str(path) in log
    assert log.rstrip().splitlines()[-1].startswith("error: Kafka refused the login")
    for text in (log, *answers):
        assert wrong not in text and secret not in text


def test_a_client_key_its_password_does_not_open_fails_at_once_and_says_so(
    secure_kafka: SecureListeners, artifact_dir: Path, tmp_path: Path
) -> None:
    """Mutual TLS through ``scoring stream run``: stdout and stderr are read apart."""
    path, secret = secret_file(secure_kafka, "mtls", tmp_path)
    wrong = "Wrong-key-" + uuid.uuid4().hex
    topics = [f"--{kind}-topic=never.{kind}" for kind in ("input", "output", "dlq")]
    result = subprocess.run(
        [str(Path(sys.executable).with_name("scoring")), "stream", "run", "--model",
         str(artifact_dir), *topics, "--kafka-config", str(path)],
        env={**os.environ, PASSWORD_VARIABLE: wrong}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.rstrip().splitlines()[-1]
    assert error.startswith(
        f"error: The Kafka client for {secure_kafka.ssl_bootstrap} (SSL, client certificate)"
    )
    assert "ssl.key.password" in error and str(path) in error
    assert result.stdout == ""
    for text in (result.stdout, result.stderr):
        assert wrong not in text and secret not in text


def test_parity_gate_over_sasl_ssl(
    spark: SparkSession,
    source_table: str,
    scoring_home: Path,
    trained: TrainedModel,
    secure_kafka: SecureListeners,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, secret = secret_file(secure_kafka, "sasl_ssl", tmp_path)
    monkeypatch.setenv(PASSWORD_VARIABLE, secret)
    config = resolve(config_file=path)
    version = package(
        trained.model_file, "fraud", trained.sample_file, spec_file=trained.contract_file
    ).version
    report = parity(
        spark, "fraud", version, source_table, config.bootstrap, date=DAYS[0], rows=300,
        kafka=config.properties,
    )  # fmt: skip
    assert report["stream_scored"] == report["batch_scored"] > 290
    assert report["different"] == 0
    assert secret not in json.dumps(report)
    # Nothing the registry or MLflow stored holds it either.
    for file in scoring_home.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), f"the secret is in {file}"
