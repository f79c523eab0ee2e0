"""``scoring serve`` as a child process on free loopback ports, and requests to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
from kserve import InferInput, InferRequest
from scoring.dev.kafka_broker import free_port
from scoring.model.contract import Contract
from scoring.serve.tensors import input_types

SCORING = str(Path(sys.executable).parent / "scoring")


class ServeProcess:
    """One ``scoring serve MODEL`` with its log in a file; ``https`` when given a certificate."""

    def __init__(
        self,
        model: str | Path,
        log_dir: Path,
        *options: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port({self.http_port})
        self.scheme = "https" if "--tls-cert" in options else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.http_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.log_file = log_dir / f"serve-{time.monotonic_ns()}.log"
        self._log = self.log_file.open("wb")
        command = [SCORING, "serve", str(model), "--http-port", str(self.http_port)]
        command += ["--grpc-port", str(self.grpc_port), *options]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def wait_ready(self, timeout: float = 60, verify: Any = True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited ({self.process.returncode}):\n{self.log()}")
            try:
                status, body = get(f"{self.url}/v2/health/ready", verify=verify)
                if status == 200:
                    return body
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"serve not ready after {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def get(url: str, headers: dict[str, str] | None = None, verify: Any = True) -> tuple[int, Any]:
    return _answer(httpx.get(url, headers=headers, timeout=30, verify=verify))


def post(
    url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """POST JSON (or raw bytes); httpx reads a 413 sent before the whole body was taken."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return _answer(httpx.post(url, content=data, headers=all_headers, timeout=30))


def _answer(response: httpx.Response) -> tuple[int, Any]:
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def v2_json(table: pa.Table, contract: Contract) -> dict[str, Any]:
    """A v2 request with the rows' values as JSON data (a null stays a null)."""
    inputs = []
    for spec in input_types(contract):
        values = table.column(spec["name"]).to_pylist()
        inputs.append(
            {"name": spec["name"], "datatype": spec["datatype"], "shape": [len(values)],
             "data": values}
        )  # fmt: skip
    return {"inputs": inputs}


def v2_binary(table: pa.Table, contract: Contract, name: str) -> InferRequest:
    """The same rows as binary tensors, as kserve's clients send them (NaN: missing)."""
    inputs = []
    for spec in input_types(contract):
        values = table.column(spec["name"]).to_pylist()
        tensor = InferInput(spec["name"], [len(values)], spec["datatype"])
        if spec["datatype"] == "BYTES":
            array = np.array([str(v).encode() for v in values], dtype=np.object_)
        else:
            array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    return InferRequest(model_name=name, infer_inputs=inputs)
