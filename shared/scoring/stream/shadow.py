"""A challenger scored in the champion's shadow: which version, its records, its counts.

The processor scores every micro-batch with the champion first; then, when a challenger
is loaded, :meth:`Shadow.outgoing` adds the challenger's predictions of the same events
(:func:`scoring.stream.stages.shadow`), which the processor sends in the same transaction
as the champion's records and the input offsets. Nothing here can change the champion's
output: a challenger that cannot be loaded, whose alias names no version, or that raises
while scoring is counted and logged (at most once a minute per kind of failure) and the
micro-batch goes out without shadow records. A shadow topic that refuses writes (deleted,
or denied by an ACL) would fail the whole transaction: after a failed batch with shadow
records the topic is described (:meth:`Shadow.check_topic`), and while it refuses, the
shadow is suspended and the champion's batches go out alone (docs/adr/0009).

A ``models:/NAME@ALIAS`` challenger is followed through its own alias
(:class:`scoring.lifecycle.loading.ModelFollower`, optional): when the alias is set, moved or
deleted, the challenger that scores changes or stops between two micro-batches. Any other
URI is loaded once, at start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException

from scoring.lifecycle.loading import ModelFollower, follows_alias, load_artifact
from scoring.model.artifact import ScoredBatch
from scoring.model.decode import Decoded
from scoring.model.live import LiveModel
from scoring.stream import topics
from scoring.stream.log_limit import LogLimit
from scoring.stream.metrics import StreamMetrics, version_number
from scoring.stream.stages import Batch, ShadowOutgoing, shadow

__all__ = ["Shadow", "no_shadow_health"]

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0


def no_shadow_health() -> dict[str, Any]:
    """The ``/health`` fields of a processor without a shadow."""
    return {
        "shadow_model_name": None,
        "shadow_model_version": None,
        "shadow_predictions": 0,
        "shadow_version_predictions": 0,
        "shadow_refused": 0,
        "shadow_failures": 0,
        "shadow_disagreements": 0,
        "shadow_suspended": None,
    }


class Shadow:
    """The challenger of one processor; call :meth:`start` before and :meth:`stop` after.

    Args:
        uri: the challenger (``models:/NAME@ALIAS``, followed; or a fixed version or folder).
        topic: where its predictions go.
        metrics: the processor's metrics (the ``shadow_*`` ones are fed here).
        threads, poll_s: as for the champion.
        retry_s: while suspended (its topic refused writes), how often the topic is
            checked again.
    """

    def __init__(
        self,
        uri: str,
        topic: str,
        metrics: StreamMetrics,
        threads: int = 1,
        poll_s: float = 10.0,
        retry_s: float = LOG_EVERY_S,
    ) -> None:
        self.uri, self.topic, self.metrics = uri, topic, metrics
        self.threads, self.poll_s, self.retry_s = threads, poll_s, retry_s
        self.model: LiveModel | None = None
        # Why the shadow topic refuses writes, while it does; nothing is scored meanwhile.
        self.suspended: str | None = None
        self._checked_at = 0.0
        self.counts = no_shadow_health()
        self._follower: ModelFollower | None = None
        self._log_limit = LogLimit(LOG_EVERY_S)
        self._lock = threading.Lock()  # load failures are reported from the follower's thread

    def start(self) -> None:
        if follows_alias(self.uri):
            # Loads in its own thread: the champion starts without waiting for it.
            self._follower = ModelFollower(
                self.uri,
                None,
                self.threads,
                self.poll_s,
                on_failure=lambda exc: self._failed("load", exc),
                optional=True,
            )
            return
        try:
            self.use(LiveModel.of(load_artifact(self.uri), self.threads))
        except Exception as exc:  # the champion goes on without a shadow
            self._failed("load", exc)

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()

    def health(self) -> dict[str, Any]:
        return {**self.counts, "shadow_suspended": self.suspended}

    def refresh(self) -> None:
        """Between two micro-batches: take up what the alias names now (or nothing)."""
        if self._follower is not None:
            self.use(self._follower.current)

    def outgoing(
        self,
        batch: Batch,
        decoded: Decoded,
        scored: ScoredBatch,
        champion: LiveModel,
        max_bytes: int,
    ) -> ShadowOutgoing | None:
        """The challenger's part of a micro-batch the champion has scored; never raises."""
        challenger = self.model
        if challenger is None or self.suspended is not None:
            return None
        try:
            now_ms = time.time_ns() // 1_000_000
            out = shadow(
                batch, decoded, scored, champion, challenger, self.topic, max_bytes, now_ms
            )
        except Exception as exc:  # whatever the challenger does, the champion's batch goes
            self._failed("score", exc)
            return None
        if out.refused_scored:
            self._log_limited(
                "refused",
                "the challenger (version %s) refused %d events the champion scored, of %d; "
                "its refusals by kind: %s",
                challenger.version,
                out.refused_scored,
                len(batch),
                dict(Counter(out.refused_kinds)),
            )
        return out

    def count(self, out: ShadowOutgoing) -> None:
        """Count a committed micro-batch's shadow part."""
        metrics, counts = self.metrics, self.counts
        metrics.shadow_predictions.inc(out.predictions)
        for kind, n in Counter(out.refused_kinds).items():
            metrics.shadow_refused.labels(kind).inc(n)
        metrics.shadow_disagreements.inc(out.disagreements)
        metrics.shadow_score_difference.observe_many(out.score_differences)
        counts["shadow_predictions"] += out.predictions
        counts["shadow_version_predictions"] += out.predictions
        counts["shadow_refused"] += len(out.refused_kinds)
        counts["shadow_disagreements"] += out.disagreements

    def check_topic(self, bootstrap: str, kafka: Mapping[str, str]) -> None:
        """Suspend the shadow while its topic refuses writes; resume it once it takes them.

        The topic is described, never written to; a cluster that does not answer changes
        nothing.
        """
        try:
            refusal = topics.refusal(bootstrap, self.topic, kafka)
        except KafkaException as exc:
            log.info("could not check the shadow topic (%s)", exc)
            return
        if refusal is not None:
            self.suspend(refusal)
        else:
            self.resume()

    def suspend(self, reason: str) -> None:
        """Stop adding shadow records: the topic refuses them (see :meth:`due`)."""
        if self.suspended is None:
            self.metrics.shadow_suspensions.inc()
            self.metrics.shadow_suspended.set(1)
            log.warning(
                "shadow suspended: %s; the champion goes on without it, and the topic is "
                "checked again every %.0f s",
                reason,
                self.retry_s,
            )
        else:
            self._log_limited("suspended", "shadow still suspended: %s", reason)
        self.suspended = reason
        self._checked_at = time.monotonic()

    def resume(self) -> None:
        """The topic takes writes again: shadow records from the next micro-batch on."""
        if self.suspended is None:
            return
        log.info("shadow resumed: topic %r takes writes again", self.topic)
        self.metrics.shadow_suspended.set(0)
        self.suspended = None

    def due(self) -> bool:
        """Whether a suspended shadow's topic should be checked again now."""
        return self.suspended is not None and time.monotonic() - self._checked_at >= self.retry_s

    def use(self, model: LiveModel | None) -> None:
        """Score with ``model`` from the next micro-batch on (``None``: no shadow records)."""
        previous = self.model
        if model is previous:
            return
        self.model = model
        if previous is not None:
            self.metrics.shadow_model_version.remove(previous.name)
        if model is not None:
            self.metrics.shadow_model_version.labels(model.name).set(version_number(model.version))
        self.counts["shadow_model_name"] = model.name if model else None
        self.counts["shadow_model_version"] = model.version if model else None
        self.counts["shadow_version_predictions"] = 0
        log.info(
            "shadow %s: version %s -> %s",
            self.uri,
            previous.version if previous else "none",
            model.version if model else "none",
        )

    def _failed(self, stage: str, exc: Exception) -> None:
        self.metrics.shadow_failures.labels(stage).inc()
        with self._lock:
            self.counts["shadow_failures"] += 1
            self._log_limited(
                stage, "shadow %s failed to %s (the champion goes on): %s", self.uri, stage, exc
            )

    def _log_limited(self, kind: str, message: str, *args: object) -> None:
        """Log at most once per ``LOG_EVERY_S`` for each kind, saying how many were left out."""
        admitted, held, _ = self._log_limit.admit(kind)
        if admitted:
            suffix = f" ({held} more like it since the last line)" if held else ""
            log.warning(message + suffix, *args)
