"""The faust scoring agent in a real faust worker (a child process) against the real broker.

Checked key by key with a ``read_committed`` reader: every valid event has the score the
jobs' scorer gives the same row, bit for bit, once, whatever other fields it carries; every
bad one is a dead letter with its reason, its origin and the processor's headers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from scoring.dev.demo.data import KEY
from scoring.dev.kafka_broker import Broker
from scoring.lifecycle.loading import load_artifact

from tests.integration.kafka_helpers import Topics, headers, outputs_by_key, produce, read_all
from tests.integration.stream.test_stream import _EXTRAS, _bad_corpus, events_of, expected_scores

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("faust_app.py")


def test_a_faust_worker_scores_like_the_jobs_and_dead_letters_bad_events(
    kafka: Broker, topics: Topics, artifact_dir: Path, demo_table: pa.Table, tmp_path: Path
) -> None:
    table = demo_table.slice(0, 600)
    valid, refused = expected_scores(artifact_dir, table)
    assert refused, "the demo rows carry some that break the contract"
    scored = load_artifact(str(artifact_dir)).scorer().score(table)
    reason_of = {
        str(key).encode(): reason
        for key, reason in zip(
            table.column(KEY).to_pylist(), scored.reason.to_pylist(), strict=True
        )
        if reason is not None
    }
    good = events_of(artifact_dir, table)
    bad = _bad_corpus(good)
    # Every other event carries fields outside the contract: ignored, the score is the same.
    good = [
        (key, json.dumps({**_EXTRAS, **json.loads(value)}).encode()) if i % 2 else (key, value)
        for i, (key, value) in enumerate(good)
    ]
    events: list[tuple[bytes | None, bytes | None]] = [
        *good[:300],
        *(b[:2] for b in bad),
        *good[300:],
    ]

    log_file = tmp_path / "faust.log"
    env = {
        **os.environ,
        "FAUST_APP_ID": f"scoring-faust-{topics.input}",
        "FAUST_APP_BOOTSTRAP": kafka.bootstrap,
        "FAUST_APP_MODEL": str(artifact_dir),
        "FAUST_APP_INPUT": topics.input,
        "FAUST_APP_OUTPUT": topics.output,
        "FAUST_APP_DLQ": topics.dlq,
    }
    with log_file.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, str(APP), "worker", "--without-web", "--loglevel", "info"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        produce(kafka.bootstrap, topics.input, events)
        out = read_all(kafka.bootstrap, topics.output, len(valid), timeout=120)
        dead = read_all(kafka.bootstrap, topics.dlq, len(refused) + len(bad), timeout=30)
        assert worker.poll() is None, log_file.read_text()[-6000:]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log_file.read_text()[-6000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)

    threshold = load_artifact(str(artifact_dir)).contract.output.threshold
    by_key = outputs_by_key(out)
    assert set(by_key) == set(valid), log_file.read_text()[-6000:]
    for key, (prediction,) in by_key.items():  # one each: no duplicates in a clean run
        assert prediction[KEY].encode() == key
        assert prediction["score"] == valid[key]  # bit for bit
        assert prediction["label"] == int(prediction["score"] >= threshold)
        assert (prediction["model_name"], prediction["model_version"]) == ("model", "local")
    assert {headers(r)["model_version"] for r in out} == {"local"}
    assert all(json.loads(r.value)["event_time"].endswith("Z") for r in out)

    letters = {r.key: r for r in dead}
    assert len(letters) == len(dead) == len(refused) + len(bad)
    for key in refused:
        h = headers(letters[key])
        assert h["reason"] == reason_of[key]
        assert h["origin_topic"] == topics.input
        assert {"reason_kind", "origin_partition", "origin_offset", "model_version"} <= set(h)
    for key, value, kind in bad:
        record = letters[key]
        assert headers(record)["reason_kind"] == kind, (key, headers(record))
        assert record.value == value
