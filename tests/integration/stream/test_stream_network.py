"""No loss and no duplicates when the network between a worker and its broker fails.

The worker reaches the broker only through a :class:`FaultProxy`: this module's broker
has a PROXIED listener advertised at the proxy's address, and the worker is bootstrapped
there, so every connection it makes (metadata, group and transaction coordinators,
fetches, produces) crosses the proxy. The tests' own producers and readers use the
broker's plain listener, which no fault touches.

While a backlog of 20,000 events drains, the proxy drops every packet for longer than the
transaction timeout, or slows each direction by 200 ms, or resets every connection
(a few times); with either guarantee. Then the output topic is read ``read_committed``
with an independent client (kafka-python): exactly once, every valid event has one
prediction; at least once, one or more and none lost; every refused event has a dead
letter, and every score is the artifact's own. While the network is cut the worker must
say so (``/health`` degraded, with the reason, and the ``scoring_stream_degraded``
gauge), and recover by itself when it is back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from scoring.dev import kafka_broker
from scoring.dev.kafka_broker import Broker, free_port

from tests.integration.fault_proxy import FaultProxy
from tests.integration.kafka_helpers import (
    PARTITIONS,
    ProcessorProcess,
    Topics,
    create_topics,
    outputs_by_key,
    produce,
    read_all,
)
from tests.integration.stream.test_stream import Backlog, backlog_of

pytestmark = pytest.mark.integration

BACKLOG = 20_000
TRANSACTION_TIMEOUT_MS = 10_000
DROP_S = 15  # longer than the transaction timeout: the broker aborts what was open
LATENCY_MS = 200
LATENCY_S = 10
RESETS = 3
# Batches of 200: the backlog is a hundred micro-batches, so every fault lands mid-drain.
OPTIONS = ("--transaction-timeout-ms", str(TRANSACTION_TIMEOUT_MS), "--batch-size", "200")
GUARANTEES = ("exactly-once", "at-least-once")


@pytest.fixture(scope="module")
def backlog(artifact_dir: Path) -> Backlog:
    return backlog_of(artifact_dir, date(2026, 11, 5), BACKLOG, seed=17)


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of this module's own, with a PROXIED listener for the proxy."""
    state_dir = tmp_path_factory.mktemp("proxied-kafka")
    yield kafka_broker.start(state_dir, proxied_port=free_port())
    kafka_broker.stop(state_dir)


@pytest.fixture(scope="module")
def proxy(own_broker: Broker) -> Iterator[FaultProxy]:
    """Listens where the PROXIED listener is advertised, and forwards to it."""
    assert own_broker.proxied is not None
    host, port = own_broker.proxied.upstream.rsplit(":", 1)
    advertised = int(own_broker.proxied.bootstrap.rsplit(":", 1)[1])
    with FaultProxy((host, int(port)), advertised) as started:
        yield started


@pytest.fixture
def network(proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The proxy, forwarding again after the test whatever it did."""
    yield proxy
    proxy.forward()
    proxy.reset()  # no connection of this test's worker lingers into the next


@pytest.fixture
def own_topics(own_broker: Broker, request: pytest.FixtureRequest) -> Topics:
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")
    made = Topics(f"{name}.in", f"{name}.out", f"{name}.dlq")
    create_topics(own_broker.bootstrap, made)
    return made


def test_a_client_bootstrapped_at_the_proxy_is_sent_back_to_it(
    own_broker: Broker, proxy: FaultProxy
) -> None:
    assert advertised(proxy.address) == proxy.address
    assert advertised(own_broker.bootstrap) == own_broker.bootstrap


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_packets_dropped_for_longer_than_the_transaction_timeout(
    own_broker: Broker,
    network: FaultProxy,
    own_topics: Topics,
    artifact_dir: Path,
    backlog: Backlog,
    guarantee: str,
    tmp_path: Path,
) -> None:
    worker = start_mid_drain(
        own_broker, network, own_topics, artifact_dir, backlog, guarantee, tmp_path
    )
    try:
        network.drop()
        cut = time.monotonic()
        time.sleep(1)  # a commit that was on the wire before the cut is counted
        frozen = events_in(worker)
        during = watch(worker, cut + DROP_S)
        assert events_in(worker) == frozen, "the worker committed while cut off"
        network.forward()
        back = time.monotonic()
        wait_drained(own_broker.bootstrap, own_topics, worker, timeout=120)
        recovered_s = time.monotonic() - back

        degraded = [h for h in during if h["status"] == "degraded"]
        statuses = sorted({h["status"] for h in during})
        assert degraded, f"never degraded in {DROP_S} s cut off ({statuses}):\n{worker.log()}"
        assert all(isinstance(h["problem"], str) and h["problem"] for h in degraded)
        assert any(h["degraded_metric"] == 1 for h in degraded)
        worker.wait_until(lambda h: h["status"] == "ok", timeout=30, what="healthy again")
        assert worker.health()["problem"] is None  # type: ignore[index]
        assert metric(worker.metrics(), "scoring_stream_degraded") == 0
        aborted = metric(worker.metrics(), "scoring_stream_aborted_batches_total")
        assert aborted >= 1
        lost, doubled = check_output(own_broker.bootstrap, own_topics, backlog, guarantee)
        assert worker.terminate() == 0, worker.log()
    finally:
        worker.stop()
    first_degraded = min(h["at"] for h in degraded) - cut
    report(
        "drop",
        guarantee,
        lost,
        doubled,
        aborted=aborted,
        degraded_after_s=round(first_degraded, 1),
        recovered_after_s=round(recovered_s, 1),
        problems=sorted({h["problem"] for h in degraded}),
        warnings=warning_lines(worker),
    )


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_200_ms_latency_each_way(
    own_broker: Broker,
    network: FaultProxy,
    own_topics: Topics,
    artifact_dir: Path,
    backlog: Backlog,
    guarantee: str,
    tmp_path: Path,
) -> None:
    worker = start_mid_drain(
        own_broker, network, own_topics, artifact_dir, backlog, guarantee, tmp_path
    )
    try:
        network.latency(LATENCY_MS)
        before = commit_times(worker)
        during = watch(worker, time.monotonic() + LATENCY_S)
        commits, seconds = (b - a for a, b in zip(before, commit_times(worker), strict=True))
        network.forward()
        wait_drained(own_broker.bootstrap, own_topics, worker, timeout=90)
        # Slowed, not stopped: batches commit all along, each after a round trip at
        # least (400 ms; the first may have been partly on the wire before).
        assert commits > 0 and seconds / commits >= 0.3, (commits, seconds)
        aborted = metric(worker.metrics(), "scoring_stream_aborted_batches_total")
        lost, doubled = check_output(own_broker.bootstrap, own_topics, backlog, guarantee)
        assert worker.terminate() == 0, worker.log()
    finally:
        worker.stop()
    report(
        "latency",
        guarantee,
        lost,
        doubled,
        aborted=aborted,
        commits_slowed=int(commits),
        mean_commit_s=round(seconds / commits, 2),
        statuses=sorted({h["status"] for h in during}),
        warnings=warning_lines(worker),
    )


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_every_connection_reset_three_times(
    own_broker: Broker,
    network: FaultProxy,
    own_topics: Topics,
    artifact_dir: Path,
    backlog: Backlog,
    guarantee: str,
    tmp_path: Path,
) -> None:
    worker = start_mid_drain(
        own_broker, network, own_topics, artifact_dir, backlog, guarantee, tmp_path
    )
    resets = []
    try:
        for _ in range(RESETS):
            before = events_in(worker)
            wait_for(lambda: network.connections() > 0, "the worker to reconnect")
            resets.append(network.reset())
            # The next reset once the worker commits again (or, at the end, has drained).
            worker.wait_until(
                lambda h, before=before: (
                    h["events_in"] > before or drained(own_broker.bootstrap, own_topics)
                ),
                timeout=60,
                what="a commit after the reset",
            )
        assert all(resets), f"no connection to reset: {resets}"
        wait_drained(own_broker.bootstrap, own_topics, worker, timeout=90)
        aborted = metric(worker.metrics(), "scoring_stream_aborted_batches_total")
        lost, doubled = check_output(own_broker.bootstrap, own_topics, backlog, guarantee)
        assert worker.terminate() == 0, worker.log()
    finally:
        worker.stop()
    report(
        "reset",
        guarantee,
        lost,
        doubled,
        aborted=aborted,
        reset=resets,
        warnings=warning_lines(worker),
    )


# --- helpers -----------------------------------------------------------------------------


def advertised(bootstrap: str) -> str:
    """The address a client bootstrapped at ``bootstrap`` is told to reach the broker at."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        (node,) = admin.describe_cluster()["brokers"]
    finally:
        admin.close()
    return f"{node['host']}:{node['port']}"


def start_mid_drain(
    broker: Broker,
    proxy: FaultProxy,
    topics: Topics,
    artifact_dir: Path,
    backlog: Backlog,
    guarantee: str,
    log_dir: Path,
) -> ProcessorProcess:
    """A worker bootstrapped at the proxy, once it has committed some of the backlog."""
    events, _, _ = backlog
    produce(broker.bootstrap, topics.input, events)
    options = [*OPTIONS, "--guarantee", guarantee]
    worker = ProcessorProcess(proxy.address, artifact_dir, topics, log_dir, extra=options)
    try:
        # Polled often: at least once, the worker drains thousands of events a second.
        deadline = time.monotonic() + 90
        while (health := worker.health()) is None or health["events_in"] < 1000:
            assert worker.process.poll() is None, f"worker exited:\n{worker.log()}"
            assert time.monotonic() < deadline, f"no 1,000 events in:\n{worker.log()}"
            time.sleep(0.02)
        assert health["events_in"] < BACKLOG // 2, "the backlog drained before the fault"
    except BaseException:
        worker.stop()
        raise
    return worker


def watch(worker: ProcessorProcess, until: float) -> list[dict[str, Any]]:
    """The worker's health (with the time and its degraded gauge) every 0.25 s until then."""
    seen = []
    while time.monotonic() < until:
        health = worker.health()
        if health is not None:
            degraded = metric(worker.metrics(), "scoring_stream_degraded")
            seen.append({**health, "at": time.monotonic(), "degraded_metric": degraded})
        time.sleep(0.25)
    return seen


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def events_in(worker: ProcessorProcess) -> int:
    health = worker.health()
    assert health is not None, f"no /health (exit code {worker.process.poll()}):\n{worker.log()}"
    return int(health["events_in"])


def commit_times(worker: ProcessorProcess) -> tuple[float, float]:
    """How many micro-batches the worker has committed, and the seconds they took."""
    text = worker.metrics()
    name = "scoring_stream_commit_seconds"
    return metric(text, f"{name}_count"), metric(text, f"{name}_sum")


def metric(text: str, name: str) -> float:
    """The value of an unlabelled metric in Prometheus' text format."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name} in:\n{text}")


def progress(bootstrap: str, topics: Topics) -> tuple[list[int], list[int]]:
    """The group's committed offsets of the input topic (-1: none), and the topic's ends."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topics.input, p) for p in range(PARTITIONS)]
        committed = admin.list_group_offsets({topics.group: parts})[topics.group]
        ends = consumer.end_offsets(parts)
        return [committed[tp].offset if tp in committed else -1 for tp in parts], [
            ends[tp] for tp in parts
        ]
    finally:
        consumer.close()
        admin.close()


def drained(bootstrap: str, topics: Topics) -> bool:
    """Whether the group has committed the offsets of the whole input topic."""
    committed, ends = progress(bootstrap, topics)
    return committed == ends


def wait_drained(bootstrap: str, topics: Topics, worker: ProcessorProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not drained(bootstrap, topics):
        assert worker.process.poll() is None, f"worker exited:\n{worker.log()}"
        assert time.monotonic() < deadline, (
            f"not drained in {timeout} s (committed offsets, ends: "
            f"{progress(bootstrap, topics)}; health: {worker.health()}):\n{worker.log()}"
        )
        time.sleep(0.5)


def check_output(
    bootstrap: str, topics: Topics, backlog: Backlog, guarantee: str
) -> tuple[int, int]:
    """Every valid event predicted (once, exactly once) with its score, every refused one
    dead-lettered; returns (lost, doubled) counts."""
    _, valid, refused = backlog
    out = read_all(bootstrap, topics.output, len(valid), timeout=60, settle=1)
    dead = read_all(bootstrap, topics.dlq, len(refused), timeout=30, settle=1)
    by_key = outputs_by_key(out)
    lost = set(valid) - set(by_key)
    doubled = {k for k, predictions in by_key.items() if len(predictions) > 1}
    assert not lost, f"{len(lost)} lost"
    assert set(by_key) == set(valid)
    wrong = {k for k, ps in by_key.items() for p in ps if p["score"] != valid[k]}
    assert not wrong, f"{len(wrong)} scores differ from the artifact's"
    dead_keys = sorted(r.key for r in dead)
    assert set(dead_keys) == refused
    if guarantee == "exactly-once":
        assert not doubled, f"{len(doubled)} doubled"
        assert dead_keys == sorted(refused)
    return len(lost), len(doubled)


def warning_lines(worker: ProcessorProcess) -> list[str]:
    """The worker's warnings and errors, in the order logged."""
    text = worker.log_file.read_text(errors="replace")
    return [line for line in text.splitlines() if re.search(r" (WARNING|ERROR) ", line)]


def report(fault: str, guarantee: str, lost: int, doubled: int, **figures: Any) -> None:
    """The run's figures and the worker's warnings (shown with ``-rP`` or ``-s``)."""
    print(f"{fault} {guarantee}: {BACKLOG} events, {lost} lost, {doubled} doubled")
    for name, value in figures.items():
        if name == "warnings":
            print("  warnings:", *value, sep="\n    ")
        else:
            print(f"  {name}: {value}")
