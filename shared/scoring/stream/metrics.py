"""Prometheus metrics and the health endpoint of the stream processor.

One :class:`StreamMetrics` per processor, on its own registry (two processors in one
process, as in tests, never collide). :func:`serve` exposes ``/metrics`` (Prometheus text
format) and ``/health`` (JSON: status, model, version, assigned partitions) on loopback by
default; the rollout DAG reads ``/health`` to confirm a promotion reached every worker.

The champion's metrics keep their names (``events_out``, ``dead_letters``, ...); a
challenger scored in its shadow has its own, all named ``scoring_stream_shadow_*``, so a
dashboard of the champion never mixes in the challenger's numbers.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["BatchHistogram", "FollowMetrics", "StreamMetrics", "fetch_health", "serve"]

# Seconds; micro-batches take milliseconds, a stalled broker takes seconds.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# Absolute differences between two models' scores of one event (probabilities: 0 to 1).
_DIFFERENCE_BUCKETS = (0.0, 1e-6, 1e-4, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


class BatchHistogram:
    """A Prometheus histogram fed a whole micro-batch per call.

    prometheus_client's Histogram takes one value per call, under a lock: one Python call
    per event on the hot path. This one sorts a batch into the buckets with numpy.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        # A value equal to a bound belongs to that bucket ("le").
        counts = np.bincount(
            np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts)
        )
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts), self._sum
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self._bounds, cumulative, strict=False)]
        buckets.append(("+Inf", int(cumulative[-1])))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class FollowMetrics:
    """A followed model's metrics, one set per path (``scoring_stream``, ``scoring_serve``)."""

    def __init__(self, prefix: str, registry: CollectorRegistry) -> None:
        self.version = Gauge(
            f"{prefix}_model_version",
            "Registry version of the model scoring now",
            ["model"],
            registry=registry,
        )
        self.swaps = Counter(
            f"{prefix}_model_swaps", "Model versions switched to", registry=registry
        )
        self.swap_failures = Counter(
            f"{prefix}_model_swap_failures",
            "Failed attempts to load a newly promoted version",
            registry=registry,
        )
        self.alias_check_failures = Counter(
            f"{prefix}_model_alias_check_failures",
            "Checks of the followed registry alias that failed (registry unreachable or "
            "refusing); the current version stays in use",
            registry=registry,
        )


class StreamMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("scoring_stream_events_in", "Events consumed", registry=r)
        self.events_out = Counter("scoring_stream_events_out", "Predictions produced", registry=r)
        self.dead_letters = Counter(
            "scoring_stream_dead_letters",
            "Events sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.batches = Counter("scoring_stream_batches", "Micro-batches committed", registry=r)
        self.aborts = Counter(
            "scoring_stream_aborted_batches",
            "Micro-batches aborted and re-read after a Kafka error",
            registry=r,
        )
        self.degraded = Gauge(
            "scoring_stream_degraded",
            "1 while micro-batches fail to commit (the reason is on /health), else 0",
            registry=r,
        )
        self.score_seconds = Histogram(
            "scoring_stream_score_seconds",
            "Time to validate and score one micro-batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "scoring_stream_commit_seconds",
            "Time to send one micro-batch's records and commit them with its offsets",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = BatchHistogram(
            "scoring_stream_end_to_end_seconds",
            "From the event's Kafka timestamp to its prediction's commit",
            LATENCY_BUCKETS,
            r,
        )
        self.lag = Gauge(
            "scoring_stream_consumer_lag",
            "Events behind the end of each assigned partition",
            ["partition"],
            registry=r,
        )
        follow = FollowMetrics("scoring_stream", r)
        self.model_version = follow.version
        self.model_swaps = follow.swaps
        self.model_swap_failures = follow.swap_failures
        self.alias_check_failures = follow.alias_check_failures

        # The challenger in the champion's shadow (scoring.stream.shadow).
        self.shadow_predictions = Counter(
            "scoring_stream_shadow_predictions",
            "Challenger predictions produced to the shadow topic",
            registry=r,
        )
        self.shadow_refused = Counter(
            "scoring_stream_shadow_refused",
            "Events the challenger refused, by reason kind (never dead-lettered)",
            ["reason"],
            registry=r,
        )
        self.shadow_failures = Counter(
            "scoring_stream_shadow_failures",
            "Challenger failures, by stage: load (a version that cannot be loaded) or score "
            "(a micro-batch it raised on); the champion is never affected",
            ["stage"],
            registry=r,
        )
        self.shadow_disagreements = Counter(
            "scoring_stream_shadow_disagreements",
            "Events both models scored whose labels differ",
            registry=r,
        )
        self.shadow_score_difference = BatchHistogram(
            "scoring_stream_shadow_score_difference",
            "Absolute difference of the two models' scores, on events both scored",
            _DIFFERENCE_BUCKETS,
            r,
        )
        self.shadow_suspended = Gauge(
            "scoring_stream_shadow_suspended",
            "1 while the shadow topic refuses writes and nothing is scored in the shadow",
            registry=r,
        )
        self.shadow_suspensions = Counter(
            "scoring_stream_shadow_suspensions",
            "Times the shadow was suspended because its topic refused writes",
            registry=r,
        )
        self.shadow_model_version = Gauge(
            "scoring_stream_shadow_model_version",
            "Registry version of the challenger scoring in the shadow now",
            ["model"],
            registry=r,
        )

    def observe_end_to_end(self, done_ms: int, timestamps: Sequence[int]) -> None:
        """One micro-batch's latencies: from each event's timestamp (ms) to ``done_ms``."""
        ages = (done_ms - np.asarray(timestamps, dtype=np.int64)).clip(min=0) / 1000
        self.end_to_end_seconds.observe_many(ages)

    def text(self) -> bytes:
        return generate_latest(self.registry)


def version_number(version: str) -> float:
    """A model version as a gauge's value (0 for a local folder, which has no registry version)."""
    try:
        return float(version)
    except ValueError:
        return 0.0


def serve(
    metrics: StreamMetrics, health: Callable[[], dict[str, Any]], host: str, port: int
) -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/health`` from a daemon thread; ``port=0`` picks a free one."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, metrics.text())
            elif path == "/health":
                state = health()
                # Degraded is still up: it recovers by itself, or exits past its stall limit.
                code = 200 if state["status"] in ("ok", "degraded") else 503
                self._reply(code, "application/json", json.dumps(state).encode())
            else:
                self._reply(404, "text/plain", b"not found: try /metrics or /health\n")

        def _reply(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the processor's own log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def fetch_health(url: str, timeout: float = 2) -> dict[str, Any]:
    """A processor's ``/health`` document; raises OSError (503 while starting) or ValueError."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return dict(json.load(response))
