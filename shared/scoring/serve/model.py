"""The served model: KServe's ``Model`` around the artifact every other path scores.

Each request is scored by one model version, the one live when it arrived: a promotion
the follower loaded in the background takes over between requests, never inside one,
and a registry outage leaves the loaded version serving. A large request is read and
scored on a worker thread (onnxruntime and Arrow release the GIL), so it cannot hold up
the event loop that answers the health endpoints, and past its time limit it is answered
504 while its thread finishes; a small one costs about a millisecond on the loop. Every
failure is answered with a status that says what happened; a bad row is never a failure
(it is answered with its reason).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from grpc_interceptor.exceptions import DeadlineExceeded, Unavailable
from kserve import Model
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from scoring.api import Prediction, predictions
from scoring.lifecycle.loading import ModelFollower, follows_alias
from scoring.model.contract import Contract
from scoring.model.decode import decode_records
from scoring.model.live import LiveModel
from scoring.serve.batching import Batcher
from scoring.serve.metrics import ServeMetrics
from scoring.serve.payload_log import PayloadLog
from scoring.serve.tensors import (
    NO_LABEL,
    Served,
    TooLarge,
    input_types,
    output_types,
    outputs,
    read_instances,
    read_v2,
)
from scoring.stream.metrics import version_number

__all__ = ["Limits", "Overloaded", "RequestTimeout", "ServedModel"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# Rows up to which a request is read and answered on the event loop.
_SMALL = 200


@dataclass(frozen=True)
class Limits:
    """What one request may ask: rows, body bytes (checked before it is read), seconds."""

    max_rows: int = 10_000
    max_bytes: int = 8 * 1024 * 1024
    timeout_s: float = 10.0
    batch_rows: int = 1_000  # concurrent requests' rows scored in one call; 0: each alone
    max_pending: int = 256  # requests being read or scored at once; more: 503 at once


class RequestTimeout(DeadlineExceeded):
    """A request still scoring after its time limit: 504 on REST, DEADLINE_EXCEEDED on gRPC."""


class Overloaded(Unavailable):
    """More requests than ``max_pending`` in the server: 503 on REST, UNAVAILABLE on gRPC.

    Refusing at once keeps the queue, and so every answered request's wait, bounded; a
    client's retry (or the load balancer's next replica) does better than a timeout.
    """


class ServedModel(Model):
    """One artifact served under ``name``; follows ``uri`` when it names a registry alias."""

    def __init__(
        self,
        name: str,
        uri: str,
        live: LiveModel,
        limits: Limits,
        metrics: ServeMetrics,
        payload_log: PayloadLog | None = None,
        threads: int = 1,
        poll_s: float = 10.0,
    ) -> None:
        super().__init__(name)
        self.uri, self.limits, self.metrics, self.payload_log = uri, limits, metrics, payload_log
        self._live = live
        self.batcher = Batcher(limits.batch_rows)
        self._pending = 0  # requests in predict(); only the event loop's thread changes it
        self._swap_lock = threading.Lock()
        self._follower: ModelFollower | None = None
        if follows_alias(uri):
            self._follower = ModelFollower(
                uri,
                live,
                threads,
                poll_s,
                on_failure=lambda _: metrics.model_swap_failures.inc(),
                on_check_failure=lambda _: metrics.alias_check_failures.inc(),
            )
        metrics.model_version.labels(live.name).set(version_number(live.version))
        self.ready = True

    @property
    def live(self) -> LiveModel:
        """The version scoring now, after taking any version the follower loaded."""
        if self._follower is not None:
            with self._swap_lock:
                taken = self._follower.take()
                if taken is not None:
                    log.info(
                        "serving %s version %s (was %s)",
                        taken.name,
                        taken.version,
                        self._live.version,
                    )
                    self._live = taken
                    self.metrics.model_swaps.inc()
                    self.metrics.model_version.labels(taken.name).set(version_number(taken.version))
        return self._live

    def get_input_types(self) -> list[dict[str, Any]]:
        return input_types(self._live.scorer.contract)

    def get_output_types(self) -> list[dict[str, Any]]:
        return output_types(self._live.scorer.contract)

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata, with the version serving now in ``versions``."""
        return {
            "name": self.name,
            "versions": [self.live.version],  # taking a newly loaded one: a rollout waits on it
            "platform": "onnx",
            "inputs": self.get_input_types(),
            "outputs": self.get_output_types(),
        }

    async def predict(
        self, payload: InferRequest | Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> InferResponse | dict[str, Any]:
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        if self._pending >= self.limits.max_pending:
            self.metrics.requests.labels(protocol, "overloaded").inc()
            raise Overloaded(
                f"{self._pending} requests are being scored (--max-pending); try again shortly"
            )
        live = self.live  # this request's version, whatever the follower does meanwhile
        outcome = "error"
        self._pending += 1
        try:
            answer = await asyncio.wait_for(
                self._answer(live, payload, time.time()), self.limits.timeout_s
            )
            outcome = "ok"
            return answer
        except TimeoutError:
            outcome = "timeout"
            raise RequestTimeout(
                f"the request took longer than {self.limits.timeout_s:g} s (--timeout); send "
                "fewer rows per request"
            ) from None
        except TooLarge:
            outcome = "too_large"
            raise
        except InvalidInput:
            outcome = "invalid"
            raise
        except Exception as exc:  # never a bare 500 with a reset connection
            log.exception("scoring a request failed")
            raise InferenceError(f"scoring failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._pending -= 1
            self.metrics.requests.labels(protocol, outcome).inc()

    async def _answer(
        self, live: LiveModel, payload: InferRequest | Mapping[str, Any], received: float
    ) -> InferResponse | dict[str, Any]:
        contract = live.scorer.contract
        # A large request is read and answered on a worker thread, so that it cannot hold
        # up the event loop (the health checks, the other requests); for a small one the
        # hop would cost more than the work.
        if isinstance(payload, InferRequest):
            large = _rows_of(payload) > _SMALL
            rows = await _run(large, read_v2, payload, contract, self.limits.max_rows)
            started = time.perf_counter()
            scored = await self.batcher.score(live, rows.batch)
            served = Served.of(rows.keys, scored, contract)
        else:
            if not isinstance(payload, Mapping):
                raise InvalidInput('send a JSON object: {"instances": [...]} or {"inputs": [...]}')
            records = read_instances(payload, self.limits.max_rows)
            large = len(records) > _SMALL
            decoded = await _run(large, decode_records, records, contract)
            started = time.perf_counter()
            scored = await self.batcher.score(live, decoded.batch)
            served = _served(predictions(live, decoded, scored), contract)
        self.metrics.score_seconds.observe(time.perf_counter() - started)
        self._count(served, live, received)
        if isinstance(payload, InferRequest):
            return InferResponse(
                response_id=payload.id or uuid.uuid4().hex,
                model_name=self.name,
                model_version=live.version,
                infer_outputs=outputs(served),
            )
        return await _run(large, _v1_answer, self.name, live, served, contract.key)

    def _count(self, served: Served, live: LiveModel, received: float) -> None:
        n, refused = len(served.keys), [k for k in served.kinds if k]
        self.metrics.rows_in.inc(n)
        self.metrics.predictions.inc(n - len(refused))
        for kind in refused:
            self.metrics.refused.labels(kind).inc()
        if self.payload_log is not None and len(refused) < n:
            scored = [i for i, reason in enumerate(served.reasons) if reason is None]
            self.payload_log.offer(
                [served.keys[i] for i in scored],  # type: ignore[misc]  # scored rows have keys
                served.scores[scored].tolist(),
                served.labels[scored].tolist()
                if served.labels is not None
                else [None] * len(scored),
                (live.name, live.version),
                int(received * 1000),
                int(time.time() * 1000),
            )

    def stop(self) -> None:
        """Stop following the alias (KServe calls it on shutdown; so does the server)."""
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        super().stop()


def _served(found: list[Prediction], contract: Contract) -> Served:
    """A v1 request's predictions (:func:`scoring.api.predictions`) as a :class:`Served`."""
    scores = np.array([p.score if p.score is not None else np.nan for p in found], np.float64)
    labels = None
    if contract.output.task == "binary_classification":
        labels = np.array([NO_LABEL if p.label is None else p.label for p in found], np.int64)
    return Served(
        [p.key for p in found],
        scores,
        labels,
        [p.reason for p in found],
        [p.reason_kind for p in found],
    )


def _v1_answer(name: str, live: LiveModel, served: Served, key_field: str) -> dict[str, Any]:
    """KServe v1's answer: one record per row, holding the key, with nulls where refused."""
    labels = served.labels if served.labels is not None else [None] * len(served.keys)
    return {
        "model_name": name,
        "model_version": live.version,
        "predictions": [
            {
                key_field: key,
                "score": None if reason else float(score),
                "label": None if reason or label is None else int(label),
                "reason": reason,
                "reason_kind": kind,
            }
            for key, score, label, reason, kind in zip(
                served.keys, served.scores, labels, served.reasons, served.kinds, strict=True
            )
        ],
    }


def _rows_of(request: InferRequest) -> int:
    shape = request.inputs[0].shape if request.inputs else [0]
    return math.prod(shape) if shape else 0


async def _run(large: bool, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)``: here when small, on a worker thread when large."""
    if not large:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(None, work, *args)
