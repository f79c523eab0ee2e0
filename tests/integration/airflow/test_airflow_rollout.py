"""The model_rollout DAG in a real Airflow, with a real broker and a running processor.

A stream processor follows ``fraud@champion`` for the whole module. Each test registers a
candidate and runs ``airflow dags test model_rollout -c {"model": ..., "version": ...}``
without the shadow phase (``scoring_rollout_shadow_events`` = 0): a good one ends as
champion and the processor reports it, one that fails the quality gate is never
promoted, and a failure after promotion puts the alias back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from scoring.dev.demo.train import TrainedModel
from scoring.dev.kafka_broker import Broker, SecureListeners, free_port
from scoring.lifecycle import registry
from scoring.lifecycle.packaging import package
from scoring.stream.kafka_config import KafkaClientConfig

from tests.integration.airflow.airflow_helpers import Airflow
from tests.integration.conftest import DAYS
from tests.integration.kafka_helpers import ProcessorProcess, Topics, create_topics

pytestmark = pytest.mark.integration

DAG_ID = "model_rollout"


def _register(trained: TrainedModel) -> str:
    return package(
        trained.model_file, "fraud", trained.sample_file, spec_file=trained.contract_file
    ).version


def _champion() -> str:
    return registry.resolve("models:/fraud@champion").version


@pytest.fixture(scope="module")
def processor(
    home: Path, trained: TrainedModel, kafka: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessorProcess]:
    """fraud v1 as champion, and a processor following the alias."""
    registry.promote("fraud", _register(trained))
    topics = Topics("rollout.in", "rollout.out", "rollout.dlq")
    create_topics(kafka.bootstrap, topics)
    running = ProcessorProcess(
        kafka.bootstrap,
        "models:/fraud@champion",
        topics,
        tmp_path_factory.mktemp("processor"),
        extra=["--model-poll-seconds", "0.5"],
        env={"SCORING_HOME": str(home)},
    )
    running.wait_ready()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def variables(
    source_table: str, secure_kafka: SecureListeners, processor: ProcessorProcess
) -> dict[str, str]:
    # The parity step goes through the SASL_SSL listener with the broker's client file.
    return {
        "rollout_source": source_table,
        "rollout_holdout_date": DAYS[2],
        "rollout_golden_date": DAYS[0],
        "rollout_golden_rows": "200",
        "rollout_kafka_bootstrap": secure_kafka.sasl_ssl_bootstrap,
        "rollout_kafka_config": str(secure_kafka.sasl_ssl_config),
        "rollout_health_urls": f"http://127.0.0.1:{processor.metrics_port}/health",
        "rollout_confirm_timeout": "30",
        # The processor here does not shadow: these rollouts promote without a shadow phase.
        "rollout_shadow_events": "0",
    }


def _rollout(airflow: Airflow, version: str, **variables: str) -> tuple[dict[str, str], str]:
    """Run the DAG for a candidate: the task states and the whole output."""
    conf = json.dumps({"model": "fraud", "version": version})
    result = airflow("dags", "test", DAG_ID, "-c", conf, **variables)
    states = airflow.task_states(DAG_ID, airflow.last_run_id(DAG_ID))
    return states, result.stdout + result.stderr


def test_a_good_candidate_becomes_champion_and_the_processor_reports_it(
    airflow: Airflow,
    trained: TrainedModel,
    processor: ProcessorProcess,
    variables: dict[str, str],
) -> None:
    candidate = _register(trained)
    states, output = _rollout(airflow, candidate, **variables)
    assert states == {
        "validate": "success",
        "parity": "success",
        "shadow": "skipped",
        "evidence": "skipped",
        "compare": "skipped",
        "promote": "success",
        "confirm": "success",
        "rollback": "skipped",
        "clear_challenger": "success",
    }, output[-5000:]
    assert _champion() == candidate
    assert processor.health()["model_version"] == candidate  # type: ignore[index]
    client = KafkaClientConfig.from_file(Path(variables["rollout_kafka_config"]))
    assert client.properties["sasl.password"] not in output


def test_a_candidate_failing_the_quality_gate_is_never_promoted(
    airflow: Airflow, noise_model: TrainedModel, variables: dict[str, str]
) -> None:
    before = _champion()
    candidate = _register(noise_model)
    states, output = _rollout(airflow, candidate, **variables)
    assert states["validate"] == "failed", output[-5000:]
    assert states["promote"] == states["confirm"] == states["compare"] == "upstream_failed"
    assert states["rollback"] == "failed"  # fails the run, having nothing to undo
    assert states["clear_challenger"] == "success"  # runs whatever happened
    assert "The quality gate failed: auc" in output
    assert "nothing rolled back" in output
    assert _champion() == before


def _swaps(processor: ProcessorProcess) -> float:
    for line in processor.metrics().splitlines():
        if line.startswith("scoring_stream_model_swaps_total "):
            return float(line.split()[1])
    raise AssertionError("no scoring_stream_model_swaps_total in the processor's metrics")


def test_a_failure_after_promotion_rolls_the_alias_back(
    airflow: Airflow,
    trained: TrainedModel,
    processor: ProcessorProcess,
    variables: dict[str, str],
) -> None:
    before = _champion()
    swaps = _swaps(processor)
    candidate = _register(trained)
    unreachable = f"http://127.0.0.1:{free_port()}/health"
    states, output = _rollout(
        airflow,
        candidate,
        **variables
        | {
            "rollout_health_urls": f"{variables['rollout_health_urls']},{unreachable}",
            "rollout_confirm_timeout": "5",
        },
    )
    assert states["promote"] == "success" and states["confirm"] == "failed", output[-5000:]
    assert states["rollback"] == "failed"
    assert f"Rollout of fraud v{candidate} failed" in output
    assert "not every processor reports" in output
    assert f"fraud@champion -> {before}" in output
    assert _champion() == before
    # The processor took the candidate up and then went back to the previous version.
    processor.wait_until(
        lambda h: h["model_version"] == before, timeout=30, what=f"v{before} again"
    )
    processor.wait_until(lambda _: _swaps(processor) == swaps + 2, timeout=10, what="two swaps")
