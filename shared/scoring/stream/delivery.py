"""How a micro-batch leaves a worker: its producers, its transactions and the commit thread.

The processor's loop (:mod:`scoring.stream.processor`) hands each scored micro-batch to
:meth:`Delivery.send`, which sends it on the commit thread while the loop gathers and
scores the next one, and later asks :meth:`Delivery.outcome` how it ended. Exactly once,
the batch's records and its input offsets are one transaction, and after a failed one
:meth:`Delivery.restart_offsets` says where the group stands; at least once, its records
are sent and flushed, and then :meth:`Delivery.commit_offsets` commits its offsets. Those
two take the loop's consumer and are called on the main thread, the only one that
touches the consumer.

A worker has two transactional producers and uses them in turn. A transaction ends when
the coordinator has decided it (``EndTxn``), but the coordinator writes its markers
afterwards, and until they are written the same transactional id cannot begin the next
one (``CONCURRENT_TRANSACTIONS``): with one producer, every transaction also waited for
the previous one's markers. The next transaction begins only once the previous one is
committed, so output and offsets stay in order (the group coordinator keeps the offset
commit written last). Both transactional ids are stable per worker (``group`` +
``worker``): a restarted worker fences its dead predecessor's two producers and aborts
the open transaction at once instead of waiting for the transaction timeout. See
docs/adr/0003-stream-processor-core.md for the client (confluent-kafka, librdkafka).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import Histogram

from scoring.errors import StreamError
from scoring.stream import clients
from scoring.stream.stages import Batch, Outgoing, Partition, Record

__all__ = [
    "CommitThread",
    "Delivery",
    "Sending",
    "StuckCommit",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Pending:
    """The outcome of a commit not known yet."""


_PENDING = _Pending()


@dataclass
class Sending:
    """A micro-batch whose records (and, exactly once, offsets) are on the commit thread.

    ``deadline`` (``time.monotonic()``): when the commit is given up as stuck.
    ``outcome``: once known, ``None`` for a commit that succeeded, else its error.
    ``offsets_committed``: at-least-once, whether the main thread has committed the
    batch's offsets after the flush. ``sent``: when it was handed to the commit thread.
    """

    batch: Batch
    out: Outgoing
    future: Future[None]
    deadline: float
    outcome: BaseException | _Pending | None = _PENDING
    sent: float = field(default_factory=lambda: time.monotonic())  # when it was handed over
    offsets_committed: bool = False

    def running(self) -> bool:
        """Whether its commit is still running and not past its deadline."""
        return not self.future.done() and time.monotonic() < self.deadline


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


class Delivery:
    """A worker's producers and commit thread: sends micro-batches, one at a time, in order.

    Args:
        bootstrap: ``host:port[,host:port]`` of the cluster.
        kafka: extra librdkafka client properties (security, tuning).
        worker: the worker's id in its group, for the producers' ``client.id``.
        transactional_ids: exactly once, the worker's two transactional ids (used in
            turn, see the module doc); ``None``: at least once, with one plain producer.
        transaction_timeout_ms: how long the broker keeps an open transaction; also
            bounds each call and a batch's whole commit.
        max_message_bytes: the largest input event, which a dead letter carries whole.
        stop: set when the worker stops; a producer that cannot be replaced then fails
            instead of trying again.
        commit_seconds: the histogram of a batch's send-and-commit time.
    """

    def __init__(
        self,
        bootstrap: str,
        kafka: Mapping[str, str],
        *,
        worker: str,
        transactional_ids: tuple[str, ...] | None,
        transaction_timeout_ms: int,
        max_message_bytes: int,
        stop: threading.Event,
        commit_seconds: Histogram,
    ) -> None:
        self.bootstrap, self.kafka, self.worker = bootstrap, kafka, worker
        self.transactional_ids = transactional_ids
        self.exactly_once = transactional_ids is not None
        self.transaction_timeout_ms = transaction_timeout_ms
        self.max_message_bytes = max_message_bytes
        self._stop = stop
        self._commit_seconds = commit_seconds
        # Exactly once, two transactional producers used in turn; at least once, one.
        self._producers: list[Producer] = []
        self._turn = 0  # the producer of the next transaction
        self._cluster_lost = False  # a producer reported every broker down
        self._fatal = False  # a producer reported a fatal error: it can send no more
        self._failed_deliveries: list[clients.KafkaError] = []  # of the batch being sent
        self._sender: CommitThread | None = None
        # When replacing producers or reading the group's offsets stops being tried again
        # (``time.monotonic()``); the processor sets it while its commits fail.
        self.give_up_at: float | None = None

    def start(self) -> None:
        """Start the producers; exactly once, their start fences a predecessor's.

        Raises:
            StreamError: the cluster refused to start them, or another live worker uses
                the same transactional ids.
        """
        try:
            self._producers = [self._new_producer(id_) for id_ in self._producer_ids]
        except clients.KafkaException as exc:
            raise StreamError(f"could not start transactions on {self.bootstrap}: {exc}") from exc

    def send(self, batch: Batch, out: Outgoing, group: object) -> Sending:
        """Send a batch's records and commit its offsets on the commit thread.

        ``group`` is the consumer's group metadata as of the batch's gathering: exactly
        once, offsets sent for it after a rebalance are refused, never misapplied.
        """
        if self._sender is None:
            self._sender = CommitThread()
        future = self._sender.submit(partial(self._send, batch, out, group))
        return Sending(batch, out, future, time.monotonic() + self.commit_deadline_s)

    def outcome(self, sending: Sending) -> BaseException | None:
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
            waited = self.commit_deadline_s
            log.warning("a micro-batch's commit is stuck after %.0f s: new producers", waited)
            if self._sender is not None:
                self._sender.close()
            self._sender = CommitThread()
            self._replace_producers()
            sending.outcome = StuckCommit(f"commit stuck for {waited:.0f} s")
        except Exception as exc:
            sending.outcome = exc
        return sending.outcome

    def abort(self, error: clients.KafkaError | None) -> None:
        """Abort the open transaction, or replace the producer (which aborts it too).

        Only an error that says "abort" is answered with ``abort_transaction``; after a
        timeout or a fatal error the producer is replaced. At least once, what was sent
        stays and the batch is sent again by the same producer, unless it can send no
        more (a fatal error: an idempotence sequence gap, a fenced epoch).
        """
        if not self.exactly_once:
            if self._fatal or (error is not None and error.fatal()):
                log.warning("the producer had a fatal error (%s): starting a new one", error)
                self._replace_producers()
            return
        producer = self._producer
        if error is not None and error.txn_requires_abort() and not error.fatal():
            try:
                _retrying(lambda: producer.abort_transaction(self.call_timeout))
                return
            except clients.KafkaException as exc:
                if clients.is_fenced(clients.error_of(exc)):
                    raise self.fenced() from exc
                log.warning("abort failed (%s); starting a new producer", exc)
        self._replace_producers()

    def commit_offsets(self, consumer: Consumer, sending: Sending, asynchronous: bool) -> None:
        """At-least-once: commit a delivered batch's offsets, once (main thread: its consumer)."""
        if sending.offsets_committed:
            return
        sending.offsets_committed = True
        offsets = _offsets(sending.batch)
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                consumer.commit(offsets=offsets, asynchronous=False)
        except clients.KafkaException as exc:
            # Its events are delivered; they will be read and sent again (at least once).
            log.warning("offsets of a delivered micro-batch not committed (%s)", exc)

    def restart_offsets(
        self, consumer: Consumer, first: dict[Partition, int]
    ) -> dict[Partition, int]:
        """Where to read a failed batch again: its ``first`` offsets, or what the group holds.

        Exactly once, a commit that failed on this side may have been committed by the
        broker all the same (its answer lost, or a call timed out). Once the transaction
        is settled (aborted, or the producer replaced) the group's committed offsets say
        where its output ends; reading from there again sends nothing twice. Called on
        the main thread, which owns ``consumer``.
        """
        if not self.exactly_once:
            return first
        asked = [TopicPartition(t, p) for t, p in first]
        while True:
            try:
                committed = consumer.committed(asked, timeout=self.call_timeout)
                break
            except clients.KafkaException as exc:
                if self._stop.is_set():
                    return first  # stopping: the next start reads the committed offsets
                self._check_give_up(exc)
                log.warning("committed offsets not read yet (%s); trying again", exc)
                time.sleep(1.0)
        known = {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}
        return {**first, **known}

    def renew_after_an_outage(self) -> None:
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

    def fenced(self) -> StreamError:
        """The error of a worker whose producer was fenced: it can commit nothing more."""
        return StreamError(
            f"this worker's transactional ids {self.transactional_ids} were fenced: another "
            "live worker was started with the same --worker (give each its own), or this one "
            "was paused past the transaction timeout "
            f"({self.transaction_timeout_ms / 1000:.0f} s) and the broker aborted its "
            "transaction; its partitions belong to the group's other workers now"
        )

    def close(self, abandon: bool = False) -> None:
        """End the commit thread and flush what the producers still hold.

        ``abandon``: the worker stops on an error; a transaction it left open is aborted
        (best effort, it may be fenced already) rather than left to the transaction
        timeout, which would hold up the partitions' next owner (its offset fetch waits
        for open transactions).
        """
        if self._sender is not None:
            self._sender.close()
        for producer in self._producers:
            if abandon:
                with suppress(clients.KafkaException, RuntimeError):
                    producer.purge()
                if self.exactly_once:
                    with suppress(clients.KafkaException, RuntimeError):
                        producer.abort_transaction(min(5.0, self.call_timeout))
            else:
                producer.flush(10)

    @property
    def call_timeout(self) -> float:
        """Seconds one transactional call may take before the producer is replaced."""
        return min(10.0, self.transaction_timeout_ms / 3000)

    @property
    def commit_deadline_s(self) -> float:
        """How long a batch's commit may run before it is given up as stuck.

        Past the transaction timeout the broker aborts the transaction anyway; every call
        of a healthy commit returns well before (each has :attr:`call_timeout`).
        """
        return self.transaction_timeout_ms / 1000 + self.call_timeout

    # -- on the commit thread -----------------------------------------------------------

    def _send(self, batch: Batch, out: Outgoing, group: object) -> None:
        """Send the batch's records and commit its offsets (on the commit thread)."""
        self._failed_deliveries.clear()
        with self._commit_seconds.time():
            if self.exactly_once:
                self._transact(out.to_send(), _offsets(batch), group)
            else:
                self._deliver(out.to_send())

    def _transact(
        self, records: list[Record], offsets: list[TopicPartition], group: object
    ) -> None:
        """One transaction; once it is committed, the other producer has the next turn."""
        producer = self._producer
        timeout = self.call_timeout
        producer.begin_transaction()
        self._produce(producer, records)
        _retrying(lambda: producer.send_offsets_to_transaction(offsets, group, timeout))
        _retrying(lambda: producer.commit_transaction(timeout))
        producer.poll(0)  # serve failure reports, if any (there are none per success)
        self._turn = (self._turn + 1) % len(self._producers)

    def _deliver(self, records: list[Record]) -> None:
        """At-least-once: send the records and wait until every one is acknowledged."""
        producer = self._producer
        self._produce(producer, records)
        left = producer.flush(self.transaction_timeout_ms / 1000)
        if self._failed_deliveries:
            raise clients.KafkaException(self._failed_deliveries[0])
        if left:
            unacknowledged = f"{left} records not acknowledged"
            raise clients.KafkaException(
                clients.KafkaError(clients.KafkaError._TIMED_OUT, unacknowledged)
            )

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

    # -- the producers ------------------------------------------------------------------

    @property
    def _producer_ids(self) -> tuple[str | None, ...]:
        """Exactly once, the two transactional ids; at least once, one plain producer."""
        return self.transactional_ids if self.transactional_ids is not None else (None,)

    @property
    def _producer(self) -> Producer:
        """The producer whose turn it is (exactly once: of the next transaction)."""
        return self._producers[self._turn]

    def _new_producer(self, transactional_id: str | None) -> Producer:
        required: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
        if transactional_id is not None:
            required["transactional.id"] = transactional_id
            required["transaction.timeout.ms"] = self.transaction_timeout_ms
        producer = clients.producer(
            self.bootstrap,
            self.kafka,
            defaults={
                "client.id": f"scoring-stream-{self.worker}",
                "linger.ms": 2,
                # A transaction that begins before the coordinator has written the
                # markers of this producer's previous one (CONCURRENT_TRANSACTIONS) is
                # retried every 20 ms, as Java's client does (KAFKA-5477), without
                # librdkafka's exponential growth towards 1 s.
                "retry.backoff.ms": 20,
                "retry.backoff.max.ms": 20,
                "message.max.bytes": max(1_048_576, 2 * self.max_message_bytes),
                # The worker made its topics at start; a deleted one is a fault to report,
                # not a topic to make again with the broker's defaults.
                "allow.auto.create.topics": False,
                # Only failures are reported: no Python call per delivered record.
                "delivery.report.only.error": True,
                "on_delivery": self._delivery_failed,
                "error_cb": self._producer_error,
            },
            required=required,
        )
        if transactional_id is not None:
            try:
                producer.init_transactions(self.transaction_timeout_ms / 1000)
            except clients.KafkaException as exc:
                if clients.is_fenced(clients.error_of(exc)):
                    raise self.fenced() from exc
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
                    self._check_give_up(exc)
                    log.warning("no new producer yet (%s); trying again", exc)
                    time.sleep(1.0)
        self._cluster_lost = self._fatal = False

    def _check_give_up(self, exc: Exception) -> None:
        if self.give_up_at is not None and time.monotonic() > self.give_up_at:
            raise StreamError(
                "no micro-batch committed for longer than the stall limit "
                f"(--max-stall-seconds), and no way back to the cluster: {exc}"
            ) from exc

    def _producer_error(self, error: clients.KafkaError) -> None:
        clients.log_error(error)
        if error.code() == clients.KafkaError._ALL_BROKERS_DOWN:
            self._cluster_lost = True
        if error.fatal():
            self._fatal = True

    def _delivery_failed(self, error: Any, message: Any) -> None:
        if error is not None:
            self._failed_deliveries.append(error)


def _offsets(batch: Batch) -> list[TopicPartition]:
    """The offsets to commit for a batch: one past its last event in each partition."""
    return [TopicPartition(t, p, o) for (t, p), o in batch.next_offsets().items()]


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
