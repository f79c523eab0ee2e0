"""Faults of the worker's own making, against a real broker: a paused worker (a zombie), a
second live worker with the same id (a twin), output the cluster refuses for good, and a
shadow topic that refuses writes.

Each drains a backlog of 20,000 events and then reads the output ``read_committed`` with an
independent client (kafka-python): every valid event must have exactly one prediction and
every refused one exactly one dead letter, whatever the fault did.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from scoring.dev.kafka_broker import Broker, SecureListeners
from scoring.stream import clients
from scoring.stream import topics as shared_topics
from scoring.stream.kafka_config import resolve
from scoring.stream.processor import StreamConfig

from tests.integration.kafka_helpers import (
    PARTITIONS,
    ProcessorProcess,
    Topics,
    ongoing_transactions,
    produce,
    read_all,
)
from tests.integration.stream.test_stream import Backlog, backlog_of
from tests.integration.stream.test_stream_recovery import assert_exactly_once

pytestmark = pytest.mark.integration

BACKLOG = 20_000


@pytest.fixture(scope="module")
def backlog(artifact_dir: Path) -> Backlog:
    return backlog_of(artifact_dir, date(2026, 11, 8), BACKLOG, seed=23)


def _transactional_ids(topics: Topics, worker: str) -> tuple[str, str]:
    return StreamConfig("", "", "", "", "", group=topics.group, worker=worker).transactional_ids


def test_a_paused_worker_wakes_up_to_a_refused_commit_and_nothing_is_doubled(
    kafka: Broker, topics: Topics, artifact_dir: Path, backlog: Backlog, tmp_path: Path
) -> None:
    events, valid, refused = backlog
    options = [
        *("--batch-size", "500"),
        *("--transaction-timeout-ms", "12000"),
        *("-X", "session.timeout.ms=6000"),
        *("-X", "heartbeat.interval.ms=1000"),
    ]
    zombie_ids = _transactional_ids(topics, "zombie")
    zombie, other = (
        ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path, name, extra=options)
        for name in ("zombie", "other")
    )
    try:
        for worker in (zombie, other):
            worker.wait_ready()
        # Both hold partitions before the backlog arrives: both have work left to do.
        other.wait_until(lambda h: len(h["assigned"]) < PARTITIONS, what="a shared group")
        produce(kafka.bootstrap, topics.input, events)
        zombie.wait_until(lambda h: h["events_in"] >= 500, what="the zombie's first batches")
        # Frozen while its transaction is open (its coordinator says so).
        for _ in range(200):
            zombie.pause()
            if ongoing_transactions(kafka.bootstrap, zombie_ids):
                break
            zombie.resume()
            time.sleep(0.01)
        else:
            raise AssertionError(f"no open transaction caught:\n{zombie.log()}")
        # The group moves the zombie's partitions to the other worker, which commits
        # past them (the broker aborts the zombie's transaction when it times out).
        other.wait_until(
            lambda h: len(h["assigned"]) == PARTITIONS, timeout=60, what="all partitions"
        )
        moved = other.health()
        assert moved is not None
        other.wait_until(
            lambda h: h["events_in"] >= moved["events_in"] + 2000,
            timeout=60,
            what="the other worker committing past the zombie's partitions",
        )
        zombie.resume()
        assert_exactly_once(kafka.bootstrap, topics, valid, refused)
        # Its late commit was refused and it said why. A commit still in its hands when it
        # woke times out: its producers are replaced and it rejoins the group. One the
        # broker had timed out meanwhile finds its producer fenced: it exits with code 4,
        # for its supervisor to start it again.
        deadline = time.monotonic() + 60
        while zombie.process.poll() is None and time.monotonic() < deadline:
            if (zombie.health() or {}).get("assigned"):
                break  # back in the group
            time.sleep(0.5)
        log = zombie.log()
        if zombie.process.poll() is None:
            assert "events aborted" in log, log
            metrics = zombie.metrics()
            aborted = re.search(r"^scoring_stream_aborted_batches_total (\S+)$", metrics, re.M)
            assert aborted and float(aborted.group(1)) >= 1, log
            assert zombie.terminate() == 0, zombie.log()
        else:
            assert zombie.wait() == 4 and "were fenced" in log, log
        assert other.terminate() == 0, other.log()
    finally:
        zombie.resume()
        zombie.stop()
        other.stop()


def test_a_twin_with_the_same_worker_id_fences_the_first_which_exits_4_and_lets_go(
    kafka: Broker, topics: Topics, artifact_dir: Path, backlog: Backlog, tmp_path: Path
) -> None:
    events, valid, refused = backlog
    produce(kafka.bootstrap, topics.input, events[:2000])
    # A long session: the partitions can only move fast if the fenced worker leaves.
    options = [*("--batch-size", "500"), *("-X", "session.timeout.ms=45000")]
    first = ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path, "7", extra=options)
    twin: ProcessorProcess | None = None
    try:
        first.wait_until(lambda h: h["events_in"] >= 1900, what="the first events in")
        twin = ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path, "7", extra=options)
        # Its producers have started, fencing the first worker's; the first finds out at
        # its next commit, when events arrive.
        twin.wait_until(lambda h: h["status"] == "ok", what="the twin's producers")
        produce(kafka.bootstrap, topics.input, events[2000:])
        assert first.wait(60) == 4, first.log()
        exited = time.monotonic()
        log = first.log()
        assert "transactional ids ('scoring-stream." in log and ".7'" in log, log
        assert "--worker" in log, log
        twin.wait_until(lambda h: len(h["assigned"]) == PARTITIONS, what="all partitions")
        assert time.monotonic() - exited < 20, "the partitions waited for the session timeout"
        assert_exactly_once(kafka.bootstrap, topics, valid, refused)
        assert twin.terminate() == 0, twin.log()
    finally:
        first.stop()
        if twin is not None:
            twin.stop()


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_output_the_cluster_refuses_for_good_makes_the_worker_degraded_then_exit_4(
    kafka: Broker,
    topics: Topics,
    artifact_dir: Path,
    backlog: Backlog,
    tmp_path: Path,
    guarantee: str,
) -> None:
    # Every prediction is larger than the output topic takes: no batch can ever commit.
    output = f"{topics.output}.small"
    admin = clients.admin(kafka.bootstrap)
    made = admin.create_topics(
        [NewTopic(output, PARTITIONS, 1, config={"max.message.bytes": "40"})]
    )
    made[output].result(30)
    events, _, _ = backlog
    produce(kafka.bootstrap, topics.input, events[:2000])
    refusing = Topics(topics.input, output, topics.dlq)
    worker = ProcessorProcess(
        kafka.bootstrap,
        artifact_dir,
        refusing,
        tmp_path,
        extra=[
            *("--guarantee", guarantee, "--max-stall-seconds", "8", "--group", topics.group),
            # A commit attempt may run up to its deadline (the transaction timeout plus a
            # call's); the stall limit is checked when one fails.
            *("--transaction-timeout-ms", "10000"),
        ],
    )
    try:
        worker.wait_until(lambda h: h["status"] == "degraded", timeout=60, what="degraded")
        health = worker.health()
        assert health is not None and "fail to commit" in health["problem"], health
        assert "scoring_stream_degraded 1.0" in worker.metrics()
        started = time.monotonic()
        code = worker.wait(60)
        log = worker.log()
        assert code == 4, log
        assert time.monotonic() - started < 8 + 10 + 10, log
        assert "no micro-batch committed for" in log and "--max-stall-seconds" in log, log
        assert not read_all(kafka.bootstrap, output, 1, timeout=2, settle=0)
    finally:
        worker.stop()


def _shadow_worker(
    bootstrap: str, topics: Topics, artifact_dir: Path, tmp_path: Path, *extra: str
) -> tuple[ProcessorProcess, str]:
    """A worker with the champion in its own shadow, checking a suspended topic every 2 s."""
    shadow_topic = f"{topics.output}.shadow"
    worker = ProcessorProcess(
        bootstrap,
        artifact_dir,
        topics,
        tmp_path,
        extra=[
            *("--shadow", str(artifact_dir), "--shadow-topic", shadow_topic),
            *("--batch-size", "500", "--shadow-retry-seconds", "2"),
            *extra,
        ],
    )
    return worker, shadow_topic


def _champion_goes_on_while_the_shadow_is_refused(
    worker: ProcessorProcess,
    kafka: Broker,
    topics: Topics,
    shadow_topic: str,
    backlog: Backlog,
    refuse: Callable[[], None],
    accept: Callable[[], None],
    reason: str,
) -> None:
    """Refuse the shadow topic's writes while a backlog drains, then accept them again:
    the champion's output is complete and exactly once, the shadow suspended and resumed."""
    events, valid, refused = backlog
    worker.wait_ready(timeout=90)
    produce(kafka.bootstrap, topics.input, events[:4000])
    worker.wait_until(lambda h: h["shadow_predictions"] > 0, what="shadow predictions")
    refuse()
    produce(kafka.bootstrap, topics.input, events[4000:12000])
    worker.wait_until(
        lambda h: h["shadow_suspended"] is not None, timeout=60, what="the shadow suspended"
    )
    health = worker.health()
    assert health is not None and reason in health["shadow_suspended"], health
    assert "scoring_stream_shadow_suspended 1.0" in worker.metrics()
    # The champion goes on while the topic refuses.
    worker.wait_until(lambda h: h["events_in"] >= 12000, timeout=90, what="12,000 events in")
    assert worker.health()["status"] == "ok"  # type: ignore[index]
    accept()
    worker.wait_until(lambda h: h["shadow_suspended"] is None, timeout=30, what="resumed")
    produce(kafka.bootstrap, topics.input, events[12000:])
    assert_exactly_once(kafka.bootstrap, topics, valid, refused)
    # Once resumed, the shadow holds the challenger's predictions again.
    assert read_all(kafka.bootstrap, shadow_topic, 1, timeout=30, settle=0)
    log = worker.log()
    assert log.count("shadow suspended:") == 1, log
    assert "shadow resumed" in log, log
    assert worker.terminate() == 0, log


def test_a_deleted_shadow_topic_never_holds_up_the_champion(
    kafka: Broker, topics: Topics, artifact_dir: Path, backlog: Backlog, tmp_path: Path
) -> None:
    worker, shadow_topic = _shadow_worker(kafka.bootstrap, topics, artifact_dir, tmp_path)
    try:
        _champion_goes_on_while_the_shadow_is_refused(
            worker,
            kafka,
            topics,
            shadow_topic,
            backlog,
            refuse=lambda: shared_topics.delete(kafka.bootstrap, [shadow_topic]),
            accept=lambda: shared_topics.create(kafka.bootstrap, [shadow_topic], PARTITIONS),
            reason="does not exist",
        )
    finally:
        worker.stop()


def test_a_shadow_topic_an_acl_denies_never_holds_up_the_champion(
    kafka: Broker,
    secure_kafka: SecureListeners,
    topics: Topics,
    artifact_dir: Path,
    backlog: Backlog,
    tmp_path: Path,
) -> None:
    # The worker logs in over SASL_SSL; the test's own clients use the plaintext listener,
    # whose principal is a super user.
    config = resolve(config_file=secure_kafka.sasl_ssl_config)
    acl = (
        ResourceType.TOPIC,
        f"{topics.output}.shadow",
        ResourcePatternType.LITERAL,
        f"User:{config.properties['sasl.username']}",
        "*",
        AclOperation.WRITE,
        AclPermissionType.DENY,
    )
    denied, its_filter = AclBinding(*acl), AclBindingFilter(*acl)
    admin = clients.admin(kafka.bootstrap)
    worker, shadow_topic = _shadow_worker(
        "", topics, artifact_dir, tmp_path, "--kafka-config", str(secure_kafka.sasl_ssl_config)
    )

    def acls(call: Callable[[list[AclBinding]], Any], bindings: list[Any]) -> None:
        for future in call(bindings, request_timeout=10).values():
            future.result(15)

    try:
        _champion_goes_on_while_the_shadow_is_refused(
            worker,
            kafka,
            topics,
            shadow_topic,
            backlog,
            refuse=lambda: acls(admin.create_acls, [denied]),
            accept=lambda: acls(admin.delete_acls, [its_filter]),
            reason="not authorized to",
        )
    finally:
        worker.stop()
        admin.delete_acls([its_filter])
