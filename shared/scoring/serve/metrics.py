"""Prometheus metrics of the server, named as the stream worker's (``scoring_serve_*``).

They live on prometheus_client's default registry, the one KServe's ``/metrics`` (on the
REST port) exposes beside its own request histograms: one server per process.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from scoring.stream.metrics import LATENCY_BUCKETS, FollowMetrics

__all__ = ["ServeMetrics"]


class ServeMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.requests = Counter(
            "scoring_serve_requests",
            "Infer requests answered, by protocol (v1, v2) and outcome (ok, invalid, overloaded, "
            "too_large, timeout, error)",
            ["protocol", "outcome"],
            registry=r,
        )
        self.rows_in = Counter(
            "scoring_serve_rows_in", "Rows received in infer requests", registry=r
        )
        self.predictions = Counter(
            "scoring_serve_predictions", "Rows scored and answered", registry=r
        )
        self.refused = Counter(
            "scoring_serve_refused",
            "Rows answered with a reason instead of a score, by reason kind",
            ["reason"],
            registry=r,
        )
        self.score_seconds = Histogram(
            "scoring_serve_score_seconds",
            "Time to validate and score one request's rows",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        follow = FollowMetrics("scoring_serve", r)
        self.model_version = follow.version
        self.model_swaps = follow.swaps
        self.model_swap_failures = follow.swap_failures
        self.alias_check_failures = follow.alias_check_failures
