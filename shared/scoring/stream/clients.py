"""Every Kafka client the project makes is built here, on confluent-kafka (librdkafka).

The processor, the topic chores (:mod:`scoring.stream.topics`), the rollout's parity gate,
the demo and the local broker's readiness probe all get their Consumer, Producer and
AdminClient from this module, so one mapping of extra client properties (``security.protocol``,
``sasl.*``, ``ssl.*``: librdkafka's names) reaches every connection the same way.

Three layers of properties are merged for each client: the role's defaults, then the
user's extra properties (which may override a default, e.g. ``linger.ms``), then the
properties a guarantee depends on (e.g. ``isolation.level`` of the processor's consumer). A
user property that contradicts one of the last is refused rather than silently dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from scoring.errors import StreamError
from scoring.stream.log_limit import (
    LogLimit,
    LogLimitFilter,
    TransientFilter,
    held_back,
    kind_of,
)

__all__ = [
    "KafkaError",
    "KafkaException",
    "admin",
    "client_config",
    "consumer",
    "error_of",
    "is_fenced",
    "log_error",
    "producer",
]

log = logging.getLogger(__name__)

# Error codes that mean another producer took over this transactional id.
_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED})


def client_config(
    bootstrap: str,
    kafka: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    required: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """librdkafka properties for one client: ``defaults``, then ``kafka``, then ``required``.

    Args:
        bootstrap: ``host:port[,host:port]`` of the cluster.
        kafka: the user's extra client properties (security, SASL, TLS, tuning).
        defaults: this role's defaults; a user property replaces one.
        required: properties a guarantee depends on; a user property may repeat one
            with the same value but not change it.

    Raises:
        StreamError: a user property contradicts a required one.
    """
    extra = {str(k): v for k, v in (kafka or {}).items()}
    for name, value in (required or {}).items():
        if name in extra and str(extra[name]).lower() != str(value).lower():
            raise StreamError(
                f"Kafka property {name}={extra[name]!r} conflicts with {value!r}, which this "
                "client needs for its delivery guarantee; remove it from the client properties."
            )
    if "bootstrap.servers" in extra and not bootstrap:
        bootstrap = str(extra.pop("bootstrap.servers"))
    extra.pop("bootstrap.servers", None)
    if not bootstrap:
        raise StreamError("no Kafka cluster: pass --bootstrap or set KAFKA_BOOTSTRAP_SERVERS")
    return {
        "bootstrap.servers": bootstrap,
        "error_cb": log_error,
        "logger": librdkafka_log,
        **(defaults or {}),
        **extra,
        **(required or {}),
    }


def consumer(
    bootstrap: str,
    kafka: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    required: Mapping[str, Any] | None = None,
) -> Consumer:
    """A confluent-kafka Consumer (see :func:`client_config` for the arguments)."""
    return Consumer(client_config(bootstrap, kafka, defaults, required))


def producer(
    bootstrap: str,
    kafka: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    required: Mapping[str, Any] | None = None,
) -> Producer:
    """A confluent-kafka Producer (see :func:`client_config` for the arguments)."""
    return Producer(client_config(bootstrap, kafka, defaults, required))


def admin(
    bootstrap: str,
    kafka: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> AdminClient:
    """A confluent-kafka AdminClient with the same extra properties as every other client."""
    return AdminClient(client_config(bootstrap, kafka, defaults))


def error_of(exc: BaseException) -> KafkaError | None:
    """The KafkaError a KafkaException carries, if any."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def is_fenced(error: KafkaError | None) -> bool:
    """Whether ``error`` says another producer now owns this transactional id."""
    return error is not None and error.code() in _FENCED


# The same client report is logged at most once in this many seconds.
_QUIET_S = 30.0
_reports = LogLimit(_QUIET_S)

# A broker that has just become a transaction coordinator (a new broker, or one taking over
# from a broker that left) loads its partition of the transaction log before it hands out
# producer ids, and until the cluster's metadata settles a producer may ask another broker.
# Meanwhile a transactional producer's librdkafka logs, at WARNING, and retries:
#   GETPID [rdkafka#producer-2] [thrd:main]: Failed to acquire transactional PID from
#   broker TxnCoordinator/1: Broker: Coordinator load in progress: retrying
# (or "Broker: Not coordinator", "Broker: Coordinator not available"). A new broker's first
# stream worker meets it for a fraction of a second (a few seconds where the log is
# large): INFO. A coordinator still not ready 30 s on is stuck or its broker overloaded,
# and no transaction can begin: WARNING. 30 s is _QUIET_S, so the first repeat the limit
# lets through is the one that warns.
_COORDINATOR_NOT_READY = re.compile(
    r"Failed to acquire \w+ PID from broker .*: Broker: "
    r"(?:Coordinator load in progress|Not coordinator|Coordinator not available): retrying"
)
_coordinator_not_ready = TransientFilter(_COORDINATOR_NOT_READY, persist_s=_QUIET_S)

# librdkafka's own log lines (a refused connection, a lost coordinator) come here rather
# than to stderr, under the same limit as the error reports; a known transient is lowered
# first (the limit would hide the repeats that show it goes on).
librdkafka_log = logging.getLogger("scoring.stream.librdkafka")
librdkafka_log.addFilter(_coordinator_not_ready)
librdkafka_log.addFilter(LogLimitFilter(_reports))


def log_error(error: KafkaError) -> None:
    """Log a client's error report: librdkafka reconnects by itself, so it is not raised.

    While a broker is down its clients report a refused connection every few
    milliseconds; the same report is logged once per ``_QUIET_S`` seconds, with the
    number of repeats left out since.
    """
    if error.fatal():
        log.error("Kafka client: fatal %s", error)
        return
    admitted, repeats, since = _reports.admit(kind_of(str(error)))
    if admitted:
        log.warning("Kafka client: %s%s", error, held_back(repeats, since))
