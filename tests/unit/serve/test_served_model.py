"""The served model (KServe's ``Model``) on the demo artifact: answers, limits, failures, swaps.

No server: ``predict`` is called as KServe's data plane calls it, on an event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from kserve import InferInput, InferRequest
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferResponse
from prometheus_client import CollectorRegistry
from scoring.dev.demo.data import KEY, generate_day
from scoring.lifecycle.loading import load_artifact
from scoring.model.artifact import Artifact, ScoredBatch, Scorer
from scoring.model.contract import Contract
from scoring.model.live import LiveModel
from scoring.serve.metrics import ServeMetrics
from scoring.serve.model import Limits, Overloaded, RequestTimeout, ServedModel
from scoring.serve.tensors import NO_LABEL, TooLarge, input_types

DAY = date(2026, 11, 2)


@pytest.fixture(scope="module")
def artifact(artifact_dir: Path) -> Artifact:
    return load_artifact(str(artifact_dir))


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    """Demo rows, about one in five breaking the contract (out of range, null, unknown)."""
    table = generate_day(DAY, 60, seed=31, bad_share=0.2)
    # A NaN amount as a null: JSON cannot tell them apart, and a null is what it means.
    amount = pa.array(table.column("amount").to_numpy(), pa.float64(), from_pandas=True)
    return table.set_column(table.column_names.index("amount"), "amount", amount)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def served(live: LiveModel, registry: CollectorRegistry, limits: Limits = Limits()) -> ServedModel:
    model = ServedModel("model", "/models/demo", live, limits, ServeMetrics(registry=registry))
    assert model._follower is None  # a folder: nothing to follow
    return model


def v2_request(table: pa.Table, contract: Contract) -> InferRequest:
    """The rows as a v2 request of JSON tensors (a null stays a null)."""
    inputs = []
    for spec in input_types(contract):
        values = table.column(spec["name"]).to_pylist()
        inputs.append(InferInput(spec["name"], [len(values)], spec["datatype"], values))
    return InferRequest("model", inputs, request_id="request-1")


def v1_request(table: pa.Table) -> dict[str, Any]:
    return {"instances": [{**r, "ds": str(r["ds"])} for r in table.to_pylist()]}


def expected(live: LiveModel, table: pa.Table) -> ScoredBatch:
    return live.scorer.score(table.select(live.scorer.contract.feature_names))


def requests(registry: CollectorRegistry, protocol: str, outcome: str) -> float:
    labels = {"protocol": protocol, "outcome": outcome}
    return registry.get_sample_value("scoring_serve_requests_total", labels) or 0.0


class _Scorer:
    """A stand-in for the artifact's (process-wide, shared) scorer, with another ``score``."""

    def __init__(self, scorer: Scorer, score: Callable[[Any], ScoredBatch]) -> None:
        self.contract, self.score = scorer.contract, score


def slowed(live: LiveModel, seconds: float, started: threading.Event | None = None) -> LiveModel:
    """The same model, whose scorer takes ``seconds`` longer (a slow neighbour, say)."""

    def slow(data: Any) -> ScoredBatch:
        if started is not None:
            started.set()
        time.sleep(seconds)
        return live.scorer.score(data)

    return replace(live, scorer=_Scorer(live.scorer, slow))  # type: ignore[arg-type]


def test_a_v2_request_is_answered_with_the_scorers_bits_and_reasons(
    artifact: Artifact, rows: pa.Table, registry: CollectorRegistry
) -> None:
    live = LiveModel.of(artifact)
    want = expected(live, rows)
    assert 0 < want.rejected < rows.num_rows, "the rows carry contract-breaking ones"

    answer = asyncio.run(served(live, registry).predict(v2_request(rows, artifact.contract)))

    assert isinstance(answer, InferResponse)
    assert (answer.model_name, answer.model_version, answer.id) == ("model", "local", "request-1")
    got = {o.name: o.as_numpy() for o in answer.outputs}
    score = want.score.to_numpy(zero_copy_only=False)
    # Bit for bit, NaN where refused.
    assert got["score"].dtype == np.float64
    assert (
        got["score"].view(np.uint64)[want.valid].tolist()
        == score.view(np.uint64)[want.valid].tolist()
    )
    assert np.isnan(got["score"][~want.valid]).all()
    labels = want.label.fill_null(NO_LABEL).to_pylist()
    assert got["label"].tolist() == labels
    assert [r or None for r in got["reason"].tolist()] == want.reason.to_pylist()
    assert [k or None for k in got["reason_kind"].tolist()] == want.kinds

    n, refused = rows.num_rows, want.rejected
    assert requests(registry, "v2", "ok") == 1
    assert registry.get_sample_value("scoring_serve_rows_in_total") == n
    assert registry.get_sample_value("scoring_serve_predictions_total") == n - refused
    by_kind = {
        kind: registry.get_sample_value("scoring_serve_refused_total", {"reason": kind})
        for kind in set(want.kinds) - {None}
    }
    assert by_kind == {kind: want.kinds.count(kind) for kind in by_kind}
    assert registry.get_sample_value("scoring_serve_score_seconds_count") == 1


def test_a_v1_request_is_answered_record_by_record_with_the_same_bits(
    artifact: Artifact, rows: pa.Table, registry: CollectorRegistry
) -> None:
    live = LiveModel.of(artifact)
    want = expected(live, rows)
    answer = asyncio.run(served(live, registry).predict(v1_request(rows)))

    assert isinstance(answer, dict)
    assert (answer["model_name"], answer["model_version"]) == ("model", "local")
    predictions = answer["predictions"]
    assert [p[KEY] for p in predictions] == rows.column(KEY).to_pylist()
    assert [p["score"] for p in predictions] == want.score.to_pylist()  # None where refused
    assert [p["label"] for p in predictions] == want.label.to_pylist()
    assert [p["reason"] for p in predictions] == want.reason.to_pylist()
    assert [p["reason_kind"] for p in predictions] == want.kinds
    assert requests(registry, "v1", "ok") == 1


@pytest.mark.parametrize(
    ("request_of", "error", "outcome"),
    [
        (lambda rows, contract: InferRequest("model", []), InvalidInput, "invalid"),
        (lambda rows, contract: {"inputs": []}, InvalidInput, "invalid"),
        (lambda rows, contract: v2_request(rows, contract), TooLarge, "too_large"),
        (lambda rows, contract: v1_request(rows), TooLarge, "too_large"),
    ],
    ids=["v2-no-inputs", "v1-no-instances", "v2-too-many-rows", "v1-too-many-rows"],
)
def test_a_refused_request_is_counted_by_why(
    artifact: Artifact,
    rows: pa.Table,
    registry: CollectorRegistry,
    request_of: Callable[[pa.Table, Contract], Any],
    error: type[Exception],
    outcome: str,
) -> None:
    model = served(LiveModel.of(artifact), registry, Limits(max_rows=rows.num_rows - 1))
    payload = request_of(rows, artifact.contract)
    with pytest.raises(error):
        asyncio.run(model.predict(payload))
    protocol = "v2" if isinstance(payload, InferRequest) else "v1"
    assert requests(registry, protocol, outcome) == 1
    assert registry.get_sample_value("scoring_serve_rows_in_total") == 0


def test_a_request_past_its_time_limit_is_answered_as_timed_out(
    artifact: Artifact, rows: pa.Table, registry: CollectorRegistry
) -> None:
    live = slowed(LiveModel.of(artifact), 0.5)
    model = served(live, registry, Limits(timeout_s=0.01))

    async def timed() -> float:
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match=r"longer than 0.01 s \(--timeout\)"):
            # More rows than are scored on the event loop: this one goes to a thread.
            many = pa.concat_tables([rows, rows])
            await model.predict(v2_request(many, artifact.contract))
        return time.monotonic() - started

    # Answered at the limit, while its thread still scores (asyncio.run then waits for it).
    assert asyncio.run(timed()) < 0.4
    assert requests(registry, "v2", "timeout") == 1
    assert requests(registry, "v2", "ok") == 0


def test_requests_past_max_pending_are_answered_overloaded_at_once(
    artifact: Artifact, rows: pa.Table, registry: CollectorRegistry
) -> None:
    model = served(slowed(LiveModel.of(artifact), 0.3), registry, Limits(max_pending=2))
    request = v2_request(rows.slice(0, 1), artifact.contract)

    async def four_at_once() -> list[Any]:
        return await asyncio.gather(
            *(model.predict(request) for _ in range(4)), return_exceptions=True
        )

    answers = asyncio.run(four_at_once())
    assert sum(isinstance(a, Overloaded) for a in answers) == 2
    assert sum(isinstance(a, InferResponse) for a in answers) == 2
    assert requests(registry, "v2", "overloaded") == 2
    assert model._pending == 0  # every request that got in also got out
    answered = asyncio.run(model.predict(request))  # and the server takes requests again
    assert isinstance(answered, InferResponse)


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_an_unexpected_failure_is_an_inference_error_never_a_bare_exception(
    artifact: Artifact,
    rows: pa.Table,
    registry: CollectorRegistry,
    protocol: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(data: Any) -> ScoredBatch:
        raise ZeroDivisionError("a bug")

    plain = LiveModel.of(artifact)
    live = replace(plain, scorer=_Scorer(plain.scorer, broken))  # type: ignore[arg-type]
    part = rows.slice(0, 5)
    payload = v1_request(part) if protocol == "v1" else v2_request(part, artifact.contract)
    with pytest.raises(InferenceError) as caught:
        asyncio.run(served(live, registry).predict(payload))
    assert "scoring failed: ZeroDivisionError: a bug" in str(caught.value)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert requests(registry, protocol, "error") == 1
    assert "scoring a request failed" in caplog.text  # with its traceback, for whoever fixes it


class _Follower:
    """What ServedModel asks of a ModelFollower: the version it loaded (once), and stop."""

    def __init__(self, loaded: LiveModel) -> None:
        self.loaded: LiveModel | None = loaded
        self.takes = 0
        self.stopped = False

    def take(self) -> LiveModel | None:
        self.takes += 1
        taken, self.loaded = self.loaded, None
        return taken

    def stop(self) -> None:
        self.stopped = True


def test_a_new_version_takes_over_between_requests_never_inside_one(
    artifact: Artifact, rows: pa.Table, registry: CollectorRegistry
) -> None:
    started = threading.Event()
    old = slowed(LiveModel("model", "1", artifact.scorer()), 0.3, started)
    new = LiveModel("model", "2", artifact.scorer())
    model = served(old, registry)
    version = {"model": "model"}
    assert registry.get_sample_value("scoring_serve_model_version", version) == 1
    follower = _Follower(new)
    request = v2_request(rows.slice(0, 10), artifact.contract)

    async def swap_while_one_scores() -> tuple[Any, Any, Any]:
        before = asyncio.create_task(model.predict(request))
        assert await asyncio.to_thread(started.wait, 5), "the first request never scored"
        model._follower = follower  # type: ignore[assignment]  # it loaded version 2 meanwhile
        after = await model.predict(request)
        later = await model.predict(request)
        return await before, after, later

    before, after, later = asyncio.run(swap_while_one_scores())

    assert before.model_version == "1"  # its version was the one live when it arrived
    assert (after.model_version, later.model_version) == ("2", "2")
    scores = [{o.name: o.as_numpy() for o in r.outputs}["score"] for r in (before, after, later)]
    assert all(np.array_equal(s, scores[0], equal_nan=True) for s in scores)  # same artifact
    assert registry.get_sample_value("scoring_serve_model_swaps_total") == 1
    assert registry.get_sample_value("scoring_serve_model_version", version) == 2
    assert model.metadata()["versions"] == ["2"]
    assert follower.takes >= 2  # asked at every request; the swap happened once

    model.stop()
    assert follower.stopped and model._follower is None and not model.ready
