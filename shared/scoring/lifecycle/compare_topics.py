"""Reading prediction topics for a comparison: a time window, one record per key.

:func:`read_window` reads the records a set of topics committed with a timestamp in a
window, every topic cut at the same moment; :func:`latest_by_key` turns one topic's
records into a ``key``/``score``/``label`` table with each key's last record, ready for
:func:`scoring.lifecycle.compare.pair`. :func:`scoring.lifecycle.compare.read_stream`
puts the two together for the output and shadow topics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from scoring.errors import ConfigError, StreamError

__all__ = ["TopicPredictions", "latest_by_key", "read_window"]

# A record as read from a topic: its value and its headers.
Record = tuple[bytes | None, Sequence[tuple[str, bytes | None]]]


@dataclass(frozen=True)
class TopicPredictions:
    """One topic's predictions in a window, one row per key: the key's last record."""

    table: pa.Table  # key, score, label
    records: int  # records of the window that were kept (before the repeats were dropped)
    repeated: int  # records replaced by a later record of the same key
    other_versions: int  # records of another model version, left out

    def counts(self) -> dict[str, int]:
        return {
            "records": self.records,
            "keys": self.table.num_rows,
            "repeated": self.repeated,
            "other_versions": self.other_versions,
        }


def _header(headers: Sequence[tuple[str, bytes | None]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return None if value is None else value.decode(errors="replace")
    return None


def latest_by_key(
    records: Iterable[Record], key: str, version: str | None = None, topic: str = "the topic"
) -> TopicPredictions:
    """Predictions records (in offset order) as a ``key``/``score``/``label`` table.

    A key seen twice keeps its last record: a producer's retry or a replay after a crash
    must not fail the comparison (:func:`scoring.lifecycle.compare.pair` refuses repeated
    keys). Records whose ``model_version`` header is not ``version`` are left out when
    ``version`` is given.

    Raises:
        ConfigError: A record is not a prediction with ``key``, ``score`` and ``label``.
    """
    from scoring.stream.events import H_MODEL_VERSION

    rows: dict[Any, tuple[float, int]] = {}
    kept = other = 0
    for value, headers in records:
        if version is not None and _header(headers, H_MODEL_VERSION) != version:
            other += 1
            continue
        try:
            prediction = json.loads(value or b"")
            rows[prediction[key]] = (prediction["score"], prediction["label"])
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(
                f"A record of {topic} is not a prediction with the fields {key!r}, 'score' "
                f"and 'label' ({type(exc).__name__}: {exc}); check --key and the topic."
            ) from None
        kept += 1
    keys = list(rows)
    try:
        key_array = pa.array(keys)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        key_array = pa.array([str(k) for k in keys])  # a mix of integer and string keys
    table = pa.table(
        {
            key: key_array,
            "score": pa.array([s for s, _ in rows.values()], pa.float64()),
            "label": pa.array([label for _, label in rows.values()], pa.int64()),
        }
    )
    return TopicPredictions(table, kept, kept - len(rows), other)


def read_window(
    topics: Sequence[str],
    since_ms: int,
    until_ms: int,
    bootstrap: str,
    kafka: Mapping[str, str] | None,
    timeout: float,
) -> dict[str, list[Record]]:
    """The committed records of ``topics`` with a timestamp in ``[since_ms, until_ms]``.

    Each partition is read from the first offset at or after ``since_ms``
    (``offsets_for_times``) up to its end taken before reading starts, for every topic
    at once: records committed while the read goes on are not part of the window, so the
    two topics are cut at the same moment.

    Args:
        topics: The topics to read.
        since_ms: The window's start, epoch milliseconds of the record timestamps.
        until_ms: The window's end, likewise.
        bootstrap: ``host:port`` of the cluster.
        kafka: Extra client properties (security, SASL, TLS).
        timeout: Seconds the read may take.

    Returns:
        Each topic's records in the window, in offset order within a partition.

    Raises:
        StreamError: A topic does not exist, a start offset cannot be found, a partition
            cannot be read, or the read did not reach the window's end in ``timeout``.
    """
    from confluent_kafka import TopicPartition

    from scoring.stream import clients

    consumer = clients.consumer(
        bootstrap,
        kafka,
        defaults={"fetch.wait.max.ms": 50},
        required={
            "group.id": f"scoring-compare-{time.time_ns()}",  # assigned, never committed
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        },
    )
    records: dict[str, list[Record]] = {topic: [] for topic in topics}
    try:
        metadata = consumer.list_topics(timeout=15)
        partitions = []
        for topic in topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                raise StreamError(f"topic {topic!r} does not exist on {bootstrap}")
            partitions += [TopicPartition(topic, p, since_ms) for p in sorted(found.partitions)]
        ends = {
            (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, 15, cached=False)[1]
            for tp in partitions
        }
        starts = consumer.offsets_for_times(partitions, timeout=15)
        for tp in starts:
            if tp.error is not None:
                raise StreamError(f"cannot find {since_ms} in {tp.topic} [{tp.partition}]")
        # Offset -1: nothing in the partition is as recent as the window's start.
        todo = [tp for tp in starts if 0 <= tp.offset < ends[(tp.topic, tp.partition)]]
        left = {(tp.topic, tp.partition) for tp in todo}
        if todo:
            consumer.assign(todo)
        deadline = time.monotonic() + timeout
        while left:
            if time.monotonic() > deadline:
                raise StreamError(
                    f"reading {', '.join(topics)} did not reach the window's end within "
                    f"{timeout:.0f}s ({len(left)} partitions left)"
                )
            for message in consumer.consume(10_000, 0.5):
                where = (message.topic() or "", message.partition() or 0)
                error = message.error()
                if error is not None:
                    if error.code() != clients.KafkaError._PARTITION_EOF:
                        raise StreamError(f"reading {where[0]} [{where[1]}]: {error}")
                    left.discard(where)  # a committed end, possibly after control records
                    continue
                offset = message.offset() or 0
                if where not in left or offset >= ends[where]:
                    left.discard(where)
                    continue
                if offset == ends[where] - 1:
                    left.discard(where)
                stamp = message.timestamp()[1]
                if since_ms <= stamp <= until_ms:
                    headers = list(message.headers() or [])
                    records[where[0]].append((message.value(), headers))  # type: ignore[arg-type]
    finally:
        consumer.close()
    return records
