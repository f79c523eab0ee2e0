"""The stream processor: consume, score, produce and commit, one micro-batch at a time.

Each micro-batch (at most ``batch_size`` events, waiting at most ``batch_wait_ms`` after
the first one) is one Kafka transaction: its predictions, its dead letters and the input
offsets it consumed are committed together (``send_offsets_to_transaction`` with the
consumer's group metadata, KIP-447), so a crash anywhere leaves either all of a batch's
output visible to ``read_committed`` readers and its offsets committed, or none of it.

The work of a batch is in stages (:mod:`scoring.stream.stages`: gather, decode and
validate, score, route); its records and offsets leave through
:mod:`scoring.stream.delivery` (producers, transactions, and the commit thread, which
sends a batch while the next one is gathered and scored). This module wires them together
and decides what a failed commit means: read the batch again from where the group stands,
and, while commits fail, report the worker degraded (:mod:`scoring.stream.progress`).
With ``exactly_once=False`` the batch is flushed and then its offsets committed, by the
main thread: the only one that touches the consumer, since confluent-kafka serialises
calls on one consumer across threads. docs/adr/0003-stream-processor-core.md has why.

A new model version is loaded in a background thread when the registry alias moves, and
takes over between two micro-batches; every prediction carries the version that made it.

With ``shadow`` (a challenger) and ``shadow_topic``, every micro-batch is also scored by
the challenger after the champion's records are built, and the challenger's predictions
go to the shadow topic in the same transaction (:mod:`scoring.stream.shadow`). The
challenger can never change or fail the champion's output; a slow one delays the batch.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from scoring.errors import ConfigError, StreamError
from scoring.lifecycle.loading import ModelFollower, follows_alias, load_artifact
from scoring.model.live import LiveModel
from scoring.stream import clients, topics
from scoring.stream.delivery import Delivery, Sending, StuckCommit
from scoring.stream.kafka_config import KafkaClientConfig, preflight
from scoring.stream.metrics import StreamMetrics, serve, version_number
from scoring.stream.progress import Progress
from scoring.stream.shadow import Shadow, no_shadow_health
from scoring.stream.stages import (
    Assignment,
    Batch,
    Outgoing,
    Partition,
    Record,
    decode_and_validate,
    gather,
    route,
    score,
)

__all__ = [
    "Processor",
    "Record",
    "StreamConfig",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamConfig:
    """What one worker consumes, where it writes, and how it batches."""

    model: str
    input_topic: str
    output_topic: str
    dlq_topic: str
    bootstrap: str
    group: str = "scoring-stream"
    # Unique per live worker of a group and stable across its restarts: it names the
    # worker's transactional ids (see scoring.stream.delivery).
    worker: str = "0"
    exactly_once: bool = True
    batch_size: int = 10_000
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
    # A worker whose micro-batches have failed to commit for this long gives up (exit 4)
    # rather than retry for ever: its supervisor restarts it, or someone looks.
    max_stall_s: float = 300.0
    # Extra librdkafka client properties (security.protocol, sasl.*, ssl.*, tuning) for
    # every client this worker makes: consumer, producer and admin.
    kafka: Mapping[str, str] = field(default_factory=dict)
    # A challenger scored in the champion's shadow, and the topic of its predictions.
    shadow: str | None = None
    shadow_topic: str | None = None
    # While the shadow topic refuses writes, how often it is checked again.
    shadow_retry_s: float = 60.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_wait_ms < 0 or self.model_poll_s <= 0:
            raise StreamError(
                "batch size must be >= 1, batch wait >= 0 ms and model poll interval > 0 s"
            )
        if self.max_stall_s <= 0 or self.shadow_retry_s <= 0:
            raise StreamError("the stall limit and the shadow's retry interval must be > 0 s")
        if bool(self.shadow) != bool(self.shadow_topic):
            raise ConfigError(
                "--shadow and --shadow-topic go together: give the challenger's model URI "
                "and the topic for its predictions, or neither"
            )
        if self.shadow_topic in (self.input_topic, self.output_topic, self.dlq_topic):
            raise ConfigError(
                f"the shadow topic {self.shadow_topic!r} must differ from the input, output "
                "and dead-letter topics: give --shadow-topic a topic of its own"
            )
        if self.start_from not in ("earliest", "latest"):
            raise StreamError(f"start offset must be earliest or latest, not {self.start_from!r}")

    @property
    def transactional_ids(self) -> tuple[str, str]:
        """The worker's two transactional ids, used in turn (see :mod:`scoring.stream.delivery`)."""
        first = f"scoring-stream.{self.group}.{self.worker}"
        return first, f"{first}.1"


class Processor:
    """One worker of the consumer group. :meth:`run` blocks until :meth:`stop` or SIGTERM."""

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.metrics = StreamMetrics()
        self.model: LiveModel | None = None
        self.shadow = (
            Shadow(
                config.shadow,
                config.shadow_topic,
                self.metrics,
                config.ort_threads,
                config.model_poll_s,
                config.shadow_retry_s,
            )
            if config.shadow and config.shadow_topic
            else None
        )
        self.status = "starting"
        self._idle_commit_due = False  # at least once: positions to commit once idle
        self.assignment = Assignment()
        self.counts = {"events_in": 0, "predictions": 0, "dead_letters": 0, "batches": 0}
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._delivery = Delivery(
            config.bootstrap,
            config.kafka,
            worker=config.worker,
            transactional_ids=config.transactional_ids if config.exactly_once else None,
            transaction_timeout_ms=config.transaction_timeout_ms,
            max_message_bytes=config.max_message_bytes,
            stop=self._stop,
            commit_seconds=self.metrics.commit_seconds,
        )
        self._sending: Sending | None = None  # the batch on the commit thread, if any
        self._progress = Progress(
            config.max_stall_s,
            self._delivery.call_timeout,
            self.metrics.degraded,
            self.metrics.aborts,
        )
        self._last_lag_check = 0.0

    def stop(self) -> None:
        """Finish the current micro-batch, commit it, and return from :meth:`run`."""
        self._stop.set()

    def health(self) -> dict[str, Any]:
        model = self.model
        problem = self._progress.problem(self._sending)
        return {
            "status": "degraded" if problem and self.status == "ok" else self.status,
            "problem": problem,
            "model_name": model.name if model else None,
            "model_version": model.version if model else None,
            "group": self.config.group,
            "worker": self.config.worker,
            "assigned": [f"{t}-{p}" for t, p in self.assignment.snapshot()],
            **self.counts,
            **(self.shadow.health() if self.shadow else no_shadow_health()),
        }

    def run(self) -> dict[str, int]:
        config = self.config
        self.model = LiveModel.of(load_artifact(config.model), config.ort_threads)
        self._set_model_metric(None, self.model)
        log.info("scoring with %s version %s", self.model.name, self.model.version)
        with self._serving(), _signals_stop(self):
            # A refused login or TLS handshake fails here, at once and by name; librdkafka
            # itself would retry it quietly until every timeout ran out.
            preflight(KafkaClientConfig(config.bootstrap, config.kafka))
            outputs = [config.output_topic, config.dlq_topic]
            if config.shadow_topic:
                outputs.append(config.shadow_topic)
            topics.ensure(config.bootstrap, config.input_topic, outputs, config.kafka)
            self._delivery.start()
            self._consumer = consumer = self._new_consumer()
            follower = (
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
            if self.shadow is not None:
                self.shadow.start()
            _settle_garbage_collector()
            self.status = "ok"
            self._run_loop(consumer, follower)
        log.info("stopped: %s", self.counts)
        return dict(self.counts)

    def _run_loop(self, consumer: Consumer, follower: ModelFollower | None) -> None:
        """The loop until stopped, then the shutdown, also when the loop raised."""
        ended_by_error = True
        try:
            self._loop(consumer, follower)
            ended_by_error = False
        finally:
            self.status = "stopping"
            self._shut_down(consumer, follower, ended_by_error)

    def _loop(self, consumer: Consumer, follower: ModelFollower | None) -> None:
        config, delivery = self.config, self._delivery
        while not self._stop.is_set():
            if follower is not None:
                self._swap(follower.take())
            if self.shadow is not None:
                self.shadow.refresh()
                if self.shadow.due():
                    self.shadow.check_topic(config.bootstrap, config.kafka)
            batch = gather(
                consumer,
                self.assignment,
                config.batch_size,
                config.batch_wait_ms / 1000,
                self._stop,
                self._rewind,
                busy=self._committing,
            )
            if not len(batch) and self._idle_commit_due and self._sending is None:
                self._commit_when_idle()
            # While the previous batch commits, this one is decoded and scored.
            out = self.outgoing(batch) if len(batch) else None
            if self._sending is not None:
                # Taken off first: if settling raises, the shutdown does not settle it again.
                sending, self._sending = self._sending, None
                if not self._settle(sending, batch):
                    continue  # rewound to the failed batch: this one is read again
            delivery.renew_after_an_outage()
            if out is not None:
                # The group's generation as of this batch's gathering: offsets sent for
                # it after a rebalance are refused, never misapplied.
                group = consumer.consumer_group_metadata()
                self._sending = delivery.send(batch, out, group)
            self._update_lag()

    def _shut_down(
        self, consumer: Consumer, follower: ModelFollower | None, ended_by_error: bool
    ) -> None:
        """Settle the last batch (on a clean stop), then release everything, whatever fails:
        an open transaction is aborted after an error, and the consumer leaves the group at
        once, so its partitions move now rather than after the session timeout."""
        sending, self._sending = self._sending, None
        try:
            if sending is not None and not ended_by_error:
                self._settle(sending, None, final=True)
        except Exception:
            ended_by_error = True
            raise
        finally:
            for name, step in (
                ("follower", follower.stop if follower is not None else None),
                ("shadow", self.shadow.stop if self.shadow is not None else None),
                # An open transaction is aborted before the partitions move: their next
                # owner's offset fetch would wait for it.
                ("producers", lambda: self._delivery.close(abandon=ended_by_error)),
                ("consumer", consumer.close),
            ):
                if step is None:
                    continue
                try:
                    step()
                except Exception as exc:  # the next steps still run
                    log.warning("stopping the %s failed: %s", name, exc)

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

    def _new_consumer(self) -> Consumer:
        config = self.config
        consumer = clients.consumer(
            config.bootstrap,
            config.kafka,
            defaults={
                "client.id": f"scoring-stream-{config.worker}",
                "auto.offset.reset": config.start_from,
                "session.timeout.ms": config.session_timeout_ms,
                "heartbeat.interval.ms": max(1000, config.session_timeout_ms // 4),
                # Hand a fetched event over at once; the broker answers as data arrives.
                "fetch.wait.max.ms": 100,
                # At most 16 MiB fetched ahead (librdkafka's default is 64 MiB), fetched
                # again 10 ms after the queue has room rather than 1 s: a flood of large
                # events peaks 50 MB lower and drains faster (benchmarks/stream.py).
                "queued.max.messages.kbytes": 16_384,
                "fetch.queue.backoff.ms": 10,
                # At-least-once offsets are committed asynchronously: failures are logged.
                "on_commit": _log_failed_commit,
            },
            required={
                "group.id": config.group,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # Eager rebalances: every partition is revoked, and restarts from its
                # committed offset (see stages.gather for the cooperative case too).
                "partition.assignment.strategy": "range",
            },
        )
        consumer.subscribe(
            [config.input_topic],
            on_assign=lambda _, parts: self._assigned(parts),
            on_revoke=lambda _, parts: self._revoked(parts),
            on_lost=lambda _, parts: self._revoked(parts),
        )
        return consumer

    def _assigned(self, partitions: list[TopicPartition]) -> None:
        self._await_commit()
        self.assignment.assigned(_names(partitions))

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        self._await_commit()
        self.assignment.revoked(_names(partitions))
        for _, partition in _names(partitions):
            with suppress(KeyError):
                self.metrics.lag.remove(str(partition))

    # -- one micro-batch ------------------------------------------------------------------

    def outgoing(self, batch: Batch) -> Outgoing:
        """Decode and validate, score, route: what one micro-batch sends.

        The challenger, if any, scores after the champion's records are built.
        """
        model, config = self.model, self.config
        assert model is not None
        started = time.perf_counter()
        decoded = decode_and_validate(batch, model.scorer.contract, config.max_message_bytes)
        scored = score(decoded, model)
        self.metrics.score_seconds.observe(time.perf_counter() - started)
        out = route(
            batch,
            decoded,
            scored,
            model,
            config.output_topic,
            config.dlq_topic,
            time.time_ns() // 1_000_000,
        )
        if self.shadow is None:
            return out
        shadowed = self.shadow.outgoing(batch, decoded, scored, model, config.max_message_bytes)
        return Outgoing(out.records, out.dead_kinds, shadowed)

    def _committing(self) -> bool:
        """Whether a batch is on the commit thread, not finished yet nor past its deadline."""
        sending = self._sending
        return sending is not None and sending.running()

    def _await_commit(self) -> None:
        """Let the batch on the commit thread finish before partitions move.

        A partition's new position (here or on another worker) is read from its committed
        offset: it must already include that batch's offsets, or its events would be
        read again and sent twice. At-least-once, the batch's offsets are committed here
        (synchronously) once it is flushed. Success or failure is handled later by
        :meth:`_settle`.
        """
        sending = self._sending
        if sending is None:
            return
        if self._delivery.outcome(sending) is None and not self.config.exactly_once:
            assert self._consumer is not None
            self._delivery.commit_offsets(self._consumer, sending, asynchronous=False)

    def _settle(self, sending: Sending, following: Batch | None, final: bool = False) -> bool:
        """Wait for a batch's commit; count it, or undo it and rewind.

        Returns False when the batch was aborted: its partitions, and those of the
        ``following`` batch gathered meanwhile (not sent yet), are put back at their first
        offsets, so the next gathering reads both again (with the model of that moment).
        At-least-once, a delivered batch's offsets are committed here: asynchronously, or
        synchronously on the ``final`` batch before the consumer closes.
        """
        batch, consumer = sending.batch, self._consumer
        assert consumer is not None
        failure = self._delivery.outcome(sending)
        if failure is not None:
            error = clients.error_of(failure)
            if clients.is_fenced(error):
                raise self._delivery.fenced() from failure
            if not isinstance(failure, clients.KafkaException | StuckCommit):
                raise failure
            self._failed(sending, failure)
            if not isinstance(failure, StuckCommit):  # a stuck one's producer is replaced
                self._delivery.abort(error)
            if self.shadow is not None and sending.out.shadow is not None:
                # A shadow topic that refuses writes fails the whole transaction.
                self.shadow.check_topic(self.config.bootstrap, self.config.kafka)
            later = following.first_offsets() if following is not None else {}
            first = {**later, **batch.first_offsets()}
            self._rewind(self._delivery.restart_offsets(consumer, first))
            time.sleep(0.2)
            return False
        if not self.config.exactly_once:
            self._delivery.commit_offsets(consumer, sending, asynchronous=not final)
            self._idle_commit_due = True
        self._recovered()
        self._count(batch, sending.out)
        return True

    def _failed(self, sending: Sending, failure: BaseException) -> None:
        """A batch failed to commit: degraded, and past the stall limit, give up."""
        # Replacing producers and reading offsets stop trying when the limit runs out.
        self._delivery.give_up_at = self._progress.failed(sending, failure)
        log.warning(
            "micro-batch of %d events aborted (%s); reading it again", len(sending.batch), failure
        )

    def _recovered(self) -> None:
        failed_for = self._progress.committed()
        if failed_for is not None:
            log.info("micro-batches commit again after %.0f s", failed_for)
            self._delivery.give_up_at = None

    def _commit_when_idle(self) -> None:
        """At least once, once idle: commit where every held partition stands, synchronously.

        An asynchronous commit whose request was lost (a connection reset under it) is never
        answered; under traffic the next one makes it good, but an idle worker would leave
        its group's offsets behind for good (lag, events read again after a restart).
        """
        consumer = self._consumer
        assert consumer is not None
        self._idle_commit_due = False
        held = [TopicPartition(t, p) for t, p in self.assignment.snapshot()]
        try:
            positions = [tp for tp in consumer.position(held) if tp.offset >= 0]
            if positions:
                consumer.commit(offsets=positions, asynchronous=False)
        except clients.KafkaException as exc:
            log.warning("offsets not committed while idle (%s); trying at the next batch", exc)

    def _rewind(self, first: dict[Partition, int]) -> None:
        """Put partitions back to ``first`` offsets, those this worker still holds."""
        assert self._consumer is not None
        held = set(self.assignment.snapshot())
        for (topic, partition), offset in first.items():
            if (topic, partition) not in held:
                continue
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except clients.KafkaException as exc:
                # Not fetching yet (just assigned): it starts from its committed offset,
                # which is where the seek would have put it.
                log.info("no seek on %s-%d (%s)", topic, partition, exc)

    def _count(self, batch: Batch, out: Outgoing) -> None:
        done_ms = time.time_ns() // 1_000_000
        self.metrics.observe_end_to_end(done_ms, batch.timestamps)
        for kind in out.dead_kinds:
            self.metrics.dead_letters.labels(kind).inc()
        n = len(batch)
        self.metrics.events_in.inc(n)
        self.metrics.events_out.inc(out.predictions)
        self.metrics.batches.inc()
        self.counts["events_in"] += n
        self.counts["predictions"] += out.predictions
        self.counts["dead_letters"] += len(out.dead_kinds)
        self.counts["batches"] += 1
        if self.shadow is not None and out.shadow is not None:
            self.shadow.count(out.shadow)

    # -- between batches --------------------------------------------------------------------

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
        self.metrics.model_version.labels(model.name).set(version_number(model.version))

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_check < 1.0 or self._consumer is None:
            return
        self._last_lag_check = now
        held = [TopicPartition(t, p) for t, p in self.assignment.snapshot()]
        try:
            positions = self._consumer.position(held)
        except clients.KafkaException:
            return
        for tp in positions:
            # Cached from the last fetch: no request to the broker.
            _, end = self._consumer.get_watermark_offsets(tp, cached=True)
            if end >= 0 and tp.offset >= 0:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, end - tp.offset))


def _names(partitions: list[TopicPartition]) -> list[Partition]:
    return [(tp.topic, tp.partition) for tp in partitions]


def _log_failed_commit(error: Any, partitions: list[TopicPartition]) -> None:
    if error is not None:
        log.warning("offset commit failed (%s); those events will be read again", error)


def _settle_garbage_collector() -> None:
    """Keep the cyclic collector off the hot loop, when this worker owns the process.

    A micro-batch allocates a dict or tuple per event and field, which made the
    collector run every few events and, in its older generations, walk every object the
    libraries loaded (a batch of 8,000 events decoded about 40% slower). The start-up
    objects are moved out of its reach and it runs about thirty times less often; a
    batch's objects hold no cycles and are freed by reference counting anyway. An embedding
    application (not the main thread) keeps its own settings.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


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
