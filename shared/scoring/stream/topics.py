"""Kafka client chores around the processor: topics, producing events, reading results.

The demo, the rollout's parity gate, the stream benchmark and the tests all create
topics, produce JSON events and read what a processor committed; they do it here, one
way. Results are always read ``read_committed`` from the beginning: an aborted micro-batch
must never be counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

__all__ = ["create", "produce", "reader"]


def create(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    """Create ``names`` with ``partitions`` partitions each (one replica: a local broker)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
    finally:
        admin.close()


def produce(
    bootstrap: str,
    topic: str,
    events: Iterable[tuple[bytes | None, bytes | None]],
    pace: float = 0.0,
    **config: Any,
) -> int:
    """Send (key, value) events and wait until all are acknowledged; returns how many.

    ``pace`` seconds of pause after every 100 events turn a burst into a steady stream.
    """
    producer = KafkaProducer(bootstrap_servers=bootstrap, **{"linger_ms": 5, **config})
    n = 0
    try:
        for key, value in events:
            producer.send(topic, key=key, value=value)
            n += 1
            if pace and n % 100 == 0:
                time.sleep(pace)
        producer.flush()
    finally:
        producer.close()
    return n


def reader(bootstrap: str, topic: str, partitions: int, **config: Any) -> KafkaConsumer:
    """A ``read_committed`` consumer of every partition of ``topic``, from the beginning."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        **config,
    )
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    return consumer
