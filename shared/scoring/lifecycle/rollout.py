"""The gates a candidate model version passes before and after it becomes champion.

Each gate returns a JSON-able report or raises: :class:`SchemaMismatchError` when the
candidate's contract does not fit the source table, :class:`GateFailedError` when the
candidate is worse than the champion on the labelled holdout, scores the golden rows
differently on the batch and stream paths, or is not picked up by the running stream
processors (or model servers) in time, or not shadowed by the processors on enough
events. The rollout DAG runs them through ``scoring model validate``, ``scoring model
parity``, ``scoring stream wait-shadow`` and ``scoring stream wait-version``.

The quality gate and parity read the source on either batch engine: with a Spark session
(the Spark engine: catalog tables, sources too big for one machine), or without one
(``spark=None``, the arrow engine: delta-rs and pyarrow in this process, no JVM), and
parity scores the golden rows through that engine's own batch step.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from scoring.batch import lake, spec
from scoring.batch.job import REASON, check_schema, read_source, rows_for_date, score_frame
from scoring.errors import GateFailedError, ModelNotFoundError
from scoring.lifecycle.loading import load_artifact
from scoring.model.artifact import Artifact
from scoring.stream.events import to_events
from scoring.stream.metrics import fetch_health
from scoring.stream.processor import Processor, StreamConfig
from scoring.stream.topics import create, delete, produce, reader

__all__ = [
    "METRICS",
    "SERVE_TOKEN_VARIABLE",
    "parity",
    "quality_gate",
    "wait_for_shadow",
    "wait_for_version",
]

# The bearer token of `scoring serve`, from the environment only (never a flag or a file).
SERVE_TOKEN_VARIABLE = "SCORING_SERVE_TOKEN"


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores))


# Higher is better for each.
METRICS = {"auc": _auc, "average_precision": _average_precision}


def _source_rows(
    spark: SparkSession, artifact: Artifact, source: str, date: str | None, date_column: str
) -> tuple[DataFrame, int]:
    """The source (or one date of it) at its current version, once its schema fits."""
    frame, version = read_source(spark, source)
    check_schema(
        frame.schema, artifact.contract, date_column if date else None, f"{source} (v{version})"
    )
    if date:
        frame = rows_for_date(frame, date_column, date)
    return frame, version


def _source_table(
    artifact: Artifact, source: str, date: str | None, date_column: str
) -> tuple[pa.Table, int]:
    """:func:`_source_rows` on the arrow engine: read with delta-rs, in this process."""
    from scoring.batch.embedded import open_source

    table = open_source(source)
    version = table.version()
    data = table.to_pyarrow_dataset()
    spec.check_arrow_schema(
        data.schema, artifact.contract, date_column if date else None, f"{source} (v{version})"
    )
    where = lake.date_filter(data.schema, date_column, date) if date else None
    return data.to_table(filter=where), version


def _metric(artifact: Artifact, holdout: pa.Table, label: str, metric: str) -> tuple[float, int]:
    scored = artifact.scorer().score(holdout)
    labels = holdout.column(label).to_numpy(zero_copy_only=False)[scored.valid]
    scores = scored.score.to_numpy(zero_copy_only=False)[scored.valid]
    if len(np.unique(labels)) < 2:
        raise GateFailedError(
            "quality gate", f"the holdout has only one class in {label!r}; pick another date"
        )
    return METRICS[metric](labels.astype(int), scores), int(scored.valid.sum())


def quality_gate(
    spark: SparkSession | None,
    name: str,
    version: str,
    source: str,
    label: str,
    date: str | None = None,
    date_column: str = "ds",
    metric: str = "auc",
    margin: float = 0.0,
    alias: str = "champion",
) -> dict[str, Any]:
    """Checksum, contract against the source schema, and metric against the champion.

    Passes when ``candidate >= champion - margin`` on the holdout rows (the source, or
    one date of it). Without a champion the candidate passes on the other checks alone.
    ``spark``: the session to read the source with; None reads it on the arrow engine.
    """
    if metric not in METRICS:
        raise GateFailedError(
            "quality gate", f"unknown metric {metric!r}; use one of {list(METRICS)}"
        )
    candidate = load_artifact(f"models:/{name}/{version}")  # verifies both checksums
    if spark is None:
        holdout, source_version = _source_table(candidate, source, date, date_column)
    else:
        frame, source_version = _source_rows(spark, candidate, source, date, date_column)
        holdout = frame.toArrow()
    if label not in holdout.column_names:
        raise GateFailedError("quality gate", f"the holdout has no label column {label!r}")
    report: dict[str, Any] = {
        "model": name,
        "candidate": version,
        "holdout": source,
        "holdout_version": source_version,
        "date": date,
        "metric": metric,
        "margin": margin,
    }
    report["candidate_value"], report["rows"] = _metric(candidate, holdout, label, metric)
    try:
        champion = load_artifact(f"models:/{name}@{alias}")
    except ModelNotFoundError:
        report.update(champion=None, passed=True)
        return report
    report["champion"] = champion.version
    report["champion_value"], _ = _metric(champion, holdout, label, metric)
    report["passed"] = report["candidate_value"] >= report["champion_value"] - margin
    if not report["passed"]:
        raise GateFailedError(
            "quality gate",
            f"{metric} {report['candidate_value']:.4f} on {report['rows']:,} holdout rows is "
            f"below champion v{champion.version}'s {report['champion_value']:.4f} minus margin "
            f"{margin}",
        )
    return report


def parity(
    spark: SparkSession | None,
    name: str,
    version: str,
    source: str,
    bootstrap: str,
    date: str | None = None,
    date_column: str = "ds",
    rows: int = 1000,
    timeout: float = 120,
    kafka: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Score golden rows through the batch code and a stream processor (Kafka).

    The golden rows are the first ``rows`` of the source (or of one date), by key, scored
    by the Spark engine with a session, else by the arrow engine's batch step. Every score
    must be identical, bit for bit, and both paths must refuse the same rows. ``kafka``
    are extra client properties (security, SASL, TLS) for every Kafka client.
    """
    uri = f"models:/{name}/{version}"
    artifact = load_artifact(uri)
    key = artifact.contract.key
    table, batch = _golden_scores(spark, artifact, source, date, date_column, rows)
    batch_scores = {
        str(k): s
        for k, s, r in zip(
            batch.column(key).to_pylist(),
            batch.column("score").to_pylist(),
            batch.column(REASON).to_pylist(),
            strict=True,
        )
        if r is None
    }
    stream_scores = _stream_scores(
        uri, artifact, table, bootstrap, len(batch_scores), timeout, kafka or {}
    )
    differ = sorted(
        k
        for k in batch_scores.keys() | stream_scores.keys()
        if batch_scores.get(k) != stream_scores.get(k)
    )
    report = {
        "model": name,
        "version": version,
        "golden_rows": table.num_rows,
        "batch_scored": len(batch_scores),
        "stream_scored": len(stream_scores),
        "different": len(differ),
    }
    if differ:
        first = differ[0]
        raise GateFailedError(
            "batch/stream parity",
            f"{len(differ)} of {table.num_rows} golden rows differ (first: key {first}, batch "
            f"{batch_scores.get(first)!r}, stream {stream_scores.get(first)!r})",
        )
    return report


def _golden_scores(
    spark: SparkSession | None,
    artifact: Artifact,
    source: str,
    date: str | None,
    date_column: str,
    rows: int,
) -> tuple[pa.Table, pa.Table]:
    """The golden rows, and what the batch engine makes of them (key, score, reason)."""
    key = artifact.contract.key
    if spark is None:
        source_rows, _ = _source_table(artifact, source, date, date_column)
        golden = source_rows.sort_by(key).slice(0, rows)
        scorer = artifact.scorer()
        batches = [spec.score_batch(scorer, b, [key]) for b in golden.to_batches()]
        return golden, pa.Table.from_batches(batches) if batches else golden.select([key])
    frame, _ = _source_rows(spark, artifact, source, date, date_column)
    cached = frame.orderBy(key).limit(rows).cache()
    scored = score_frame(cached, artifact, None).toArrow()
    golden = cached.toArrow()
    cached.unpersist()
    return golden, scored


def _stream_scores(
    uri: str,
    artifact: Artifact,
    table: pa.Table,
    bootstrap: str,
    expected: int,
    timeout: float,
    kafka: Mapping[str, str],
) -> dict[str, float]:
    """Run a processor in this process on fresh topics and collect what it scores."""
    stamp = f"{artifact.name}-{artifact.version}-{time.time_ns()}"
    topics = (f"parity.{stamp}.in", f"parity.{stamp}.out", f"parity.{stamp}.dlq")
    create(bootstrap, topics, partitions=1, kafka=kafka)
    processor = Processor(
        StreamConfig(
            uri, *topics, bootstrap=bootstrap, group=f"parity.{stamp}", worker=stamp, kafka=kafka
        )
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            processor.run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, name="parity-processor", daemon=True)
    thread.start()
    scores: dict[str, float] = {}
    try:
        deadline = time.monotonic() + timeout
        while processor.status != "ok" and not errors and time.monotonic() < deadline:
            time.sleep(0.1)
        contract = artifact.contract
        events = to_events(table, contract.key, contract.feature_names)
        produce(bootstrap, topics[0], events, kafka=kafka)
        consumer = reader(bootstrap, topics[1], partitions=1, kafka=kafka)
        while len(scores) < expected and not errors and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    prediction = json.loads(record.value or b"{}")
                    scores[str(prediction[contract.key])] = prediction["score"]
        consumer.close()
    finally:
        processor.stop()
        thread.join(60)
        delete(bootstrap, topics, kafka)
    if errors:
        raise errors[0]
    return scores


def wait_for_version(
    urls: Sequence[str], name: str, version: str, timeout: float = 120, interval: float = 1.0
) -> dict[str, Any]:
    """Wait until every URL reports ``name`` at ``version``.

    A URL is either a stream processor's ``/health`` (``model_name``, ``model_version``)
    or a model server's Open Inference Protocol metadata, ``/v2/models/NAME`` of
    ``scoring serve`` (``name``, and ``versions`` whose first is the registry version
    scoring now); each is told apart by its JSON, so both kinds wait in one list. A server
    is compared by the name it serves under, so it must serve the registry's name. A
    server that answers 401 gets the bearer token of ``SCORING_SERVE_TOKEN``; no other URL
    is sent it.

    Returns ``{"model", "version", "processors": {url: "NAME vVERSION"}}``; raises
    :class:`GateFailedError` naming every URL that still reports something else (or is
    unreachable) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    wanted = f"{name} v{version}"
    asked_for_token: set[str] = set()
    seen: dict[str, str] = {}
    while True:
        for url in urls:
            seen[url] = _reported(url, asked_for_token)
        if all(s == wanted for s in seen.values()):
            return {"model": name, "version": version, "processors": seen}
        if time.monotonic() >= deadline:
            lagging = "; ".join(f"{u}: {s}" for u, s in seen.items() if s != wanted)
            raise GateFailedError(
                "stream confirmation",
                f"after {timeout:.0f}s not every processor reports {wanted} ({lagging})",
            )
        time.sleep(interval)


def _reported(url: str, asked_for_token: set[str]) -> str:
    """``NAME vVERSION`` as a processor's ``/health`` or a server's metadata says it."""
    try:
        document = _document(url, asked_for_token)
    except urllib.error.HTTPError as exc:
        status = f"{exc.code} {exc.reason}"
        if exc.code in (401, 403) and url in asked_for_token:
            return f"refused the token of {SERVE_TOKEN_VARIABLE} ({status})"
        if exc.code == 401:
            return f"asks for a token ({status}): set {SERVE_TOKEN_VARIABLE}"
        return f"unreachable ({status})"
    except (OSError, ValueError) as exc:
        return f"unreachable ({exc})"
    if "name" in document and "versions" in document:  # Open Inference Protocol metadata
        versions = document["versions"] or []
        return f"{document['name']} v{versions[0]}" if versions else "served, no version"
    if "model_version" in document:
        return f"{document.get('model_name')} v{document['model_version']}"
    keys = ", ".join(sorted(document)) or "none"
    return f"neither a /health nor a /v2/models/NAME document (keys: {keys})"


def _document(url: str, asked_for_token: set[str]) -> dict[str, Any]:
    """GET ``url``'s JSON; the serving token goes only to URLs that asked for it (401)."""
    token = os.environ.get(SERVE_TOKEN_VARIABLE) or None
    if url in asked_for_token:
        return _get_json(url, token)
    try:
        return _get_json(url, None)
    except urllib.error.HTTPError as exc:
        if exc.code != 401 or token is None:
            raise
    asked_for_token.add(url)
    return _get_json(url, token)


def _get_json(url: str, token: str | None) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        # Unredirected: a redirect, possibly to another host, is never sent the token.
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        document = json.load(response)
    if not isinstance(document, dict):
        raise ValueError(f"expected a JSON object, got {type(document).__name__}")
    return document


def wait_for_shadow(
    urls: Sequence[str],
    name: str,
    version: str,
    events: int,
    timeout: float = 3600,
    interval: float = 1.0,
) -> dict[str, Any]:
    """Wait until every processor shadows ``name`` at ``version`` and ``events`` were scored.

    Counts ``shadow_version_predictions`` of ``/health`` (predictions by the current
    shadow version since the processor took it up), summed over the processors that
    shadow ``version``. The report says when the wait started and ended (ISO, UTC).
    """
    started = datetime.now(UTC)
    deadline = time.monotonic() + timeout
    wanted = f"{name} v{version}"
    while True:
        seen = {url: _shadow(url) for url in urls}
        predictions = sum(int(s["predictions"]) for s in seen.values() if s["shadow"] == wanted)
        lagging = {u: s for u, s in seen.items() if s["shadow"] != wanted}
        if not lagging and predictions >= events:
            return {
                "model": name,
                "version": version,
                "events": events,
                "predictions": predictions,
                "processors": seen,
                "started": started.isoformat(timespec="seconds"),
                "ended": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        if time.monotonic() >= deadline:
            detail = "; ".join(f"{u}: {s['shadow']}" for u, s in lagging.items())
            raise GateFailedError(
                "shadow evidence",
                f"after {timeout:.0f}s (since {started.isoformat(timespec='seconds')}) "
                f"{predictions} of {events} shadow predictions by {wanted}"
                + (f"; not shadowing it: {detail}" if detail else ""),
            )
        time.sleep(interval)


def _shadow(url: str) -> dict[str, Any]:
    """What one processor shadows, and its shadow counts."""
    try:
        health = fetch_health(url, timeout=5)
    except (OSError, ValueError) as exc:
        return {"shadow": f"unreachable ({exc})", "predictions": 0, "failures": 0}
    shadow_version = health.get("shadow_model_version")
    return {
        "shadow": "no shadow"
        if shadow_version is None
        else f"{health.get('shadow_model_name')} v{shadow_version}",
        "predictions": int(health.get("shadow_version_predictions") or 0),
        "failures": int(health.get("shadow_failures") or 0),
    }
