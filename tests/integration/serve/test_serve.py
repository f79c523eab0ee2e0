"""``scoring serve`` answers clients we did not write with the batch job's and the stream's bits.

One server for the module (the demo model, every prediction logged to Kafka), talked to
by KServe's own REST and gRPC clients and by curl; the batch job (embedded engine, on a
table written by delta-rs) and the stream worker score the same rows.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from scoring.batch.main import run_job
from scoring.batch.spec import BatchJob
from scoring.dev.demo.data import KEY, generate_day
from scoring.dev.kafka_broker import Broker
from scoring.lifecycle.loading import load_artifact
from scoring.model.contract import Contract
from scoring.stream.events import H_MODEL_NAME, H_MODEL_VERSION

from tests.integration.conftest import START
from tests.integration.kafka_helpers import (
    ProcessorProcess,
    Topics,
    committed_reader,
    create_topics,
    outputs_by_key,
    produce,
    read_all,
)
from tests.integration.serve.serve_process import ServeProcess, get, post, v2_binary, v2_json
from tests.integration.stream.test_stream import events_of

pytestmark = pytest.mark.integration

ROWS = 400


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    """Demo rows, some of which break the contract (out of range, unknown category, ...)."""
    return generate_day(START, ROWS, seed=26)


@pytest.fixture(scope="module")
def contract(artifact_dir: Path) -> Contract:
    return load_artifact(str(artifact_dir)).contract


@pytest.fixture(scope="module")
def log_topic(kafka: Broker) -> str:
    topics = Topics("serve-log.in", "serve-log", "serve-log.dlq")
    create_topics(kafka.bootstrap, topics)
    return topics.output


@pytest.fixture(scope="module")
def server(
    artifact_dir: Path, kafka: Broker, log_topic: str, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    process = ServeProcess(
        artifact_dir,
        tmp_path_factory.mktemp("serve"),
        "--log-topic", log_topic, "--bootstrap", kafka.bootstrap, "--max-rows", "1000",
        "--max-bytes", "1000000",
    )  # fmt: skip
    try:
        process.wait_ready()
        yield process
        assert process.terminate() == 0, process.log()
    finally:
        process.stop()


def _batch_predictions(artifact_dir: Path, table: pa.Table, lake: Path) -> dict[str, Any]:
    """The embedded batch job over ``table`` written as a Delta table by delta-rs."""
    write_deltalake(str(lake / "source"), table, partition_by=["ds"])
    run_job(
        BatchJob(
            model=str(artifact_dir),
            source=str(lake / "source"),
            target=str(lake / "scores"),
            date=START.isoformat(),
            engine="arrow",
        )
    )
    scored = DeltaTable(str(lake / "scores")).to_pyarrow_table().to_pylist()
    refused = DeltaTable(str(lake / "scores_rejects")).to_pyarrow_table().to_pylist()
    return {
        "scores": {r[KEY]: r["score"] for r in scored},
        "refused": {r[KEY]: r["reason"] for r in refused},
    }


def test_served_scores_are_the_batch_jobs_and_the_streams_bit_for_bit(
    server: ServeProcess,
    rows: pa.Table,
    contract: Contract,
    artifact_dir: Path,
    kafka: Broker,
    topics: Topics,
    tmp_path: Path,
) -> None:
    batch = _batch_predictions(artifact_dir, rows, tmp_path / "lake")
    assert batch["refused"], "the rows carry contract-breaking ones"

    # The stream worker on the same rows.
    processor = ProcessorProcess(kafka.bootstrap, artifact_dir, topics, tmp_path)
    try:
        processor.wait_ready()
        produce(kafka.bootstrap, topics.input, events_of(artifact_dir, rows))
        out = read_all(kafka.bootstrap, topics.output, len(batch["scores"]))
        assert processor.terminate() == 0, processor.log()
    finally:
        processor.stop()
    stream = {key.decode(): p["score"] for key, (p,) in outputs_by_key(out).items()}
    assert stream == batch["scores"]  # float equality: the same float64s, bit for bit

    # REST v2 (JSON tensors) with KServe's REST client; gRPC (binary tensors) with its stub.
    async def rest_and_grpc() -> tuple[Any, Any]:
        rest = InferenceRESTClient(RESTConfig(protocol="v2"))
        stub = InferenceGRPCClient(server.grpc)
        try:
            request = v2_binary(_no_missing_text(rows, contract), contract, "model")
            return (
                await rest.infer(server.url, v2_json(rows, contract), model_name="model"),
                await stub.infer(request),
            )
        finally:
            await rest.close()
            await stub.close()

    rest, stub = asyncio.run(rest_and_grpc())
    keys = rows.column(KEY).to_pylist()
    _assert_same(keys, _outputs(rest), batch)
    assert rest.model_name == "model"  # its client drops model_version: see the next test
    binary_keys = _no_missing_text(rows, contract).column(KEY).to_pylist()
    _assert_same(binary_keys, _outputs(stub), batch)
    assert stub.model_version == "local"

    # KServe v1 instances with curl: records holding extra fields, as a client posts them.
    records = [{**r, "ds": str(r["ds"])} for r in rows.to_pylist()]
    answer = _curl(f"{server.url}/v1/models/model:predict", {"instances": records})
    assert answer["model_version"] == "local"
    for record, prediction in zip(records, answer["predictions"], strict=True):
        key = record[KEY]
        assert prediction[KEY] == key
        if key in batch["scores"]:
            assert prediction["score"] == batch["scores"][key]
            assert prediction["reason"] is None
        else:
            assert prediction["score"] is None
            assert prediction["reason"] == batch["refused"][key]


def _no_missing_text(table: pa.Table, contract: Contract) -> pa.Table:
    """Rows whose text features all hold a value: a binary BYTES tensor has no null."""
    keep = pa.array([True] * table.num_rows)
    for feature in contract.features:
        if feature.type == "string":
            keep = pc.and_(keep, pc.is_valid(table.column(feature.name)))
    return table.filter(keep)


def _outputs(response: Any) -> dict[str, list[Any]]:
    return {o.name: o.as_numpy().tolist() for o in response.outputs}


def _assert_same(keys: list[str], outputs: dict[str, list[Any]], batch: dict[str, Any]) -> None:
    assert len(outputs["score"]) == len(keys)
    for i, key in enumerate(keys):
        reason = outputs["reason"][i]
        reason = reason.decode() if isinstance(reason, bytes) else reason
        if key in batch["scores"]:
            assert outputs["score"][i] == batch["scores"][key], key  # the same float64
            assert reason == ""
        else:
            assert outputs["label"][i] == -1
            assert reason == batch["refused"][key], key  # the batch job's words


def _curl(url: str, body: dict[str, Any], *options: str) -> Any:
    curl = shutil.which("curl")
    assert curl, "curl is needed"
    done = subprocess.run(
        [curl, "-sS", "--fail-with-body", "-H", "Content-Type: application/json",
         "--data-binary", "@-", *options, url],
        input=json.dumps(body).encode(), capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    return json.loads(done.stdout)


def test_every_served_prediction_is_logged_in_the_streams_record_shape(
    server: ServeProcess, contract: Contract, kafka: Broker, log_topic: str
) -> None:
    served: dict[str, tuple[float, int]] = {}
    other_day = generate_day(START + timedelta(days=1), 150, seed=27)  # keys no other test sends
    for part in range(3):
        sent = other_day.slice(part * 50, 50)
        status, body = post(f"{server.url}/v2/models/model/infer", v2_json(sent, contract))
        assert status == 200, body
        assert (body["model_name"], body["model_version"]) == ("model", "local")
        outputs = {o["name"]: o["data"] for o in body["outputs"]}
        for key, score, label, kind in zip(
            sent.column(KEY).to_pylist(), outputs["score"], outputs["label"],
            outputs["reason_kind"], strict=True,
        ):  # fmt: skip
            if not kind:
                served[key] = (score, label)
    mine = _records_of(kafka.bootstrap, log_topic, set(served))
    assert len(mine) == len(served)  # each once: nothing lost, nothing twice
    for record in mine:
        key, value = record.key.decode(), json.loads(record.value)
        assert (value[KEY], value["score"], value["label"]) == (key, *served[key])
        assert (value["model_name"], value["model_version"]) == ("model", "local")
        assert value["event_time"] <= value["scored_time"]
        header = {k: v.decode() for k, v in record.headers}
        assert (header[H_MODEL_NAME], header[H_MODEL_VERSION]) == ("model", "local")
    _, ready = get(f"{server.url}/v2/health/ready")
    assert ready["payload_log"]["dropped"] == 0 and ready["payload_log"]["failed"] == 0


def _records_of(bootstrap: str, topic: str, keys: set[str], timeout: float = 60) -> list[Any]:
    """The topic's records with these keys, once each has arrived and 2 s more (duplicates)."""
    consumer = committed_reader(bootstrap, topic)
    found: list[Any] = []
    settle_at = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (settle_at is None or time.monotonic() < settle_at):
            for batch in consumer.poll(timeout_ms=500).values():
                found += [r for r in batch if r.key.decode() in keys]
            if settle_at is None and {r.key.decode() for r in found} == keys:
                settle_at = time.monotonic() + 2.0
    finally:
        consumer.close()
    return found


def test_a_malformed_request_gets_a_4xx_naming_the_problem_never_a_500(
    server: ServeProcess, rows: pa.Table, contract: Contract
) -> None:
    infer = f"{server.url}/v2/models/model/infer"
    good = v2_json(rows.slice(0, 3), contract)
    inputs = good["inputs"]
    wrong_type = [{**i, "datatype": "INT64"} if i["name"] == "amount" else i for i in inputs]
    short = [
        {**i, "shape": [2], "data": i["data"][:2]} if i["name"] == "hour" else i for i in inputs
    ]
    text_in_numbers = [
        {**i, "data": ["a", "b", "c"]} if i["name"] == "amount" else i for i in inputs
    ]
    cases: list[tuple[str, bytes | dict[str, Any], int, str]] = [
        (infer, b"{not json", 400, "the body is not JSON"),
        (infer, {"instances": []}, 400, "a v2 request is"),
        (infer, {"inputs": inputs[1:]}, 400, f"missing input {KEY}"),
        (
            infer,
            {"inputs": [*inputs, {**inputs[1], "name": "amout"}]},
            400,
            "did you mean 'amount'",
        ),
        (infer, {"inputs": wrong_type}, 400, "send it as FP64"),
        (infer, {"inputs": short}, 400, "lengths differ"),
        (infer, {"inputs": text_in_numbers}, 400, "'amount' is not all FP64"),
        (infer, {"inputs": [{**i, "shape": [0], "data": []} for i in inputs]}, 400, "no rows"),
        (infer, v2_json(generate_day(START, 1001, seed=1), contract), 413, "the limit is 1000"),
        (infer, b" " * 1_000_001, 413, "the limit is 1000000 bytes"),
        (f"{server.url}/v1/models/model:predict", {"instances": {"a": 1}}, 400, "instances"),
        (f"{server.url}/v2/models/nope/infer", good, 404, "nope"),
    ]
    for url, body, status, words in cases:
        got, answer = post(url, body)
        assert (got, words) == (status, words) and words in str(answer), (url, answer)

    # A record that is not an object is a row refused with its reason, as on the stream.
    got, answer = post(f"{server.url}/v1/models/model:predict", {"instances": [1, "x"]})
    assert got == 200, answer
    assert [p["reason_kind"] for p in answer["predictions"]] == ["not_object", "not_object"]
    # A chunked body over the limit (no Content-Length to check first) is 413 too.
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Transfer-Encoding: chunked",
         "-H", "Content-Type: application/json", "--data-binary", "@-", infer],
        input=b" " * 1_500_000, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.stdout == b"413", done

    async def over_grpc() -> list[Any]:
        stub = InferenceGRPCClient(server.grpc)
        codes = []
        try:
            for request in (
                v2_binary(rows.slice(0, 1), contract, "model").__class__(
                    model_name="model", infer_inputs=[]
                ),
                v2_binary(generate_day(START, 20_000, seed=2), contract, "model"),
            ):
                try:
                    await stub.infer(request)
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code())
        finally:
            await stub.close()
        return codes

    assert asyncio.run(over_grpc()) == [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # the body limit: 20,000 rows are over 1 MB
    ]
    assert "Traceback" not in server.log()
    metrics = get(f"{server.url}/metrics")[1]
    assert 'scoring_serve_requests_total{outcome="invalid",protocol="v2"}' in metrics
    assert 'scoring_serve_requests_total{outcome="too_large",protocol="v2"}' in metrics


def test_health_metadata_and_metrics(server: ServeProcess, contract: Contract) -> None:
    assert get(f"{server.url}/v2/health/live") == (200, {"live": True})
    status, ready = get(f"{server.url}/v2/health/ready")
    assert status == 200 and ready["ready"] and ready["model_version"] == "local"
    assert set(ready["payload_log"]) >= {"topic", "sent", "dropped", "failed", "queued"}
    assert get(f"{server.url}/v2/models/model/ready")[0] == 200
    status, metadata = get(f"{server.url}/v2/models/model")
    assert status == 200 and metadata["versions"] == ["local"]
    datatypes = {i["name"]: i["datatype"] for i in metadata["inputs"]}
    assert datatypes[KEY] == "BYTES"
    for feature in contract.features:
        expected = {"double": "FP64", "int64": "INT64", "string": "BYTES"}[feature.type]
        assert datatypes[feature.name] == expected
    assert [o["name"] for o in metadata["outputs"]] == ["score", "label", "reason", "reason_kind"]
    metrics = get(f"{server.url}/metrics")[1]
    for name in ("scoring_serve_rows_in_total", "scoring_serve_predictions_total",
                 "scoring_serve_score_seconds_bucket", "scoring_serve_log_records_total",
                 'scoring_serve_model_version{model="model"}'):  # fmt: skip
        assert name in metrics, name


def test_health_answers_while_large_requests_score(
    server: ServeProcess, contract: Contract
) -> None:
    big = v2_json(generate_day(START, 1000, seed=3), contract)
    pool = ThreadPoolExecutor(4)
    busy = [pool.submit(post, f"{server.url}/v2/models/model/infer", big) for _ in range(12)]
    waits = []
    while not all(f.done() for f in busy):
        started = time.monotonic()
        assert get(f"{server.url}/v2/health/ready")[0] == 200
        waits.append(time.monotonic() - started)
    pool.shutdown()
    assert all(f.result()[0] == 200 for f in busy)
    assert waits and max(waits) < 2.0, waits  # scoring runs off the event loop


def test_sigterm_finishes_requests_in_flight_and_flushes_the_log(
    artifact_dir: Path, contract: Contract, kafka: Broker, tmp_path: Path
) -> None:
    topics = Topics("serve-sigterm.in", "serve-sigterm", "serve-sigterm.dlq")
    create_topics(kafka.bootstrap, topics)
    process = ServeProcess(
        artifact_dir, tmp_path, "--log-topic", topics.output, "--bootstrap", kafka.bootstrap
    )
    day = generate_day(START + timedelta(days=2), 4000, seed=4)
    try:
        process.wait_ready()
        pool = ThreadPoolExecutor(4)
        url = f"{process.url}/v2/models/model/infer"
        bodies = [json.dumps(v2_json(_part(day, i), contract)).encode() for i in range(40)]
        sent = [pool.submit(_post_or_refused, url, body) for body in bodies]
        while not any(f.done() for f in sent):  # the first answered: the next are in flight
            time.sleep(0.001)
        process.process.send_signal(signal.SIGTERM)
        answers = [f.result() for f in sent]
        pool.shutdown()
        assert process.process.wait(60) == 0, process.log()
    finally:
        process.stop()
    assert any(status == 200 for status, _ in answers), answers  # in flight: answered
    assert all(status in (200, 0, 503) for status, _ in answers), answers  # 0: after the stop
    scored: set[str] = set()
    for i, (status, body) in enumerate(answers):
        if status == 200:
            kinds = {o["name"]: o["data"] for o in body["outputs"]}["reason_kind"]
            keys = _part(day, i).column(KEY).to_pylist()
            scored |= {key for key, kind in zip(keys, kinds, strict=True) if not kind}
    logged = _records_of(kafka.bootstrap, topics.output, scored, timeout=30)
    assert {r.key.decode() for r in logged} == scored  # flushed before the process ended
    assert len(logged) == len(scored)


def _part(table: pa.Table, i: int) -> pa.Table:
    return table.slice(i * 100, 100)


def _post_or_refused(url: str, body: bytes) -> tuple[int, Any]:
    try:
        return post(url, body)
    except httpx.TransportError as exc:  # sent after the server stopped listening
        return 0, str(exc)
