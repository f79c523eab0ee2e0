"""Reading prediction topics for a comparison: each key's last record, pure (no broker)."""

from __future__ import annotations

import json

import pytest
from scoring.errors import ConfigError
from scoring.lifecycle.compare import compare, pair
from scoring.lifecycle.compare_topics import latest_by_key

from tests.unit.lifecycle.test_compare import _predictions, _world


def _record(key: object, score: float, version: str = "2") -> tuple[bytes, list[tuple[str, bytes]]]:
    value = json.dumps({"id": key, "score": score, "label": int(score >= 0.5)}).encode()
    return value, [("model_name", b"fraud"), ("model_version", version.encode())]


def test_latest_by_key_keeps_the_last_record_of_a_key_and_counts_the_repeats() -> None:
    records = [_record("a", 0.1), _record("b", 0.7), _record("a", 0.9), _record("a", 0.8)]
    found = latest_by_key(records, "id")
    table = found.table.to_pydict()
    rows = dict(zip(table["id"], table["score"], strict=True))
    assert rows == {"a": 0.8, "b": 0.7}
    assert found.table.column("label").to_pylist() == [1, 1]
    assert found.counts() == {"records": 4, "keys": 2, "repeated": 2, "other_versions": 0}


def test_latest_by_key_keeps_one_version_when_asked() -> None:
    records = [_record(1, 0.2, "1"), _record(2, 0.3, "2"), _record(3, 0.4, "2"), (b"{}", [])]
    found = latest_by_key(records, "id", version="2")
    assert found.table.column("id").to_pylist() == [2, 3]  # integer keys stay integers
    assert (found.records, found.other_versions) == (2, 2)  # the headerless one is no v2


def test_latest_by_key_refuses_what_is_not_a_prediction() -> None:
    with pytest.raises(ConfigError, match=r"fields 'txn', 'score' and 'label'.*--key"):
        latest_by_key([_record("a", 0.1)], "txn", topic="scores")
    with pytest.raises(ConfigError, match="not a prediction"):
        latest_by_key([(b"not json", [])], "id")


def test_stream_and_batch_pairs_compare_alike() -> None:
    keys, _, champion, challenger = _world(n=300)
    stream = pair(
        latest_by_key([_record(k, s) for k, s in zip(keys, champion, strict=True)], "id").table,
        latest_by_key([_record(k, s) for k, s in zip(keys, challenger, strict=True)], "id").table,
        "id",
    )
    batch = pair(_predictions(keys, champion), _predictions(keys, challenger), "id")
    assert compare(stream)["psi"] == compare(batch)["psi"]
    assert compare(stream)["label_agreement"] == compare(batch)["label_agreement"]
