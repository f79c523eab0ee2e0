"""Waiting for shadow evidence: processors' /health served by a small local HTTP server."""

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
from scoring.lifecycle.rollout import wait_for_shadow
from typer.testing import CliRunner


class FakeProcessor:
    """Serves ``/health`` with whatever ``state`` holds at the time of the request."""

    def __init__(self, **state: Any) -> None:
        self.state: dict[str, Any] = {
            "status": "ok",
            "model_name": "fraud",
            "model_version": "1",
            "shadow_model_name": None,
            "shadow_model_version": None,
            "shadow_version_predictions": 0,
            "shadow_predictions": 0,
            "shadow_failures": 0,
            **state,
        }
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(fake.state).encode()
                self.send_response(200 if self.path == "/health" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/health"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def shadow(self, version: str | None, predictions: int) -> None:
        self.state.update(
            shadow_model_name=None if version is None else "fraud",
            shadow_model_version=version,
            shadow_version_predictions=predictions,
        )


@pytest.fixture
def processors() -> Iterator[tuple[FakeProcessor, FakeProcessor]]:
    pair = FakeProcessor(), FakeProcessor()
    yield pair
    for processor in pair:
        processor.server.shutdown()
        processor.server.server_close()


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
