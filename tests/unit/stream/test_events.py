"""Prediction records and test events on the Kafka wire (scoring.stream.events)."""

from __future__ import annotations

import json
import math

import orjson
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st
from scoring.stream.events import encode_prediction, iso_millis, to_events


def test_predictions_round_trip_floats_exactly() -> None:
    score = 0.1 + 0.2
    value = encode_prediction(
        "id", "k", score, 1, ("fraud", "3"), iso_millis(1_700_000_000_123), "later"
    )
    parsed = orjson.loads(value)
    assert parsed["score"] == score
    assert parsed["event_time"] == "2023-11-14T22:13:20.123Z"
    assert (parsed["model_name"], parsed["model_version"], parsed["label"]) == ("fraud", "3", 1)
    assert iso_millis(5) == "1970-01-01T00:00:00.005Z"


@given(
    st.sampled_from(["id", "transaction_id", "score", "label"]),
    st.one_of(st.text(min_size=1), st.integers(-(2**63), 2**64 - 1)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.one_of(st.none(), st.integers(0, 9)),
)
def test_predictions_read_as_the_plain_dict_would(
    key_field: str, key: str | int, score: float, label: int | None
) -> None:
    value = encode_prediction(key_field, key, score, label, ("m", "1"), "then", "now")
    expected = {
        key_field: key,
        "score": score,
        "label": label,
        "model_name": "m",
        "model_version": "1",
        "event_time": "then",
        "scored_time": "now",
    }
    parsed = orjson.loads(value)
    assert parsed == expected
    assert math.copysign(1, parsed["score"]) == math.copysign(1, score)  # -0.0 stays


def test_to_events_keys_and_values() -> None:
    table = pa.table({"id": ["a", "b"], "amount": [1.0, math.inf], "age": [1, None], "x": [0, 0]})
    events = list(to_events(table, "id", ["amount", "age"]))
    assert [k for k, _ in events] == [b"a", b"b"]
    assert json.loads(events[0][1]) == {"id": "a", "amount": 1.0, "age": 1}
    assert b"Infinity" in events[1][1]
