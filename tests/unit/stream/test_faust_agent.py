"""The faust agent's records, with faust's topics faked at the send seam (no broker)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import scoring
from scoring.errors import ConfigError
from scoring.stream.events import iso_millis
from scoring.stream.faust_agent import _score, _send


class FakeTopic:
    """Records what is sent; ``send`` returns an awaitable, like faust's FutureMessage."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **record: Any) -> asyncio.Future[None]:
        self.sent.append(record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _event(value: bytes | None, key: bytes | None = b"k", offset: int = 7) -> Any:
    message = SimpleNamespace(
        value=value,
        key=key,
        topic="tx",
        partition=2,
        offset=offset,
        timestamp=1_790_000_000.123,
        headers=[("trace", b"abc")],
    )
    return SimpleNamespace(message=message)


def test_predictions_and_dead_letters_have_the_processors_shape(artifact_dir: Path) -> None:
    model = scoring.load_model(str(artifact_dir))
    events = [_event(b"{not json"), _event(None, key=None)]
    predictions, dead = FakeTopic(), FakeTopic()

    async def run() -> None:
        sent = [
            await _send(e, p, model, predictions, dead)
            for e, p in zip(events, _score(model, events, 1024), strict=True)
        ]
        await asyncio.gather(*sent)

    asyncio.run(run())
    assert predictions.sent == []
    first, second = dead.sent
    assert first["key"] == b"k" and first["value"] == b"{not json"
    headers = dict(first["headers"])
    assert headers["trace"] == b"abc"  # the event's own headers are kept
    assert headers["reason_kind"] == b"not_json" and headers["reason"]
    assert (headers["origin_topic"], headers["origin_partition"], headers["origin_offset"]) == (
        b"tx",
        b"2",
        b"7",
    )
    assert headers["model_version"] == b"local"
    assert second["key"] is None and second["value"] == b""  # Kafka needs a key or a value
    assert dict(second["headers"])["reason_kind"] == b"empty"


def test_a_scored_event_becomes_the_processors_prediction(
    artifact_dir: Path, demo_table: Any
) -> None:
    model = scoring.load_model(str(artifact_dir))
    contract = model.contract
    rows = demo_table.select([contract.key, *contract.feature_names]).to_pylist()
    record = next(r for r, p in zip(rows, model.score_records(rows), strict=True) if not p.refused)
    events = [_event(json.dumps(record).encode())]
    predictions, dead = FakeTopic(), FakeTopic()

    async def run() -> None:
        (prediction,) = _score(model, events, 65536)
        await (await _send(events[0], prediction, model, predictions, dead))

    asyncio.run(run())
    (sent,) = predictions.sent
    value = json.loads(sent["value"])
    assert value["score"] == model.score_records([record])[0].score
    assert value[contract.key] == record[contract.key]
    assert value["event_time"] == iso_millis(1_790_000_000_123)
    assert dict(sent["headers"]) == {"model_name": b"model", "model_version": b"local"}
    assert dead.sent == []


def test_a_topic_that_does_not_deliver_bytes_is_a_clear_error(artifact_dir: Path) -> None:
    model = scoring.load_model(str(artifact_dir))
    with pytest.raises(ConfigError, match='value_serializer="raw"'):
        _score(model, [_event({"a": 1})], 1024)  # type: ignore[arg-type]


def test_fields_outside_the_contract_are_ignored(artifact_dir: Path, demo_table: Any) -> None:
    model = scoring.load_model(str(artifact_dir))
    contract = model.contract
    rows = demo_table.slice(0, 50).select([contract.key, *contract.feature_names]).to_pylist()
    rows += [{**rows[0], "amount": -5.0}, {**rows[0], "amount": None}]  # dead letters
    extras = {
        "ds": "2026-11-07",
        "seen_at": "2026-11-07T10:30:00.123Z",
        "meta": {"source": {"ids": [1, 2, {"deep": None}]}},
        "items": [1, "two", [3.5], {}],
        "big": 10**40,
        "note": None,
    }
    plain = [_event(json.dumps(row).encode(), offset=i) for i, row in enumerate(rows)]
    extended = [
        _event(json.dumps({**extras, **row}).encode(), offset=i) for i, row in enumerate(rows)
    ]

    def sent(events: list[Any]) -> tuple[list[Any], list[Any]]:
        predictions, dead = FakeTopic(), FakeTopic()

        async def run() -> None:
            for event, prediction in zip(events, _score(model, events, 65536), strict=True):
                await (await _send(event, prediction, model, predictions, dead))

        asyncio.run(run())
        scores = [(r["key"], json.loads(r["value"])["score"]) for r in predictions.sent]
        reasons = [dict(r["headers"])["reason"] for r in dead.sent]
        return scores, reasons

    scores, reasons = sent(extended)
    assert (scores, reasons) == sent(plain)
    assert len(scores) == len(rows) - 2 and len(reasons) == 2
