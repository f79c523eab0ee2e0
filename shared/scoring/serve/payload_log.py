"""The payload log: every prediction the server returns, written to a Kafka topic.

Each row is one record in exactly the stream worker's prediction shape (the Kafka key,
:func:`scoring.stream.events.prediction_encoder`'s value, the ``model_name`` and
``model_version`` headers), so what reads the stream's output topic (``scoring model
compare --output-topic``, the rollout's evidence) reads served traffic too. ``event_time``
is when the request arrived (the stream writes the event's Kafka timestamp there).

A request never waits for Kafka: :meth:`PayloadLog.offer` hands its rows to librdkafka's
queue, whose size is the bound, and a row that does not fit is dropped and counted. A
daemon thread serves the delivery reports. Every offered row ends up counted exactly once:
sent, dropped (by reason), failed (by the Kafka error's name) or still queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from scoring.masking import SecretsFilter, masked
from scoring.stream import clients
from scoring.stream.events import H_MODEL_NAME, H_MODEL_VERSION, iso_millis, prediction_encoder
from scoring.stream.kafka_config import KafkaClientConfig
from scoring.stream.log_limit import LogLimit, held_back

__all__ = ["PayloadLog"]

log = logging.getLogger(__name__)

# How often the background thread wakes to see whether it should stop.
_POLL_S = 0.2

# One warning per kind of trouble this often: a broker that is down fails every record.
_QUIET_S = 30.0


class PayloadLog:
    """A non-blocking writer of scored rows to one topic, with its counts and metrics.

    Thread-safe: :meth:`offer` may be called from many threads at once.

    Args:
        topic: The topic to write to; it must exist (the log does not create it).
        kafka: The cluster and its client properties (``--kafka-config``).
        key_field: The contract's key field, the name the key has in the record's value.
        max_queue: Records librdkafka may hold unsent; beyond it rows are dropped.
        registry: Where the ``scoring_serve_log_*`` metrics are registered.

    Raises:
        StreamError: A client property contradicts idempotence or ``acks=all``.
        KafkaException: librdkafka refused the client properties. An unreachable broker
            is not an error here: its records fail later and are counted.
    """

    def __init__(
        self,
        topic: str,
        kafka: KafkaClientConfig,
        key_field: str,
        max_queue: int = 100_000,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.topic = topic
        self._encode = prediction_encoder(key_field)
        self._mask = SecretsFilter(kafka.secrets()).mask
        self._lock = threading.Lock()  # the counts, and ``closed`` against a late produce
        self._closed = False
        self._accepted = self._sent = 0
        self._dropped: Tally[str] = Tally()
        self._failed: Tally[str] = Tally()
        self._last_error: str | None = None
        self._limit = LogLimit(_QUIET_S)

        # The producer first: properties it refuses leave no metrics registered.
        self._producer = clients.producer(
            kafka.bootstrap,
            kafka.properties,
            defaults={
                "client.id": "scoring-serve-log",
                "linger.ms": 5,  # batches a burst of requests; a request never waits on it
                "queue.buffering.max.messages": max_queue,
                "message.timeout.ms": 30_000,
                # A deleted topic is a fault to report, not one to remake with broker defaults.
                "allow.auto.create.topics": False,
                "on_delivery": self._delivered,
                "error_cb": self._client_error,
            },
            # No duplicate on a retry, nothing lost when a partition's leader moves.
            required={"enable.idempotence": True, "acks": "all"},
        )
        self._records = Counter(
            "scoring_serve_log_records", "Predictions delivered to the log topic", registry=registry
        )
        self._drops = Counter(
            "scoring_serve_log_dropped",
            "Predictions not queued for the log topic, by reason (queue_full, closed, error)",
            ["reason"],
            registry=registry,
        )
        self._failures = Counter(
            "scoring_serve_log_failures",
            "Predictions Kafka did not acknowledge, by the client's error name",
            ["reason"],
            registry=registry,
        )
        queue = Gauge(
            "scoring_serve_log_queue", "Predictions waiting to be delivered", registry=registry
        )
        queue.set_function(lambda: self.health()["queued"])

        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="payload-log", daemon=True)
        self._poller.start()
        log.info("payload log: predictions go to %s at %s", topic, kafka.describe())

    def offer(
        self,
        keys: Sequence[str | int],
        scores: Sequence[float],
        labels: Sequence[int | None],
        model: tuple[str, str],
        event_ms: int,
        scored_ms: int,
    ) -> None:
        """Queue one request's scored rows; never blocks, never raises.

        A row that does not fit is dropped and counted: ``queue_full`` (librdkafka's queue
        holds ``max_queue`` records), ``closed`` (after :meth:`close`) or ``error`` (a row
        that cannot be encoded or that librdkafka refuses, e.g. too large).
        """
        dropped: Tally[str] = Tally()
        error: str | None = None
        with self._lock:  # held across produce() so that close() never misses a record
            if self._closed:
                dropped["closed"] = len(keys)
            elif not len(keys) == len(scores) == len(labels):
                dropped["error"] = max(len(keys), len(scores), len(labels))
                error = f"rows of unequal lengths: {len(keys)}, {len(scores)}, {len(labels)}"
            else:
                event_time, scored_time = iso_millis(event_ms), iso_millis(scored_ms)
                headers: list[tuple[str, str | bytes | None]] = [
                    (H_MODEL_NAME, model[0].encode()),
                    (H_MODEL_VERSION, model[1].encode()),
                ]
                for key, score, label in zip(keys, scores, labels, strict=True):
                    try:
                        value = self._encode(
                            key,
                            float(score),
                            None if label is None else int(label),
                            model,
                            event_time,
                            scored_time,
                        )
                        self._producer.produce(
                            self.topic, value, str(key).encode(), headers=headers
                        )
                        self._accepted += 1
                    except BufferError:
                        dropped["queue_full"] += 1
                    except Exception as exc:  # a row we cannot send must not fail the request
                        dropped["error"] += 1
                        error = self._mask(f"{type(exc).__name__}: {exc}")
            self._dropped.update(dropped)
            if error is not None:
                self._last_error = error
        for reason, count in dropped.items():
            self._drops.labels(reason).inc(count)
            detail = error if reason == "error" else None
            self._warn(f"dropped {count} predictions ({reason})", reason, detail)

    def health(self) -> dict[str, Any]:
        """For the server's ready detail: topic, queued, sent, dropped, failed, last_error.

        ``last_error`` (the latest delivery or client error, or None) has secrets masked.
        """
        with self._lock:
            return {
                "topic": self.topic,
                "queued": self._accepted - self._sent - self._failed.total(),
                "sent": self._sent,
                "dropped": self._dropped.total(),
                "failed": self._failed.total(),
                "last_error": None if self._last_error is None else masked(self._last_error),
            }

    def close(self, timeout: float = 30.0) -> dict[str, Any]:
        """Flush what is queued, stop the background thread, return the final :meth:`health`.

        Records still unconfirmed after ``timeout`` seconds are purged and counted as
        failed (``purge_queue``, ``purge_inflight``). Idempotent; later offers are dropped
        as ``closed``. Call it from a shutdown hook, not a signal handler: it waits for an
        offer in progress.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            first, self._closed = not self._closed, True
        if first:
            self._stop.set()
            self._poller.join(timeout)
            if self._producer.flush(max(0.0, deadline - time.monotonic())):
                self._producer.purge(in_queue=True, in_flight=True, blocking=True)
                self._producer.flush(1.0)  # the purged records' reports count them as failed
            close = getattr(self._producer, "close", None)  # confluent-kafka 2.12 and later
            if close is not None and not len(self._producer):
                close()
            log.info("payload log to %s closed: %s", self.topic, self.health())
        return self.health()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.poll(_POLL_S)
            except Exception:  # a bug in a callback must not end the delivery reports
                log.exception("payload log: serving delivery reports failed")

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            with self._lock:
                self._sent += 1
            self._records.inc()
            return
        reason = error.name().lstrip("_").lower()
        text = self._mask(error.str())
        with self._lock:
            self._failed[reason] += 1
            self._last_error = text
        self._failures.labels(reason).inc()
        self._warn("a prediction was not delivered", reason, text)

    def _client_error(self, error: KafkaError) -> None:
        clients.log_error(error)  # the project's rate-limited report of client errors
        with self._lock:
            self._last_error = self._mask(error.str())

    def _warn(self, what: str, reason: str, detail: str | None) -> None:
        admitted, repeats, since = self._limit.admit(reason)
        if admitted:
            suffix = f": {detail}" if detail else ""
            log.warning(
                "payload log to %s: %s%s%s", self.topic, what, suffix, held_back(repeats, since)
            )
