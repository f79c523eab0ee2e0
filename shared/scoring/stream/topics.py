"""Kafka chores around the processor: topics, producing events, reading results.

The processor, the demo, the rollout's parity gate, the stream benchmark and ``scoring dev
topic`` create topics, produce JSON events and read what a processor committed; they do it
here, one way, with clients from :mod:`scoring.stream.clients` (so the same extra client properties
reach them). Results are always read ``read_committed`` from the beginning: an aborted
micro-batch must never be counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AclOperation, ClusterMetadata, NewTopic

from scoring.errors import StreamError
from scoring.stream import clients

__all__ = [
    "ReadRecord",
    "Reader",
    "create",
    "create_missing",
    "delete",
    "ensure",
    "existing",
    "produce",
    "reader",
    "refusal",
]

log = logging.getLogger(__name__)


def create(
    bootstrap: str,
    names: Sequence[str],
    partitions: int,
    kafka: Mapping[str, str] | None = None,
    replication: int = 1,
    exist_ok: bool = False,
) -> None:
    """Create ``names`` with ``partitions`` partitions each; raises if one cannot be made.

    With ``exist_ok``, a topic that exists already (made meanwhile by another worker) is fine.
    """
    admin = clients.admin(bootstrap, kafka)
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=replication) for n in names],
        operation_timeout=30,
    )
    for name, future in futures.items():
        try:
            future.result(60)
        except KafkaException as exc:
            error = clients.error_of(exc)
            exists = error is not None and error.code() == clients.KafkaError.TOPIC_ALREADY_EXISTS
            if not (exist_ok and exists):
                raise StreamError(f"could not create topic {name!r} on {bootstrap}: {exc}") from exc


def delete(bootstrap: str, names: Sequence[str], kafka: Mapping[str, str] | None = None) -> None:
    """Delete ``names``; a topic that is already gone is fine."""
    admin = clients.admin(bootstrap, kafka)
    for name, future in admin.delete_topics(list(names), operation_timeout=30).items():
        try:
            future.result(60)
        except KafkaException as exc:
            error = clients.error_of(exc)
            if error is None or error.code() != clients.KafkaError.UNKNOWN_TOPIC_OR_PART:
                log.warning("could not delete topic %s: %s", name, exc)


def existing(bootstrap: str, kafka: Mapping[str, str] | None = None) -> dict[str, int]:
    """Every topic on the cluster (internal ones too) and its number of partitions.

    Raises:
        StreamError: no broker answers.
    """
    metadata = _metadata(bootstrap, kafka)
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def create_missing(
    bootstrap: str,
    names: Sequence[str],
    partitions: int,
    kafka: Mapping[str, str] | None = None,
) -> dict[str, int | None]:
    """Create those of ``names`` that do not exist, with ``partitions`` partitions each.

    A topic that exists is left as it is, whatever its number of partitions.

    Returns:
        Each name and its number of partitions before the call (``None``: created now).

    Raises:
        StreamError: no broker answers, or a topic cannot be made.
    """
    found = existing(bootstrap, kafka)
    before = {name: found.get(name) for name in names}
    new = [name for name, count in before.items() if count is None]
    if new:
        create(bootstrap, new, partitions, kafka)
    return before


def ensure(
    bootstrap: str,
    input_topic: str,
    outputs: Sequence[str],
    kafka: Mapping[str, str] | None = None,
) -> None:
    """The input topic must exist; missing output topics get as many partitions as it has.

    Raises:
        StreamError: no broker answers, or the input topic does not exist.
    """
    metadata = _metadata(bootstrap, kafka)
    found = {name: t for name, t in metadata.topics.items() if t.error is None}
    if input_topic not in found:
        # Never made here: only its owner knows how many partitions (workers) it needs.
        raise StreamError(
            f"input topic {input_topic!r} does not exist on {bootstrap}. Create it with a "
            f"partition for each worker you will run: `scoring dev topic create {input_topic} "
            "--partitions 3` on the dev broker (`scoring dev up`), `kafka-topics.sh "
            f"--bootstrap-server {bootstrap} --create --topic {input_topic} --partitions 3` "
            "on another cluster."
        )
    missing = sorted({t for t in outputs if t not in found})
    if not missing:
        return
    replicas = min(3, len(metadata.brokers))
    partitions = len(found[input_topic].partitions)
    create(bootstrap, missing, partitions, kafka, replicas, exist_ok=True)
    log.info("created topics %s", missing)


def _metadata(bootstrap: str, kafka: Mapping[str, str] | None) -> ClusterMetadata:
    try:
        return clients.admin(bootstrap, kafka).list_topics(timeout=15)
    except KafkaException as exc:
        raise StreamError(f"no Kafka broker answers at {bootstrap}: {exc}") from exc


def refusal(
    bootstrap: str, topic: str, kafka: Mapping[str, str] | None = None, timeout: float = 5
) -> str | None:
    """Why ``topic`` would refuse this client's writes (it is gone, or writes are denied),
    or ``None`` if it would take them, as far as the cluster says without writing to it.

    Raises:
        KafkaException: the cluster did not answer (nothing is known either way).
    """
    admin = clients.admin(bootstrap, kafka)
    future = admin.describe_topics(
        TopicCollection([topic]), request_timeout=timeout, include_authorized_operations=True
    )[topic]
    try:
        described = future.result(timeout + 1)
    except KafkaException as exc:
        error = clients.error_of(exc)
        code = error.code() if error is not None else None
        if code == clients.KafkaError.UNKNOWN_TOPIC_OR_PART:
            return f"topic {topic!r} does not exist"
        if code == clients.KafkaError.TOPIC_AUTHORIZATION_FAILED:
            return f"not authorized to describe topic {topic!r}"
        raise
    operations = described.authorized_operations
    # None: the cluster has no authorizer, or did not say; every write is allowed then.
    if operations is not None and not {AclOperation.WRITE, AclOperation.ALL} & set(operations):
        return f"not authorized to write to topic {topic!r}"
    return None


def produce(
    bootstrap: str,
    topic: str,
    events: Iterable[tuple[bytes | None, bytes | None]],
    pace: float = 0.0,
    kafka: Mapping[str, str] | None = None,
    properties: Mapping[str, str | int] | None = None,
) -> int:
    """Send (key, value) events and wait until all are acknowledged; returns how many.

    The producer is idempotent: through a broker's restart, every event is written once.

    ``pace`` seconds of pause after every 100 events turn a burst into a steady stream.
    ``properties`` are librdkafka producer properties for this call (e.g. ``linger.ms``).

    Raises:
        StreamError: an event was not acknowledged.
    """
    failures: list[str] = []

    def failed(error: object, message: object) -> None:
        if error is not None:
            failures.append(str(error))

    producer = clients.producer(
        bootstrap,
        kafka,
        defaults={
            "linger.ms": 5,
            # A request retried after its acknowledgement was lost (a broker that died
            # mid-request) is not written twice.
            "enable.idempotence": True,
            "delivery.report.only.error": True,
            "on_delivery": failed,
            **(properties or {}),
        },
    )
    n = 0
    for key, value in events:
        try:
            producer.produce(topic, value, key)
        except BufferError:
            producer.flush(30)
            producer.produce(topic, value, key)
        n += 1
        if pace and n % 100 == 0:
            producer.poll(0)
            time.sleep(pace)
    left = producer.flush(60)
    if left or failures:
        raise StreamError(
            f"{left + len(failures)} of {n} events to {topic} were not acknowledged"
            + (f" (first error: {failures[0]})" if failures else "")
        )
    return n


@dataclass(frozen=True)
class ReadRecord:
    """One committed record as :class:`Reader` returns it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int


class Reader:
    """A ``read_committed`` reader of every partition of a topic, from the beginning."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def poll(
        self, timeout_ms: int = 500, max_records: int = 10_000
    ) -> dict[tuple[str, int], list[ReadRecord]]:
        """Records that arrived, by (topic, partition); waits up to ``timeout_ms`` for one."""
        messages = self._consumer.consume(1, timeout_ms / 1000)
        if messages:
            messages += self._consumer.consume(max_records - 1, 0)
        out: dict[tuple[str, int], list[ReadRecord]] = {}
        for m in messages:
            if m.error() is not None:
                continue
            record = ReadRecord(
                m.topic() or "",
                m.partition() or 0,
                m.offset() or 0,
                m.key(),
                m.value(),
                list(m.headers() or []),  # type: ignore[arg-type]
                m.timestamp()[1],
            )
            out.setdefault((record.topic, record.partition), []).append(record)
        return out

    def close(self) -> None:
        self._consumer.close()


def reader(
    bootstrap: str,
    topic: str,
    partitions: int,
    kafka: Mapping[str, str] | None = None,
    properties: Mapping[str, str | int] | None = None,
) -> Reader:
    """A ``read_committed`` reader of ``partitions`` partitions of ``topic``, from the start."""
    consumer = clients.consumer(
        bootstrap,
        kafka,
        defaults={"fetch.wait.max.ms": 50, **(properties or {})},
        required={
            "group.id": f"scoring-reader-{time.time_ns()}",  # assigned, never committed
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        },
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    return Reader(consumer)
