"""The model_rollout DAG in a real Airflow, with a real broker and a live processor.

For the whole module a stream processor follows ``fraud@champion``, shadows
``fraud@challenger`` into a shadow topic, and is fed events at a steady rate. Each test
registers a candidate and runs ``airflow dags test model_rollout -c {"model": ...,
"version": ...}``: a candidate whose live scores equal the champion's becomes champion on
that evidence and the processor reports it; one trained on other rows (as good on the
holdout, so it passes the quality gate) disagrees on live events and is held back; one
that fails the quality gate is never promoted; a failure after promotion puts the alias
back. The challenger alias is cleared at the end of every run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from scoring.dev.demo.data import generate_day
from scoring.dev.demo.train import TrainedModel, train
from scoring.dev.kafka_broker import Broker, SecureListeners, free_port
from scoring.errors import ModelNotFoundError
from scoring.lifecycle import registry
from scoring.lifecycle.packaging import package
from scoring.stream.kafka_config import KafkaClientConfig

from tests.integration.airflow.airflow_helpers import Airflow
from tests.integration.conftest import DAYS
from tests.integration.kafka_helpers import ProcessorProcess, Topics, create_topics, produce
from tests.integration.stream.test_stream import events_of

pytestmark = pytest.mark.integration

DAG_ID = "model_rollout"
SHADOW_TOPIC = "rollout.shadow"
SHADOW_EVENTS = 400


def _register(trained: TrainedModel) -> str:
    return package(
        trained.model_file, "fraud", trained.sample_file, spec_file=trained.contract_file
    ).version


def _champion() -> str:
    return registry.resolve("models:/fraud@champion").version


class Feeder(threading.Thread):
    """Live traffic: events produced at about 1,000 a second until stopped."""

    def __init__(self, bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events = bootstrap, topic, events
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = 0
            while not self.halt.wait(0.2):
                chunk = self.events[start : start + 200] or self.events[:200]
                start = (start + 200) % len(self.events)
                produce(self.bootstrap, self.topic, chunk)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert self.error is None, self.error


@pytest.fixture(scope="module")
def processor(
    home: Path,
    trained: TrainedModel,
    artifact_dir: Path,
    kafka: Broker,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProcessorProcess]:
    """fraud v1 as champion, and a fed processor shadowing whatever fraud@challenger is."""
    registry.promote("fraud", _register(trained))
    topics = Topics("rollout.in", "rollout.out", "rollout.dlq")
    create_topics(kafka.bootstrap, topics)
    running = ProcessorProcess(
        kafka.bootstrap,
        "models:/fraud@champion",
        topics,
        tmp_path_factory.mktemp("processor"),
        extra=[
            *("--model-poll-seconds", "0.5"),
            *("--shadow", "models:/fraud@challenger", "--shadow-topic", SHADOW_TOPIC),
        ],
        env={"SCORING_HOME": str(home)},
    )
    feeder = Feeder(
        kafka.bootstrap,
        topics.input,
        events_of(artifact_dir, generate_day(date(2026, 11, 9), 20_000, seed=21)),
    )
    try:
        running.wait_ready()
        feeder.start()
        yield running
    finally:
        feeder.stop()
        running.stop()


@pytest.fixture(scope="module")
def variables(
    source_table: str, secure_kafka: SecureListeners, processor: ProcessorProcess, home: Path
) -> dict[str, str]:
    # Parity and the comparison go through the SASL_SSL listener with the broker's client
    # file; the processor uses the plaintext one of the same broker.
    return {
        "rollout_source": source_table,
        "rollout_holdout_date": DAYS[2],
        "rollout_golden_date": DAYS[0],
        "rollout_golden_rows": "200",
        # A model trained on other rows is about as good: the holdout does not tell it
        # from the champion; only the live evidence does.
        "rollout_margin": "0.05",
        "rollout_kafka_bootstrap": secure_kafka.sasl_ssl_bootstrap,
        "rollout_kafka_config": str(secure_kafka.sasl_ssl_config),
        "rollout_health_urls": f"http://127.0.0.1:{processor.metrics_port}/health",
        "rollout_confirm_timeout": "30",
        "rollout_shadow_events": str(SHADOW_EVENTS),
        "rollout_shadow_timeout": "120",
        "rollout_output_topic": "rollout.out",
        "rollout_shadow_topic": SHADOW_TOPIC,
        # Strict: every live label equal, the score distributions alike.
        "rollout_shadow_min_agreement": "1.0",
        "rollout_shadow_max_psi": "0.000001",
        "rollout_reports_dir": str(home / "reports"),
    }


def _rollout(airflow: Airflow, version: str, **variables: str) -> tuple[dict[str, str], str]:
    """Run the DAG for a candidate: the task states and the whole output."""
    conf = json.dumps({"model": "fraud", "version": version})
    result = airflow("dags", "test", DAG_ID, "-c", conf, **variables)
    states = airflow.task_states(DAG_ID, airflow.last_run_id(DAG_ID))
    return states, result.stdout + result.stderr


def _reports(home: Path, version: str) -> list[dict]:
    found = sorted((home / "reports").glob(f"fraud-v{version}/*/comparison.json"))
    return [json.loads(path.read_text()) for path in found]


def _logged_comparisons() -> list[str]:
    """Run names of the comparisons logged to the rollout's MLflow experiment, oldest first."""
    mlc, experiment_id = registry.tracking("scoring-shadow")
    runs = mlc.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    return [run.info.run_name for run in runs]


def _stops_shadowing(processor: ProcessorProcess) -> None:
    processor.wait_until(
        lambda h: h["shadow_model_version"] is None, timeout=30, what="no shadow any more"
    )


def test_a_candidate_that_scores_live_events_alike_is_promoted_on_that_evidence(
    airflow: Airflow,
    trained: TrainedModel,
    processor: ProcessorProcess,
    variables: dict[str, str],
    home: Path,
) -> None:
    candidate = _register(trained)  # the champion's graph again: equal live scores
    logged = _logged_comparisons()
    states, output = _rollout(airflow, candidate, **variables)
    assert states == {
        "validate": "success",
        "parity": "success",
        "shadow": "success",
        "evidence": "success",
        "compare": "success",
        "promote": "success",
        "confirm": "success",
        "rollback": "skipped",
        "clear_challenger": "success",
    }, output[-5000:]
    assert _champion() == candidate
    (report,) = _reports(home, candidate)
    assert report["rows"] >= SHADOW_EVENTS
    assert report["label_agreement"] == 1.0 and report["psi"] == 0.0
    assert _logged_comparisons() == [*logged, "shadow-comparison"]
    assert processor.health()["model_version"] == candidate  # type: ignore[index]
    with pytest.raises(ModelNotFoundError):
        registry.resolve("models:/fraud@challenger")
    _stops_shadowing(processor)
    client = KafkaClientConfig.from_file(Path(variables["rollout_kafka_config"]))
    assert client.properties["sasl.password"] not in output


def test_a_candidate_that_disagrees_on_live_events_is_held_back(
    airflow: Airflow,
    processor: ProcessorProcess,
    variables: dict[str, str],
    home: Path,
    tmp_path: Path,
) -> None:
    before = _champion()
    other_rows = generate_day(date(2026, 11, 6), 20_000, seed=8)
    candidate = _register(train(other_rows, tmp_path / "other", "other", 0))
    logged = _logged_comparisons()
    states, output = _rollout(airflow, candidate, **variables)
    assert states["validate"] == states["parity"] == "success", output[-5000:]
    assert states["shadow"] == states["evidence"] == "success", output[-5000:]
    assert states["compare"] == "failed", output[-5000:]
    assert states["promote"] == states["confirm"] == "upstream_failed"
    assert states["rollback"] == "failed"  # fails the run, the champion untouched
    assert states["clear_challenger"] == "success"
    assert f"Rollout of fraud v{candidate} failed" in output
    assert "label agreement" in output
    assert _champion() == before
    (report,) = _reports(home, candidate)
    assert report["rows"] >= SHADOW_EVENTS and report["label_agreement"] < 1.0
    # The failed comparison is on record too.
    assert _logged_comparisons() == [*logged, "shadow-comparison"]
    assert processor.health()["model_version"] == before  # type: ignore[index]
    _stops_shadowing(processor)


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
            "rollout_shadow_events": "0",  # no shadow phase: promoted after parity
        },
    )
    assert states["shadow"] == states["evidence"] == states["compare"] == "skipped"
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
