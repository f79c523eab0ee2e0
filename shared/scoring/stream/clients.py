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
import threading
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from scoring.errors import StreamError

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


# The same client error is logged at most once in this many seconds.
_QUIET_S = 30.0
_last_logged: dict[str, tuple[float, int]] = {}  # error text: when logged, repeats since
_last_logged_lock = threading.Lock()


def log_error(error: KafkaError) -> None:
    """Log a client's error report: librdkafka reconnects by itself, so it is not raised.

    While a broker is down its clients report a refused connection every few
    milliseconds; the same report is logged once per ``_QUIET_S`` seconds, with the
    number of repeats left out since.
    """
    if error.fatal():
        log.error("Kafka client: fatal %s", error)
        return
    text, now = str(error), time.monotonic()
    with _last_logged_lock:
        logged_at, repeats = _last_logged.get(text, (-_QUIET_S, 0))
        if now - logged_at < _QUIET_S:
            _last_logged[text] = (logged_at, repeats + 1)
            return
        _last_logged[text] = (now, 0)
    if repeats:
        log.warning(
            "Kafka client: %s (and %d times in the last %.0f s)", error, repeats, now - logged_at
        )
    else:
        log.warning("Kafka client: %s", error)
