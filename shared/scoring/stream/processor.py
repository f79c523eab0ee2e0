"""The stream processor: consume, score, produce and commit, one micro-batch at a time.

Each micro-batch (at most ``batch_size`` events, waiting at most ``batch_wait_ms`` after
the first one) is one Kafka transaction: its predictions, its dead letters and the input
offsets it consumed are committed together (``send_offsets_to_transaction`` with the
consumer's group metadata, KIP-447), so a crash anywhere leaves either all of a batch's
output visible to ``read_committed`` readers and its offsets committed, or none of it.

A worker has two transactional producers and uses them in turn. A transaction ends when
the coordinator has decided it (``EndTxn``), but the coordinator writes its markers
afterwards, and until they are written the same transactional id cannot begin the next
one (``CONCURRENT_TRANSACTIONS``): with one producer, every transaction also waited for
the previous one's markers. The next transaction begins only once the previous one is
committed, so output and offsets stay in order (the group coordinator keeps the offset
commit written last). Both transactional ids are stable per worker (``group`` +
``worker``): a restarted worker fences its dead predecessor's two producers and aborts
the open transaction at once instead of waiting for the transaction timeout. See
docs/adr/0003-stream-processor-core.md for the client (confluent-kafka, librdkafka) and
why not faust's agents.

The work of a batch is in stages (:mod:`scoring.stream.stages`: gather, decode and
validate, score, route); this module wires them to the clients, which it gets from
:mod:`scoring.stream.clients`, and owns the transaction. With ``exactly_once=False`` the
batch is flushed and then its offsets committed (at-least-once: a crash between the two
repeats the batch).

Only the main thread touches the consumer: confluent-kafka serialises calls on one
consumer across threads, so an offset commit made from the commit thread would wait for
the main thread's ``consume()`` to return. At-least-once offsets are therefore committed
by the main thread, once the commit thread has flushed the batch.

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
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from confluent_kafka import Consumer, Producer, TopicPartition

from scoring.errors import ConfigError, StreamError
from scoring.model.artifact import load_artifact
from scoring.model.live import LiveModel, ModelFollower, follows_alias
from scoring.stream import clients, topics
from scoring.stream.kafka_config import KafkaClientConfig, preflight
from scoring.stream.metrics import StreamMetrics, serve, version_number
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

T = TypeVar("T")


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
    # Extra librdkafka client properties (security.protocol, sasl.*, ssl.*, tuning) for
    # every client this worker makes: consumer, producer and admin.
    kafka: Mapping[str, str] = field(default_factory=dict)
    # A challenger scored in the champion's shadow, and the topic of its predictions.
    shadow: str | None = None
    shadow_topic: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_wait_ms < 0 or self.model_poll_s <= 0:
            raise StreamError(
                "batch size must be >= 1, batch wait >= 0 ms and model poll interval > 0 s"
            )
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
        """The worker's two transactional ids, used in turn (see the module doc)."""
        first = f"scoring-stream.{self.group}.{self.worker}"
        return first, f"{first}.1"


class _Pending:
    """The outcome of a commit not known yet."""


_PENDING = _Pending()


@dataclass
class Sending:
    """A micro-batch whose records (and, exactly once, offsets) are on the commit thread.

    ``deadline`` (``time.monotonic()``): when the commit is given up as stuck.
    ``outcome``: once known, ``None`` for a commit that succeeded, else its error.
    ``offsets_committed``: at-least-once, whether the main thread has committed the
    batch's offsets after the flush.
    """

    batch: Batch
    out: Outgoing
    future: Future[None]
    deadline: float
    outcome: BaseException | _Pending | None = _PENDING
    offsets_committed: bool = False


class StuckCommit(Exception):
    """A batch's commit did not return by its deadline; the producers were replaced."""


class CommitThread:
    """One daemon thread that sends and commits micro-batches, one at a time, in order.

    A call inside librdkafka can block past its own timeout (librdkafka issue 5456: a
    request to a coordinator that is never retried once the broker is back). The
    processor then leaves this thread behind and starts another: it is a daemon, so
    one that stays stuck never holds up the process's exit.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], Future[None]] | None] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._work, name="commit", daemon=True).start()

    def submit(self, call: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        self._jobs.put((call, future))
        return future

    def close(self) -> None:
        """The thread ends after the job it is running, if any."""
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                call()
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(None)


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
            )
            if config.shadow and config.shadow_topic
            else None
        )
        self.status = "starting"
        self.assignment = Assignment()
        self.counts = {"events_in": 0, "predictions": 0, "dead_letters": 0, "batches": 0}
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        # Exactly once, two transactional producers used in turn; at least once, one.
        self._producers: list[Producer] = []
        self._turn = 0  # the producer of the next transaction
        self._cluster_lost = False  # a producer reported every broker down
        self._failed_deliveries: list[str] = []
        self._sending: Sending | None = None  # the batch on the commit thread, if any
        self._sender: CommitThread | None = None
        self._last_lag_check = 0.0

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
            try:
                self._producers = [self._new_producer(id_) for id_ in self._producer_ids]
            except clients.KafkaException as exc:
                raise StreamError(
                    f"could not start transactions on {config.bootstrap}: {exc}"
                ) from exc
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
            self._sender = CommitThread()
            try:
                while not self._stop.is_set():
                    if follower is not None:
                        self._swap(follower.take())
                    if self.shadow is not None:
                        self.shadow.refresh()
                    batch = gather(
                        consumer,
                        self.assignment,
                        config.batch_size,
                        config.batch_wait_ms / 1000,
                        self._stop,
                        self._rewind,
                        busy=self._committing,
                    )
                    # While the previous batch commits, this one is decoded and scored.
                    out = self.outgoing(batch) if len(batch) else None
                    if self._sending is not None:
                        committed, self._sending = self._settle(self._sending, batch), None
                        if not committed:
                            continue  # rewound to the failed batch: this one is read again
                    self._renew_producers_after_an_outage()
                    if out is not None:
                        # The group's generation as of this batch's gathering: offsets
                        # sent for it after a rebalance are refused, never misapplied.
                        group = consumer.consumer_group_metadata()
                        future = self._sender.submit(partial(self._send, batch, out, group))
                        deadline = time.monotonic() + self._commit_deadline_s
                        self._sending = Sending(batch, out, future, deadline)
                    self._update_lag()
            finally:
                self.status = "stopping"
                if self._sending is not None:
                    self._settle(self._sending, None, final=True)
                    self._sending = None
                self._sender.close()
                if follower is not None:
                    follower.stop()
                if self.shadow is not None:
                    self.shadow.stop()
                consumer.close()  # leaves the group at once: the partitions move now
                for producer in self._producers:
                    producer.flush(10)
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

    @property
    def _producer_ids(self) -> tuple[str | None, ...]:
        """Exactly once, the two transactional ids; at least once, one plain producer."""
        return self.config.transactional_ids if self.config.exactly_once else (None,)

    @property
    def _producer(self) -> Producer:
        """The producer whose turn it is (exactly once: of the next transaction)."""
        return self._producers[self._turn]

    def _new_producer(self, transactional_id: str | None) -> Producer:
        config = self.config
        required: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
        if transactional_id is not None:
            required["transactional.id"] = transactional_id
            required["transaction.timeout.ms"] = config.transaction_timeout_ms
        producer = clients.producer(
            config.bootstrap,
            config.kafka,
            defaults={
                "client.id": f"scoring-stream-{config.worker}",
                "linger.ms": 2,
                # A transaction that begins before the coordinator has written the
                # markers of this producer's previous one (CONCURRENT_TRANSACTIONS) is
                # retried every 20 ms, as Java's client does (KAFKA-5477), without
                # librdkafka's exponential growth towards 1 s.
                "retry.backoff.ms": 20,
                "retry.backoff.max.ms": 20,
                "message.max.bytes": max(1_048_576, 2 * config.max_message_bytes),
                # Only failures are reported: no Python call per delivered record.
                "delivery.report.only.error": True,
                "on_delivery": self._delivery_failed,
                "error_cb": self._producer_error,
            },
            required=required,
        )
        if transactional_id is not None:
            try:
                producer.init_transactions(config.transaction_timeout_ms / 1000)
            except clients.KafkaException as exc:
                if clients.is_fenced(clients.error_of(exc)):
                    raise StreamError(self._fenced()) from exc
                raise
        return producer

    def _replace_producers(self) -> None:
        """New producers for the same transactional ids; their start aborts an open transaction.

        Both are replaced, not only the one whose call failed: a failure that calls for a
        new producer (a timeout, a fatal error, a stuck call) is the cluster's, and the
        idle producer has seen it too. Tried until the cluster answers: a new client looks
        the transaction coordinator up afresh, which an old one whose coordinator went away
        may never do (librdkafka issues 5456 and 5511).
        """
        for producer in self._producers:
            with suppress(clients.KafkaException, RuntimeError):
                producer.purge()
        for turn, transactional_id in enumerate(self._producer_ids):
            while True:
                try:
                    self._producers[turn] = self._new_producer(transactional_id)
                    break
                except clients.KafkaException as exc:
                    if self._stop.is_set():
                        raise StreamError(f"stopping with no producer: {exc}") from exc
                    log.warning("no new producer yet (%s); trying again", exc)
                    time.sleep(1.0)
        self._cluster_lost = False

    def _producer_error(self, error: clients.KafkaError) -> None:
        clients.log_error(error)
        if error.code() == clients.KafkaError._ALL_BROKERS_DOWN:
            self._cluster_lost = True

    def _renew_producers_after_an_outage(self) -> None:
        """Replace the producers if one lost every broker (between batches: none is in use).

        A producer that lived through an outage can keep a stale coordinator and then
        block in ``send_offsets_to_transaction`` past its timeout (librdkafka issues 5456
        and 5511: a broker restarted while the worker idled left it waiting for good).
        Such a commit would be given up at its deadline; new producers spare the wait.
        Their error reports are served by polling them, which is done here.
        """
        for producer in self._producers:
            producer.poll(0)
        if self._cluster_lost:
            log.warning("a producer lost every broker: starting new producers")
            self._replace_producers()

    def _delivery_failed(self, error: Any, message: Any) -> None:
        if error is not None:
            self._failed_deliveries.append(str(error))

    def _fenced(self) -> str:
        return (
            f"another live worker uses transactional ids {self.config.transactional_ids}: "
            "give every worker of a group its own --worker"
        )

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

    def _send(self, batch: Batch, out: Outgoing, group: object) -> None:
        """Send the batch's records and commit its offsets (on the commit thread)."""
        with self.metrics.commit_seconds.time():
            if self.config.exactly_once:
                self._transact(out.to_send(), _offsets(batch), group)
            else:
                self._deliver(out.to_send())

    def _committing(self) -> bool:
        """Whether a batch is on the commit thread, not finished yet nor past its deadline."""
        sending = self._sending
        return (
            sending is not None
            and not sending.future.done()
            and time.monotonic() < sending.deadline
        )

    @property
    def _commit_deadline_s(self) -> float:
        """How long a batch's commit may run before it is given up as stuck.

        Past the transaction timeout the broker aborts the transaction anyway; every call
        of a healthy commit returns well before (each has :attr:`_call_timeout`).
        """
        return self.config.transaction_timeout_ms / 1000 + self._call_timeout

    def _outcome(self, sending: Sending) -> BaseException | None:
        """Wait for a batch's commit, until its deadline: ``None`` if it succeeded, else why not.

        A commit still running at its deadline is stuck inside the client: the commit
        thread is left to it, and the producers replaced. Exactly once, the new producers'
        start fences the stuck one and settles its transaction (committed or aborted)
        before any other begins; the group's committed offsets then say which.
        """
        if not isinstance(sending.outcome, _Pending):
            return sending.outcome
        try:
            sending.future.result(timeout=max(0.0, sending.deadline - time.monotonic()))
            sending.outcome = None
        except FutureTimeout:
            waited = self._commit_deadline_s
            log.warning("a micro-batch's commit is stuck after %.0f s: new producers", waited)
            assert self._sender is not None
            self._sender.close()
            self._sender = CommitThread()
            self._replace_producers()
            sending.outcome = StuckCommit(f"commit stuck for {waited:.0f} s")
        except Exception as exc:
            sending.outcome = exc
        return sending.outcome

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
        if self._outcome(sending) is None and not self.config.exactly_once:
            self._commit_offsets(sending, asynchronous=False)

    def _settle(self, sending: Sending, following: Batch | None, final: bool = False) -> bool:
        """Wait for a batch's commit; count it, or undo it and rewind.

        Returns False when the batch was aborted: its partitions, and those of the
        ``following`` batch gathered meanwhile (not sent yet), are put back at their first
        offsets, so the next gathering reads both again (with the model of that moment).
        At-least-once, a delivered batch's offsets are committed here: asynchronously, or
        synchronously on the ``final`` batch before the consumer closes.
        """
        batch = sending.batch
        failure = self._outcome(sending)
        if failure is not None:
            error = clients.error_of(failure)
            if clients.is_fenced(error):
                raise StreamError(self._fenced()) from failure
            if not isinstance(failure, clients.KafkaException | StuckCommit):
                raise failure
            self.metrics.aborts.inc()
            log.warning(
                "micro-batch of %d events aborted (%s); reading it again", len(batch), failure
            )
            if not isinstance(failure, StuckCommit):  # a stuck one's producer is replaced
                self._abort(error)
            later = following.first_offsets() if following is not None else {}
            self._rewind(self._restart_offsets({**later, **batch.first_offsets()}))
            time.sleep(0.2)
            return False
        if not self.config.exactly_once:
            self._commit_offsets(sending, asynchronous=not final)
        self._count(batch, sending.out)
        return True

    def _commit_offsets(self, sending: Sending, asynchronous: bool) -> None:
        """At-least-once: commit a delivered batch's offsets (main thread), once."""
        if sending.offsets_committed:
            return
        assert self._consumer is not None
        sending.offsets_committed = True
        offsets = _offsets(sending.batch)
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except clients.KafkaException as exc:
            # Its events are delivered; they will be read and sent again (at least once).
            log.warning("offsets of a delivered micro-batch not committed (%s)", exc)

    def _transact(
        self, records: list[Record], offsets: list[TopicPartition], group: object
    ) -> None:
        """One transaction; once it is committed, the other producer has the next turn."""
        producer = self._producer
        timeout = self._call_timeout
        producer.begin_transaction()
        self._produce(producer, records)
        _retrying(lambda: producer.send_offsets_to_transaction(offsets, group, timeout))
        _retrying(lambda: producer.commit_transaction(timeout))
        producer.poll(0)  # serve failure reports, if any (there are none per success)
        self._turn = (self._turn + 1) % len(self._producers)

    def _deliver(self, records: list[Record]) -> None:
        """At-least-once: send the records and wait until every one is acknowledged."""
        producer = self._producer
        self._failed_deliveries.clear()
        self._produce(producer, records)
        left = producer.flush(self.config.transaction_timeout_ms / 1000)
        if left or self._failed_deliveries:
            failed = self._failed_deliveries[:1] or [f"{left} records not acknowledged"]
            raise clients.KafkaException(clients.KafkaError(clients.KafkaError._FAIL, failed[0]))

    @staticmethod
    def _produce(producer: Producer, records: list[Record]) -> None:
        produce: Callable[..., None] = producer.produce
        for topic, key, value, headers in records:
            while True:
                try:
                    produce(topic, value, key, headers=headers)
                    break
                except BufferError:  # the local queue is full: let it drain, then go on
                    producer.poll(0.05)

    @property
    def _call_timeout(self) -> float:
        """Seconds one transactional call may take before the producer is replaced."""
        return min(10.0, self.config.transaction_timeout_ms / 3000)

    def _abort(self, error: clients.KafkaError | None) -> None:
        """Abort the open transaction, or replace the producer (which aborts it too).

        Only an error that says "abort" is answered with ``abort_transaction``; after a
        timeout or a fatal error the producer is replaced.
        """
        if not self.config.exactly_once:
            return  # at-least-once: what was sent stays; the batch is sent again
        producer = self._producer
        if error is not None and error.txn_requires_abort() and not error.fatal():
            try:
                _retrying(lambda: producer.abort_transaction(self._call_timeout))
                return
            except clients.KafkaException as exc:
                if clients.is_fenced(clients.error_of(exc)):
                    raise StreamError(self._fenced()) from exc
                log.warning("abort failed (%s); starting a new producer", exc)
        self._replace_producers()

    def _restart_offsets(self, first: dict[Partition, int]) -> dict[Partition, int]:
        """Where to read a failed batch again: its ``first`` offsets, or what the group holds.

        Exactly once, a commit that failed on this side may have been committed by the
        broker all the same (its answer lost, or a call timed out). Once the transaction
        is settled (aborted, or the producer replaced) the group's committed offsets say
        where its output ends; reading from there again sends nothing twice.
        """
        if not self.config.exactly_once:
            return first
        assert self._consumer is not None
        asked = [TopicPartition(t, p) for t, p in first]
        while True:
            try:
                committed = self._consumer.committed(asked, timeout=self._call_timeout)
                break
            except clients.KafkaException as exc:
                if self._stop.is_set():
                    return first  # stopping: the next start reads the committed offsets
                log.warning("committed offsets not read yet (%s); trying again", exc)
                time.sleep(1.0)
        known = {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}
        return {**first, **known}

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


def _offsets(batch: Batch) -> list[TopicPartition]:
    """The offsets to commit for a batch: one past its last event in each partition."""
    return [TopicPartition(t, p, o) for (t, p), o in batch.next_offsets().items()]


def _log_failed_commit(error: Any, partitions: list[TopicPartition]) -> None:
    if error is not None:
        log.warning("offset commit failed (%s); those events will be read again", error)


def _retrying(call: Callable[[], T], attempts: int = 5) -> T:
    """``call()``, again while it fails with a retriable error other than a timeout.

    A timed-out call is not repeated: the caller replaces the producer instead.
    """
    for attempt in range(attempts):
        try:
            return call()
        except clients.KafkaException as exc:
            error = clients.error_of(exc)
            retriable = (
                error is not None
                and error.retriable()
                and error.code() != clients.KafkaError._TIMED_OUT
                and not error.fatal()
                and not error.txn_requires_abort()
            )
            if not retriable or attempt == attempts - 1:
                raise
            log.warning("retrying after %s", error)
            time.sleep(min(1.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


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
