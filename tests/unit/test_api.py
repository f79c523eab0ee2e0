"""The public API (``import scoring``): the jobs' scorer, behind a small typed surface."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import scoring
from scoring.errors import ConfigError
from scoring.lifecycle.loading import load_artifact
from scoring.lifecycle.registry import ModelVersionInfo
from scoring.model.contract import CONTRACT_FILE, Contract
from scoring.stream.events import to_events


def test_import_scoring_is_light_and_exports_the_api() -> None:
    code = (
        "import sys, scoring; heavy = {'pyspark', 'onnxruntime', 'mlflow', 'pyarrow', 'pandas'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert set(scoring.__all__) == {
        "Model",
        "Prediction",
        "ScoredBatch",
        "ScoringError",
        "load_model",
    }
    for name in scoring.__all__:
        assert getattr(scoring, name) is not None
    with pytest.raises(AttributeError):
        _ = scoring.not_a_name  # type: ignore[attr-defined]


def _rows(table: pa.Table, contract: Contract) -> list[dict[str, Any]]:
    return table.select([contract.key, *contract.feature_names]).to_pylist()


def test_records_score_bit_for_bit_as_the_jobs_and_refuse_alike(
    artifact_dir: Path, demo_table: pa.Table
) -> None:
    model = scoring.load_model(str(artifact_dir))
    assert (model.name, model.version) == ("model", "local")
    expected = load_artifact(str(artifact_dir)).scorer().score(demo_table)
    assert expected.rejected > 0

    predictions = model.score_records(_rows(demo_table, model.contract))

    assert len(predictions) == demo_table.num_rows
    keys = demo_table.column(model.contract.key).to_pylist()
    reasons = expected.reason.to_pylist()
    for row, prediction in enumerate(predictions):
        assert prediction.key == keys[row]
        assert (prediction.model_name, prediction.model_version) == ("model", "local")
        if expected.valid[row]:
            assert not prediction.refused
            assert prediction.score == expected.score[row].as_py()  # exact float64
            assert prediction.label == expected.label[row].as_py()
        else:
            assert prediction.refused and prediction.score is None and prediction.label is None
            assert prediction.reason == reasons[row]
            assert prediction.reason_kind == expected.kinds[row]


def test_records_and_messages_give_the_processors_reasons(
    artifact_dir: Path, demo_table: pa.Table
) -> None:
    model = scoring.load_model(str(artifact_dir))
    contract = model.contract
    good = next(
        row
        for row, ok in zip(
            _rows(demo_table, contract), model.score_batch(demo_table).valid, strict=True
        )
        if ok
    )
    amount = "amount"
    assert amount in contract.feature_names
    records: list[Any] = [
        good,
        {k: v for k, v in good.items() if k != contract.key},
        {k: v for k, v in good.items() if k != amount},
        {**good, amount: "12.5"},
        {**good, amount: math.nan},
        {**good, amount: np.float64(good[amount])},  # numpy scalars are plain numbers
        {**good, amount: object()},
        ["not", "a", "dict"],
    ]
    kinds = [p.reason_kind for p in model.score_records(records)]
    assert kinds == [
        None,
        "missing_key",
        "missing_field",
        "wrong_type",
        "not_finite",
        None,
        "wrong_type",
        "not_object",
    ]

    message = json.dumps(good).encode()
    out = model.score_messages([message, b"", b"{oops", message * 10], max_bytes=len(message) + 1)
    assert [p.reason_kind for p in out] == [None, "empty", "not_json", "oversized"]
    assert out[0].score == model.score_records([good])[0].score


def test_fields_outside_the_contract_are_ignored_whatever_they_hold(
    artifact_dir: Path, demo_table: pa.Table
) -> None:
    import pandas as pd

    model = scoring.load_model(str(artifact_dir))
    table = demo_table.slice(0, 300)
    rows = _rows(table, model.contract)
    plain = model.score_records(rows)
    assert {p.refused for p in plain} == {True, False}

    # Whole demo rows, as the README passes them: a date column ("ds") and the label.
    assert isinstance(table.column("ds")[0].as_py(), date)
    assert model.score_records(table.to_pylist()) == plain
    extras = {
        "seen_at": datetime(2026, 11, 7, 10, 30, tzinfo=UTC),
        "price": Decimal("12.10"),
        "raw": b"\x00\xff",
        "nested": {"a": [date(2026, 1, 1), {"b": Decimal(1)}], "c": None},
        "tags": ("x", 1, None),
        "count": np.int64(3),
        "ratio": np.float32(0.5),
        "when": np.datetime64("2026-11-07"),
        "missing": pd.NA,
        "anything": object(),
    }
    assert model.score_records([{**extras, **row} for row in rows]) == plain
    # From pandas (which turns a None in a float column into NaN), with a timestamp column.
    frame = pd.DataFrame(rows).assign(ts=pd.Timestamp("2026-11-07 10:30", tz="UTC"))
    records = frame.to_dict("records")
    assert isinstance(records[0]["ts"], pd.Timestamp)
    without = frame.drop(columns="ts").to_dict("records")
    assert model.score_records(records) == model.score_records(without)

    # The same events on the wire, with JSON extras of every kind, score the same.
    messages = [
        json.dumps(
            {
                "day": "2026-11-07",
                "at": "2026-11-07T10:30:00.123Z",
                "meta": {"source": {"id": [1, 2, {"deep": None}]}, "n": 1e300},
                "items": [1, "two", [3.5], {}],
                "big": 10**40,
                "note": None,
                **row,
            }
        ).encode()
        for row in rows
    ]
    assert model.score_messages(messages) == plain


def test_a_key_or_feature_holding_what_json_cannot_is_refused_naming_it(
    artifact_dir: Path, demo_table: pa.Table
) -> None:
    import pandas as pd

    model = scoring.load_model(str(artifact_dir))
    key = model.contract.key
    rows = _rows(demo_table.slice(0, 50), model.contract)
    good = next(
        row for row, p in zip(rows, model.score_records(rows), strict=True) if not p.refused
    )
    day = date(2026, 11, 7)
    out = model.score_records(
        [
            {**good, "amount": day},
            {**good, key: day},
            {**good, "channel": Decimal("1")},
            {**good, "amount": pd.Timestamp("2026-11-07")},
            {key: "t-x"},
        ]
    )
    assert [(p.key, p.reason_kind, p.reason) for p in out] == [
        (good[key], "wrong_type", "amount: expected a number, got datetime.date(2026, 11, 7)"),
        (
            None,
            "wrong_type",
            f"key field {key!r}: expected a string or an integer, got datetime.date(2026, 11, 7)",
        ),
        (good[key], "wrong_type", "channel: expected a string, got Decimal('1')"),
        (
            good[key],
            "wrong_type",
            "amount: expected a number, got Timestamp('2026-11-07 00:00:00')",
        ),
        ("t-x", "missing_field", f"{model.contract.feature_names[0]}: missing"),
    ]
    assert all(p.score is None and p.label is None for p in out)

    # numpy scalars are the numbers and strings they hold: the same score, bit for bit.
    numpy_types = {str: np.str_, int: np.int64, float: np.float64}
    as_numpy = {name: numpy_types.get(type(v), lambda v: v)(v) for name, v in good.items()}
    assert {type(v) for v in as_numpy.values()} >= {np.str_, np.int64, np.float64}
    assert model.score_records([as_numpy]) == model.score_records([good])


def test_arrow_batches_carry_reason_kinds(artifact_dir: Path, demo_table: pa.Table) -> None:
    model = scoring.load_model(str(artifact_dir))
    batch = demo_table.to_batches()[0]
    scored = model.score_batch(batch)
    kinds = scored.reason_kind.to_pylist()
    assert len(kinds) == batch.num_rows
    assert all((kind is None) == bool(ok) for kind, ok in zip(kinds, scored.valid, strict=True))
    assert scored.score.null_count == scored.rejected > 0

    without = batch.drop_columns(["amount"])
    refused = model.score_batch(without)
    assert refused.rejected == batch.num_rows
    assert set(refused.reason_kind.to_pylist()) == {"missing_field"}


def test_a_message_stream_and_the_records_match_the_processor_encoding(
    artifact_dir: Path, demo_table: pa.Table
) -> None:
    model = scoring.load_model(str(artifact_dir))
    contract = model.contract
    events = list(to_events(demo_table, contract.key, contract.feature_names))
    from_messages = model.score_messages([value for _, value in events])
    from_records = model.score_records(_rows(demo_table, contract))
    assert [(p.score, p.reason_kind) for p in from_messages] == [
        (p.score, p.reason_kind) for p in from_records
    ]


@pytest.fixture
def second_version(artifact_dir: Path, tmp_path: Path) -> Path:
    """The same graph with another threshold: every label may move, scores stay."""
    directory = Path(shutil.copytree(artifact_dir, tmp_path / "v2"))
    contract = json.loads((directory / CONTRACT_FILE).read_text())
    contract["output"]["threshold"] = 0.0
    (directory / CONTRACT_FILE).write_text(json.dumps(contract))
    return directory


def test_refresh_follows_the_alias_between_batches(
    artifact_dir: Path, second_version: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scoring import api
    from scoring.lifecycle import loading, registry

    holder = {"version": "1"}
    folders = {"1": artifact_dir, "2": second_version}

    def resolve(uri: str) -> ModelVersionInfo:
        return ModelVersionInfo("fraud", holder["version"], None, (), datetime.now(UTC), {}, "")

    def load(uri: str) -> Any:
        if not uri.startswith("models:/"):
            return load_artifact(uri)
        version = uri.rsplit("/", 1)[-1] if "@" not in uri else holder["version"]
        artifact = load_artifact(str(folders[version]))
        return type(artifact)(artifact.contract, artifact.onnx_bytes, uri, "fraud", version)

    monkeypatch.setattr(registry, "resolve", resolve)
    monkeypatch.setattr(api, "load_artifact", load)
    monkeypatch.setattr(loading, "load_artifact", load)
    model = scoring.load_model("models:/fraud@champion")
    assert (model.name, model.version) == ("fraud", "1")
    assert model.refresh() is False

    holder["version"] = "2"
    assert model.version == "1"  # nothing moves until asked
    assert model.refresh() is True
    assert model.version == "2"
    assert model.contract.output.threshold == 0.0

    holder["version"] = "1"  # a rollback, seen by the background follower
    with model:
        model.follow(poll_s=0.05)
        deadline = time.monotonic() + 10
        while not model.refresh() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert model.version == "1"
    assert model._follower is None

    fixed = scoring.load_model(str(artifact_dir))
    assert fixed.refresh() is False
    with pytest.raises(ConfigError, match="only models:/NAME@ALIAS"):
        fixed.follow()
