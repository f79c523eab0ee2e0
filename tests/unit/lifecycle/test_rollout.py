"""Waiting for versions and shadow evidence.

The neighbours are small local HTTP servers: stream processors serving ``/health``, and
model servers (``scoring serve``) serving their Open Inference Protocol metadata at
``/v2/models/fraud``, one of them behind a bearer token.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from scoring.cli import app
from scoring.dev.kafka_broker import free_port
from scoring.errors import GateFailedError
from scoring.lifecycle.rollout import SERVE_TOKEN_VARIABLE, wait_for_shadow, wait_for_version
from typer.testing import CliRunner


class FakeEndpoint:
    """Serves ``path`` with whatever ``state`` holds at the time of the request.

    With a ``token``, a request without ``Authorization: Bearer <token>`` gets 401. Every
    Authorization header received is kept in ``authorizations``.
    """

    def __init__(self, path: str, state: dict[str, Any], token: str | None = None) -> None:
        self.state = state
        self.authorizations: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                given = self.headers.get("Authorization")
                if given is not None:
                    fake.authorizations.append(given)
                if token is not None and given != f"Bearer {token}":
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", "Bearer")
                    self.end_headers()
                    return
                body = json.dumps(fake.state).encode()
                self.send_response(200 if self.path == path else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{path}"
        # A short poll interval: closing the fixtures does not wait half a second each.
        serve = {"poll_interval": 0.05}
        threading.Thread(target=self.server.serve_forever, kwargs=serve, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeProcessor(FakeEndpoint):
    """A stream processor's ``/health``."""

    def __init__(self, **state: Any) -> None:
        super().__init__(
            "/health",
            {
                "status": "ok",
                "model_name": "fraud",
                "model_version": "1",
                "shadow_model_name": None,
                "shadow_model_version": None,
                "shadow_version_predictions": 0,
                "shadow_predictions": 0,
                "shadow_failures": 0,
                **state,
            },
        )

    def shadow(self, version: str | None, predictions: int) -> None:
        self.state.update(
            shadow_model_name=None if version is None else "fraud",
            shadow_model_version=version,
            shadow_version_predictions=predictions,
        )


class FakeServer(FakeEndpoint):
    """A model server's metadata, ``GET /v2/models/fraud``; ``versions[0]`` scores now."""

    def __init__(self, version: str, token: str | None = None) -> None:
        super().__init__("/v2/models/fraud", {}, token)
        self.serve(version)

    def serve(self, version: str) -> None:
        self.state = {
            "name": "fraud",
            "versions": [version],
            "platform": "onnx",
            "inputs": [{"name": "amount", "datatype": "FP64", "shape": [-1]}],
            "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]}],
        }


@pytest.fixture
def processors() -> Iterator[tuple[FakeProcessor, FakeProcessor]]:
    pair = FakeProcessor(), FakeProcessor()
    yield pair
    for processor in pair:
        processor.close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer("2")
    yield fake
    fake.close()


@pytest.fixture
def guarded_server() -> Iterator[FakeServer]:
    fake = FakeServer("3", token="s3cret-token")
    yield fake
    fake.close()


def test_wait_for_version_reads_processors_and_servers_in_one_list(
    processors: tuple[FakeProcessor, FakeProcessor], server: FakeServer
) -> None:
    first, second = processors
    for processor in processors:
        processor.state["model_version"] = "2"
    report = wait_for_version([first.url, server.url, second.url], "fraud", "2", timeout=5)
    assert report == {
        "model": "fraud",
        "version": "2",
        "processors": {first.url: "fraud v2", server.url: "fraud v2", second.url: "fraud v2"},
    }


def test_wait_for_version_waits_for_a_server_to_follow_the_alias(
    processors: tuple[FakeProcessor, FakeProcessor], server: FakeServer
) -> None:
    first, _ = processors
    first.state["model_version"] = "3"
    timer = threading.Timer(0.5, server.serve, args=("3",))
    timer.start()
    report = wait_for_version([first.url, server.url], "fraud", "3", timeout=10, interval=0.1)
    timer.join()
    assert report["processors"] == {first.url: "fraud v3", server.url: "fraud v3"}


def test_wait_for_version_names_every_url_that_is_behind(
    processors: tuple[FakeProcessor, FakeProcessor], server: FakeServer
) -> None:
    first, second = processors
    first.state["model_version"] = "3"
    second.state = {"ready": True}  # e.g. /v2/health/ready listed by mistake
    dead = f"http://127.0.0.1:{free_port()}/v2/models/fraud"
    urls = [first.url, server.url, second.url, dead]
    with pytest.raises(GateFailedError) as failed:
        wait_for_version(urls, "fraud", "3", timeout=0.3, interval=0.1)
    message = str(failed.value)
    assert "not every processor reports fraud v3" in message
    assert f"{server.url}: fraud v2" in message
    assert f"{second.url}: neither a /health nor a /v2/models/NAME document (keys: ready)" in (
        message
    )
    assert f"{dead}: unreachable" in message
    assert first.url not in message
    assert failed.value.exit_code == 5


def test_the_serving_token_goes_only_to_a_server_that_asks_for_it(
    processors: tuple[FakeProcessor, FakeProcessor],
    guarded_server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, _ = processors
    first.state["model_version"] = "3"
    urls = [first.url, guarded_server.url]
    monkeypatch.delenv(SERVE_TOKEN_VARIABLE, raising=False)
    with pytest.raises(GateFailedError) as failed:
        wait_for_version(urls, "fraud", "3", timeout=0.2, interval=0.1)
    assert f"{guarded_server.url}: asks for a token (401 Unauthorized): set " in str(failed.value)

    monkeypatch.setenv(SERVE_TOKEN_VARIABLE, "wrong-token")
    with pytest.raises(GateFailedError) as refused:
        wait_for_version(urls, "fraud", "3", timeout=0.2, interval=0.1)
    assert f"refused the token of {SERVE_TOKEN_VARIABLE}" in str(refused.value)
    assert "wrong-token" not in str(refused.value)

    monkeypatch.setenv(SERVE_TOKEN_VARIABLE, "s3cret-token")
    report = wait_for_version(urls, "fraud", "3", timeout=5, interval=0.1)
    assert report["processors"][guarded_server.url] == "fraud v3"
    assert "Bearer s3cret-token" in guarded_server.authorizations
    assert first.authorizations == []  # the processor was never sent a token


def test_wait_version_command_prints_json_and_exits_5_on_timeout(
    processors: tuple[FakeProcessor, FakeProcessor], server: FakeServer
) -> None:
    first, _ = processors
    first.state["model_version"] = "2"
    command = ["stream", "wait-version", "fraud", "2"]
    command += ["--health-url", first.url, "--health-url", server.url]
    runner = CliRunner()
    done = runner.invoke(app, [*command, "--timeout", "5"])
    assert done.exit_code == 0, done.output
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["processors"] == {first.url: "fraud v2", server.url: "fraud v2"}
    server.serve("1")  # e.g. rolled back under the wait
    behind = runner.invoke(app, [*command, "--timeout", "0.5"])
    assert behind.exit_code == 5
    assert "fraud v1" in behind.output


def test_wait_for_shadow_sums_the_predictions_of_every_processor(
    processors: tuple[FakeProcessor, FakeProcessor],
) -> None:
    first, second = processors
    first.shadow("3", 700)
    second.shadow("3", 400)
    report = wait_for_shadow([first.url, second.url], "fraud", "3", events=1000, timeout=5)
    assert report["predictions"] == 1100 and report["events"] == 1000
    assert report["processors"][first.url] == {
        "shadow": "fraud v3",
        "predictions": 700,
        "failures": 0,
    }
    assert datetime.fromisoformat(report["started"]) <= datetime.fromisoformat(report["ended"])


def test_wait_for_shadow_waits_for_the_version_and_the_count(
    processors: tuple[FakeProcessor, FakeProcessor],
) -> None:
    first, second = processors
    first.shadow("2", 5000)  # an earlier challenger's predictions do not count
    second.shadow("3", 900)

    def later() -> None:
        first.shadow("3", 150)

    timer = threading.Timer(0.5, later)
    timer.start()
    report = wait_for_shadow(
        [first.url, second.url], "fraud", "3", events=1000, timeout=10, interval=0.1
    )
    timer.join()
    assert report["predictions"] == 1050


def test_wait_for_shadow_fails_with_the_numbers(
    processors: tuple[FakeProcessor, FakeProcessor],
) -> None:
    first, second = processors
    first.shadow("3", 300)
    second.shadow(None, 0)
    dead = f"http://127.0.0.1:{free_port()}/health"
    with pytest.raises(GateFailedError) as failed:
        wait_for_shadow(
            [first.url, second.url, dead], "fraud", "3", events=1000, timeout=0.5, interval=0.1
        )
    message = str(failed.value)
    assert "The shadow evidence failed: after 0s" in message
    assert "300 of 1000 shadow predictions by fraud v3" in message
    assert f"{second.url}: no shadow" in message and f"{dead}: unreachable" in message
    assert failed.value.exit_code == 5


def test_wait_shadow_command_prints_json_and_exits_5_on_timeout(
    processors: tuple[FakeProcessor, FakeProcessor],
) -> None:
    first, _ = processors
    first.shadow("3", 20)
    command = ["stream", "wait-shadow", "fraud", "3", "--health-url", first.url]
    runner = CliRunner()
    done = runner.invoke(app, [*command, "--events", "20", "--timeout", "5"])
    assert done.exit_code == 0, done.output
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert (last["predictions"], last["version"]) == (20, "3")
    assert {"started", "ended"} <= last.keys()
    short = runner.invoke(app, [*command, "--events", "21", "--timeout", "1"])
    assert short.exit_code == 5
    assert "20 of 21 shadow predictions" in short.output


def test_the_token_is_read_from_the_variable_the_server_reads() -> None:
    server = pytest.importorskip("scoring.serve.server", reason="the serve extra is not installed")
    assert server.TOKEN_ENV == SERVE_TOKEN_VARIABLE
