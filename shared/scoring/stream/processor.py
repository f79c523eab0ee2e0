"""The stream processor: consume, score, produce and commit, one micro-batch at a time.

Each micro-batch (at most ``batch_size`` events, waiting at most ``batch_wait_ms`` after
the first one) is one Kafka transaction: its predictions, its dead letters and the input
offsets it consumed are committed together (``send_offsets_to_transaction`` with the
consumer's group metadata, KIP-447), so a crash anywhere leaves either all of a batch's
output visible to ``read_committed`` readers and its offsets committed, or none of it.
The transactional id is stable per worker (``group`` + ``worker``): a restarted worker
fences its dead predecessor and aborts its open transaction at once instead of waiting for
the transaction timeout. See docs/adr/0003-stream-processor-core.md for why this core is
built on kafka-python rather than faust's agents.

With ``exactly_once=False`` the batch is flushed and then its offsets committed
(at-least-once: a crash between the two repeats the batch).

A new model version is loaded in a background thread when the registry alias moves, and
takes over between two micro-batches; every prediction carries the version that made it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, ProducerFencedError
from kafka.structs import OffsetAndMetadata

from scoring.errors import StreamError
from scoring.model.artifact import load_artifact
from scoring.model.live import LiveModel, ModelFollower, follows_alias
from scoring.stream.events import Refused, decode, encode_prediction, iso_millis
from scoring.stream.metrics import StreamMetrics, serve

__all__ = ["Processor", "StreamConfig"]

log = logging.getLogger(__name__)

# Header names on predictions and dead letters.
H_MODEL_NAME = "model_name"
H_MODEL_VERSION = "model_version"
H_REASON = "reason"
H_REASON_KIND = "reason_kind"
H_ORIGIN_TOPIC = "origin_topic"
H_ORIGIN_PARTITION = "origin_partition"
H_ORIGIN_OFFSET = "origin_offset"


# (topic, key, value, headers) of one record to send.
Message = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]


@dataclass(frozen=True)
class StreamConfig:
    """What one worker consumes, where it writes, and how it batches."""

    model: str
    input_topic: str
    output_topic: str
    dlq_topic: str
    bootstrap: str
    group: str = "scoring-stream"
    # Unique per live worker of a group and stable across its restarts (see module doc).
    worker: str = "0"
    exactly_once: bool = True
    batch_size: int = 500
    # 0: take what has arrived; under load batches still grow (the next one gathers
    # while this one commits), at low rates nothing waits.
    batch_wait_ms: int = 0
    model_poll_s: float = 10.0
    max_message_bytes: int = 64 * 1024
    ort_threads: int = 1
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    start_from: str = "earliest"
    session_timeout_ms: int = 10_000
    transaction_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_wait_ms < 0 or self.model_poll_s <= 0:
            raise StreamError(
                "batch size must be >= 1, batch wait >= 0 ms and model poll interval > 0 s"
            )
        if self.start_from not in ("earliest", "latest"):
            raise StreamError(f"start offset must be earliest or latest, not {self.start_from!r}")

    @property
    def transactional_id(self) -> str:
        return f"scoring-stream.{self.group}.{self.worker}"


class Processor:
    """One worker of the consumer group. :meth:`run` blocks until :meth:`stop` or SIGTERM."""

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.metrics = StreamMetrics()
        self.model: LiveModel | None = None
        self.status = "starting"
        self._stop = threading.Event()
        self._revoked: set[TopicPartition] = set()
        self._assigned: set[TopicPartition] = set()
        self._producer: KafkaProducer | None = None
        self._last_lag_check = 0.0
        self.counts = {"events_in": 0, "predictions": 0, "dead_letters": 0, "batches": 0}

    def stop(self) -> None:
        """Finish the current micro-batch, commit it, and return from :meth:`run`."""
        self._stop.set()

    def health(self) -> dict[str, Any]:
        model = self.model
        return {
            "status": self.status,
            "model_name": model.name if model else None,
            "model_version": model.version if model else None,
            "group": self.config.group,
            "worker": self.config.worker,
            "assigned": sorted(f"{tp.topic}-{tp.partition}" for tp in self._assigned),
            **self.counts,
        }

    def run(self) -> dict[str, int]:
        config = self.config
        artifact = load_artifact(config.model)
        self.model = LiveModel.of(artifact, config.ort_threads)
        self._set_model_metric(None, self.model)
        log.info("scoring with %s version %s", self.model.name, self.model.version)
        with self._serving(), _signals_stop(self):
            self._ensure_topics()
            consumer = self._consumer()
            self._producer = self._new_producer()
            watcher = (
                ModelFollower(
                    config.model,
                    self.model,
                    config.ort_threads,
                    config.model_poll_s,
                    on_failure=lambda _: self.metrics.model_swap_failures.inc(),
                    on_check_failure=lambda _: self.metrics.alias_check_failures.inc(),
                )
                if follows_alias(config.model)
                else None
            )
            self.status = "ok"
            try:
                while not self._stop.is_set():
                    if watcher is not None:
                        self._swap(watcher.take())
                    records = self._poll(consumer)
                    if records:
                        self._process_or_rewind(consumer, records)
                    self._update_lag(consumer)
            finally:
                self.status = "stopping"
                if watcher is not None:
                    watcher.stop()
                consumer.close(autocommit=False)
                self._producer.close(timeout=10)
        log.info("stopped: %s", self.counts)
        return dict(self.counts)

    # -- set-up ---------------------------------------------------------------------

    @contextmanager
    def _serving(self) -> Iterator[None]:
        if self.config.metrics_port is None:
            yield
            return
        server = serve(
            self.metrics, self.health, self.config.metrics_host, self.config.metrics_port
        )
        log.info("metrics and health on http://%s:%d/", *server.server_address[:2])
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()

    def _ensure_topics(self) -> None:
        """The input topic must exist; the output and dead-letter topics are created alike."""
        config = self.config
        try:
            admin = KafkaAdminClient(bootstrap_servers=config.bootstrap, request_timeout_ms=10_000)
        except KafkaError as exc:
            raise StreamError(f"no Kafka broker answers at {config.bootstrap}: {exc!r}") from exc
        try:
            topics = {t["name"]: t for t in admin.describe_topics() if not t["error_code"]}
            if config.input_topic not in topics:
                raise StreamError(
                    f"input topic {config.input_topic!r} does not exist on {config.bootstrap}"
                )
            partitions = len(topics[config.input_topic]["partitions"])
            brokers = len(admin.describe_cluster()["brokers"])
            missing = [
                NewTopic(t, num_partitions=partitions, replication_factor=min(3, brokers))
                for t in {config.output_topic, config.dlq_topic}
                if t not in topics
            ]
            if missing:
                admin.create_topics(missing)
                log.info("created topics %s", [t.name for t in missing])
        finally:
            admin.close()

    def _consumer(self) -> KafkaConsumer:
        config = self.config
        consumer = KafkaConsumer(
            bootstrap_servers=config.bootstrap,
            group_id=config.group,
            client_id=f"scoring-stream-{config.worker}",
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset=config.start_from,
            max_poll_records=config.batch_size,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(1000, config.session_timeout_ms // 4),
        )
        consumer.subscribe([config.input_topic], listener=_Rebalance(self))
        return consumer

    def _new_producer(self) -> KafkaProducer:
        config = self.config
        producer = KafkaProducer(
            bootstrap_servers=config.bootstrap,
            client_id=f"scoring-stream-{config.worker}",
            transactional_id=config.transactional_id if config.exactly_once else None,
            transaction_timeout_ms=config.transaction_timeout_ms,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            # A transaction that begins right after the last commit can meet the
            # coordinator still writing markers; retry that soon, not after 100 ms.
            retry_backoff_ms=20,
            batch_size=256 * 1024,
            max_request_size=max(1_048_576, 2 * config.max_message_bytes),
        )
        if config.exactly_once:
            try:
                producer.init_transactions()
            except ProducerFencedError as exc:
                producer.close(timeout=0)
                raise StreamError(self._fenced()) from exc
        return producer

    def _fenced(self) -> str:
        return (
            f"another live worker uses transactional id {self.config.transactional_id!r}: "
            "give every worker of a group its own --worker"
        )

    # -- the loop ---------------------------------------------------------------------

    def _poll(self, consumer: KafkaConsumer) -> list[ConsumerRecord]:
        """One micro-batch: waits up to 0.5 s for a first event, then ``batch_wait_ms`` more."""
        size = self.config.batch_size
        batch: list[ConsumerRecord] = []
        deadline = None
        while len(batch) < size and not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = 500 if deadline is None else (deadline - now) * 1000
            polled = consumer.poll(timeout_ms=int(wait), max_records=size - len(batch))
            fresh = [record for records in polled.values() for record in records]
            if self._revoked:
                # A rebalance ran inside poll(). A partition kept across it keeps its
                # position, which is past the records this batch already holds: put every
                # partition back where the batch started and begin the batch again.
                self._revoked.clear()
                self._rewind(consumer, batch + fresh)
                batch, deadline = [], None
                continue
            batch.extend(fresh)
            if batch and deadline is None:
                deadline = time.monotonic() + self.config.batch_wait_ms / 1000
            elif not batch:
                break
        return batch

    def _process_or_rewind(self, consumer: KafkaConsumer, records: list[ConsumerRecord]) -> None:
        try:
            self._process(consumer, records)
        except ProducerFencedError as exc:
            raise StreamError(self._fenced()) from exc
        except KafkaError as exc:
            self.metrics.aborts.inc()
            log.warning("micro-batch of %d events aborted (%r); re-reading it", len(records), exc)
            self._abort()
            self._rewind(consumer, records)
            time.sleep(0.5)

    def _process(self, consumer: KafkaConsumer, records: list[ConsumerRecord]) -> None:
        messages, dead = self.route(records)
        producer, config = self._producer, self.config
        assert producer is not None
        if config.exactly_once:
            producer.begin_transaction()
        for topic, key, value, headers in messages:
            producer.send(topic, value=value, key=key, headers=headers)
        offsets = {}
        for record in records:
            offsets[TopicPartition(record.topic, record.partition)] = OffsetAndMetadata(
                record.offset + 1, "", -1
            )
        if config.exactly_once:
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            producer.commit_transaction()
        else:
            producer.flush()
            consumer.commit(offsets)

        done_ms = time.time_ns() // 1_000_000
        for record in records:
            self.metrics.end_to_end_seconds.observe(max(0, done_ms - record.timestamp) / 1000)
        for kind in dead:
            self.metrics.dead_letters.labels(kind).inc()
        n = len(records)
        self.metrics.events_in.inc(n)
        self.metrics.events_out.inc(n - len(dead))
        self.metrics.batches.inc()
        self.counts["events_in"] += n
        self.counts["predictions"] += n - len(dead)
        self.counts["dead_letters"] += len(dead)
        self.counts["batches"] += 1

    def route(self, records: list[ConsumerRecord]) -> tuple[list[Message], list[str]]:
        """Score a micro-batch: the messages to send, in input order, and dead-letter kinds."""
        assert self.model is not None
        config, model = self.config, self.model
        started = time.perf_counter()
        decoded = decode(
            [r.value for r in records], model.scorer.contract, config.max_message_bytes
        )
        scored = model.scorer.score(decoded.batch)
        self.metrics.score_seconds.observe(time.perf_counter() - started)

        refused: dict[int, Refused] = {r.index: r for r in decoded.refused}
        scores, labels = scored.score.to_pylist(), scored.label.to_pylist()
        reasons = scored.reason.to_pylist()
        for row, index in enumerate(decoded.rows):
            if not scored.valid[row]:
                refused[index] = Refused(index, scored.kinds[row] or "invalid", reasons[row])
        row_of = {index: row for row, index in enumerate(decoded.rows)}

        key_field = model.scorer.contract.key
        identity = (model.name, model.version)
        version_headers = [
            (H_MODEL_NAME, model.name.encode()),
            (H_MODEL_VERSION, model.version.encode()),
        ]
        scored_time = iso_millis(time.time_ns() // 1_000_000)
        messages: list[Message] = []
        dead: list[str] = []
        for index, record in enumerate(records):
            problem = refused.get(index)
            if problem is not None:
                messages.append(self._dead_letter(record, problem, version_headers))
                dead.append(problem.kind)
                continue
            row = row_of[index]
            value = encode_prediction(
                key_field,
                decoded.keys[row],
                scores[row],
                labels[row],
                identity,
                iso_millis(record.timestamp),
                scored_time,
            )
            messages.append((config.output_topic, record.key, value, version_headers))
        return messages, dead

    def _dead_letter(
        self,
        record: ConsumerRecord,
        problem: Refused,
        version_headers: list[tuple[str, bytes]],
    ) -> Message:
        headers = [
            *(record.headers or []),
            (H_REASON, problem.reason.encode()),
            (H_REASON_KIND, problem.kind.encode()),
            (H_ORIGIN_TOPIC, record.topic.encode()),
            (H_ORIGIN_PARTITION, str(record.partition).encode()),
            (H_ORIGIN_OFFSET, str(record.offset).encode()),
            *version_headers,
        ]
        log.debug(
            "dead letter %s-%d@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            problem.reason,
        )
        # Kafka needs a key or a value; a keyless empty event is forwarded as b"".
        value = record.value if record.value is not None or record.key is not None else b""
        return (self.config.dlq_topic, record.key, value, headers)

    def _abort(self) -> None:
        """Abort the open transaction; a producer in a fatal state is replaced."""
        if not self.config.exactly_once:
            return  # at-least-once: what was sent stays; the batch is sent again
        assert self._producer is not None
        try:
            self._producer.abort_transaction()
            return
        except ProducerFencedError as exc:
            raise StreamError(self._fenced()) from exc
        except KafkaError as exc:
            log.warning("abort failed (%r); starting a new producer", exc)
        self._producer.close(timeout=0)
        self._producer = self._new_producer()  # init_transactions aborts the old one

    def _rewind(self, consumer: KafkaConsumer, records: list[ConsumerRecord]) -> None:
        first: dict[TopicPartition, int] = {}
        for record in records:
            first.setdefault(TopicPartition(record.topic, record.partition), record.offset)
        assigned = consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                consumer.seek(tp, offset)

    def _swap(self, model: LiveModel | None) -> None:
        if model is None:
            return
        previous, self.model = self.model, model
        self._set_model_metric(previous, model)
        self.metrics.model_swaps.inc()
        log.info(
            "model %s: version %s -> %s",
            model.name,
            previous.version if previous else "-",
            model.version,
        )

    def _set_model_metric(self, previous: LiveModel | None, model: LiveModel) -> None:
        if previous is not None and previous.name != model.name:
            self.metrics.model_version.remove(previous.name)
        try:
            number = float(model.version)
        except ValueError:
            number = 0.0  # a local folder has no registry version
        self.metrics.model_version.labels(model.name).set(number)

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._last_lag_check < 1.0:
            return
        self._last_lag_check = now
        for tp in self._assigned:
            end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = consumer.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if position is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, end - position))


class _Rebalance(ConsumerRebalanceListener):
    """Tracks the assignment; marks revoked partitions so an open batch drops them."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.processor._revoked.update(revoked)
        self.processor._assigned.difference_update(revoked)
        for tp in revoked:
            with suppress(KeyError):
                self.processor.metrics.lag.remove(str(tp.partition))
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.processor._assigned.update(assigned)
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))


@contextmanager
def _signals_stop(processor: Processor) -> Iterator[None]:
    """SIGTERM and SIGINT finish the current batch and stop (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        log.info("signal %d: finishing the current batch and stopping", signum)
        processor.stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
