"""The model_rollout DAG's shadow phase in a real Airflow, on live events.

For the whole module a stream processor follows ``fraud@champion``, shadows
``fraud@challenger`` into a shadow topic, and is fed events at a steady rate. Each test
registers a candidate and runs the DAG: the candidate becomes the challenger, the
processor scores every live event with it too, and the comparison over the two topics
decides. A candidate whose live scores equal the champion's is promoted on that
evidence; one trained on other rows (as good on the holdout, so it passes the quality
gate) disagrees on live events and is held back, the champion untouched. Either way the
challenger alias is cleared at the end and the processor stops shadowing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from scoring.dev.demo.data import generate_day
from scoring.dev.demo.train import TrainedModel, train
from scoring.dev.kafka_broker import Broker
from scoring.errors import ModelNotFoundError
from scoring.lifecycle import registry
from scoring.lifecycle.packaging import package

from tests.integration.airflow.airflow_helpers import Airflow
from tests.integration.conftest import DAYS
from tests.integration.kafka_helpers import ProcessorProcess, Topics, create_topics, produce
from tests.integration.stream.test_stream import events_of

pytestmark = pytest.mark.integration

DAG_ID = "model_rollout"
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


@dataclass(frozen=True)
class Live:
    processor: ProcessorProcess
    topics: Topics
    shadow_topic: str


@pytest.fixture(scope="module")
def live(
    home: Path,
    trained: TrainedModel,
    artifact_dir: Path,
    kafka: Broker,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Live]:
    """fraud v1 as champion, and a fed processor shadowing whatever fraud@challenger is."""
    registry.promote("fraud", _register(trained))
    topics = Topics("shadow-rollout.in", "shadow-rollout.out", "shadow-rollout.dlq")
    shadow_topic = "shadow-rollout.shadow"
    create_topics(kafka.bootstrap, topics)
    processor = ProcessorProcess(
        kafka.bootstrap,
        "models:/fraud@champion",
        topics,
        tmp_path_factory.mktemp("processor"),
        extra=[
            *("--model-poll-seconds", "0.5"),
            *("--shadow", "models:/fraud@challenger", "--shadow-topic", shadow_topic),
        ],
        env={"SCORING_HOME": str(home)},
    )
    feeder = Feeder(
        kafka.bootstrap,
        topics.input,
        events_of(artifact_dir, generate_day(date(2026, 11, 9), 20_000, seed=21)),
    )
    try:
        processor.wait_ready()
        feeder.start()
        yield Live(processor, topics, shadow_topic)
    finally:
        feeder.stop()
        processor.stop()


@pytest.fixture(scope="module")
def variables(kafka: Broker, source_table: str, live: Live, home: Path) -> dict[str, str]:
    return {
        "rollout_source": source_table,
        "rollout_holdout_date": DAYS[2],
        "rollout_golden_date": DAYS[0],
        "rollout_golden_rows": "200",
        # A model trained on other rows is about as good: the holdout does not tell them
        # apart; only live evidence does.
        "rollout_margin": "0.05",
        "rollout_kafka_bootstrap": kafka.bootstrap,
        "rollout_health_urls": f"http://127.0.0.1:{live.processor.metrics_port}/health",
        "rollout_confirm_timeout": "30",
        "rollout_shadow_events": str(SHADOW_EVENTS),
        "rollout_shadow_timeout": "120",
        "rollout_output_topic": live.topics.output,
        "rollout_shadow_topic": live.shadow_topic,
        # Strict: every live label equal, the score distributions alike.
        "rollout_shadow_min_agreement": "1.0",
        "rollout_shadow_max_psi": "0.000001",
        "rollout_reports_dir": str(home / "reports"),
    }


def _rollout(airflow: Airflow, version: str, **variables: str) -> tuple[dict[str, str], str]:
    conf = json.dumps({"model": "fraud", "version": version})
    result = airflow("dags", "test", DAG_ID, "-c", conf, **variables)
    states = airflow.task_states(DAG_ID, airflow.last_run_id(DAG_ID))
    return states, result.stdout + result.stderr


def _reports(home: Path, version: str) -> list[dict]:
    found = sorted((home / "reports").glob(f"fraud-v{version}/*/comparison.json"))
    return [json.loads(path.read_text()) for path in found]


def _stops_shadowing(processor: ProcessorProcess) -> None:
    processor.wait_until(
        lambda h: h["shadow_model_version"] is None, timeout=30, what="no shadow any more"
    )


def test_a_candidate_that_scores_live_events_alike_is_promoted_on_that_evidence(
    airflow: Airflow,
    trained: TrainedModel,
    live: Live,
    variables: dict[str, str],
    home: Path,
) -> None:
    candidate = _register(trained)  # the champion's graph again: equal live scores
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
    assert report["mlflow_run_id"]
    health = live.processor.health()
    assert health is not None and health["model_version"] == candidate
    with pytest.raises(ModelNotFoundError):
        registry.resolve("models:/fraud@challenger")
    _stops_shadowing(live.processor)


def test_a_candidate_that_disagrees_on_live_events_is_held_back(
    airflow: Airflow,
    live: Live,
    variables: dict[str, str],
    home: Path,
    tmp_path: Path,
) -> None:
    before = _champion()
    other_rows = generate_day(date(2026, 11, 5), 6000, seed=5)
    candidate = _register(train(other_rows, tmp_path / "other", "other", 0))
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
    health = live.processor.health()
    assert health is not None and health["model_version"] == before
    _stops_shadowing(live.processor)
