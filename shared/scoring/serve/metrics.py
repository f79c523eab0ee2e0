"""Prometheus metrics of the server, named as the stream worker's (``scoring_serve_*``).

They live on prometheus_client's default registry, the one KServe's ``/metrics`` (on the
REST port) exposes beside its own request histograms: one server per process.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from scoring.stream.metrics import LATENCY_BUCKETS

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
        self.model_version = Gauge(
            "scoring_serve_model_version",
            "Registry version of the model scoring now",
            ["model"],
            registry=r,
        )
        self.model_swaps = Counter(
            "scoring_serve_model_swaps", "Model versions switched to", registry=r
        )
        self.model_swap_failures = Counter(
            "scoring_serve_model_swap_failures",
            "Failed attempts to load a newly promoted version",
            registry=r,
        )
        self.alias_check_failures = Counter(
            "scoring_serve_model_alias_check_failures",
            "Checks of the followed registry alias that failed (registry unreachable or "
            "refusing); the current version keeps serving",
            registry=r,
        )
