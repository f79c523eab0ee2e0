"""Rollout gates (scoring.lifecycle.rollout) against real Spark + Delta, MLflow and Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring.dev.demo.data import LABEL
from scoring.dev.demo.train import TrainedModel
from scoring.dev.kafka_broker import Broker, free_port
from scoring.errors import GateFailedError, SchemaMismatchError
from scoring.lifecycle import registry
from scoring.lifecycle.packaging import package
from scoring.lifecycle.rollout import parity, quality_gate, wait_for_version

from tests.integration.conftest import DAYS
from tests.integration.kafka_helpers import ProcessorProcess, Topics

pytestmark = pytest.mark.integration


def _register(trained: TrainedModel) -> str:
    return package(
        trained.model_file, "fraud", trained.sample_file, spec_file=trained.contract_file
    ).version


@pytest.fixture(params=["arrow", "python"])
def session(request: pytest.FixtureRequest) -> SparkSession | None:
    """Each gate on both batch engines: no session (arrow), or Spark's."""
    return None if request.param == "arrow" else request.getfixturevalue("spark")


def test_quality_gate_passes_a_good_candidate_and_stops_a_worse_one(
    session: SparkSession | None,
    source_table: str,
    scoring_home: Path,
    trained: TrainedModel,
    noise_model: TrainedModel,
) -> None:
    champion = _register(trained)
    first = quality_gate(session, "fraud", champion, source_table, LABEL, date=DAYS[2])
    assert first["passed"] and first["champion"] is None  # nothing to beat yet
    registry.promote("fraud", champion)

    same = quality_gate(session, "fraud", _register(trained), source_table, LABEL, date=DAYS[2])
    assert same["passed"] and same["candidate_value"] == same["champion_value"] > 0.7

    noise = _register(noise_model)
    with pytest.raises(GateFailedError, match=r"quality gate failed: auc 0\.\d+ on [\d,]+ holdout"):
        quality_gate(session, "fraud", noise, source_table, LABEL, date=DAYS[2], margin=0.02)
    assert GateFailedError.exit_code == 5
    loose = quality_gate(session, "fraud", noise, source_table, LABEL, date=DAYS[2], margin=1.0)
    assert loose["passed"]


def test_quality_gate_refuses_a_contract_the_source_cannot_feed(
    session: SparkSession | None,
    spark: SparkSession,
    source_table: str,
    scoring_home: Path,
    trained: TrainedModel,
    tmp_path: Path,
) -> None:
    broken = str(tmp_path / "broken")
    spark.read.format("delta").load(source_table).drop("amount").withColumn(
        "country", F.lit(1)
    ).write.format("delta").save(broken)
    version = _register(trained)
    with pytest.raises(SchemaMismatchError, match=r"(?s)missing column 'amount'.*'country' is int"):
        quality_gate(session, "fraud", version, broken, LABEL)


def test_parity_scores_golden_rows_identically_on_both_paths(
    session: SparkSession | None,
    source_table: str,
    scoring_home: Path,
    trained: TrainedModel,
    kafka: Broker,
) -> None:
    version = _register(trained)
    report = parity(
        session, "fraud", version, source_table, kafka.bootstrap, date=DAYS[0], rows=500
    )
    assert report["golden_rows"] == 500
    assert report["stream_scored"] == report["batch_scored"] > 490
    assert report["different"] == 0


def test_wait_for_version_sees_a_promotion_reach_the_processor(
    scoring_home: Path, trained: TrainedModel, kafka: Broker, topics: Topics, tmp_path: Path
) -> None:
    first, second = _register(trained), _register(trained)
    registry.promote("fraud", first)
    processor = ProcessorProcess(
        kafka.bootstrap,
        "models:/fraud@champion",
        topics,
        tmp_path,
        extra=["--model-poll-seconds", "0.5"],
    )
    url = f"http://127.0.0.1:{processor.metrics_port}/health"
    try:
        processor.wait_ready()
        assert wait_for_version([url], "fraud", first, timeout=5)["version"] == first
        registry.promote("fraud", second)
        report = wait_for_version([url], "fraud", second, timeout=30)
        assert report["processors"] == {url: f"fraud v{second}"}
        dead = f"http://127.0.0.1:{free_port()}/health"
        with pytest.raises(GateFailedError, match=r"not every processor reports.*unreachable"):
            wait_for_version([url, dead], "fraud", second, timeout=1, interval=0.2)
    finally:
        processor.stop()
