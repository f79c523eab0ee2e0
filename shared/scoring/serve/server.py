"""KServe's ``ModelServer`` for one served model, bound, limited and secured.

KServe answers the protocol (REST on uvicorn, gRPC on grpc.aio); what it leaves to its
users is done here: both servers listen on ``--host`` (loopback by default; KServe binds
every interface), a body over ``--max-bytes`` is answered 413 before it is read (gRPC
refuses it as RESOURCE_EXHAUSTED), TLS covers gRPC as well as REST, and a bearer token
(from the environment only) guards everything but the health endpoints. The model
metadata names the version serving now, which a rollout waits on, and the ready endpoint
carries the payload log's counts.

On SIGTERM uvicorn stops accepting, lets the requests in flight finish, then KServe stops
gRPC; only then is the payload log flushed, so the last answers are logged too.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import warnings
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc import aio
from kserve import ModelServer
from kserve.errors import InferenceError, InvalidInput, ModelNotFound
from kserve.model_server import app as kserve_app
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferResponse
from kserve.protocol.rest.server import RESTServer

from scoring.errors import ConfigError
from scoring.serve.model import Limits, Overloaded, RequestTimeout, ServedModel
from scoring.serve.tensors import TooLarge, parse_v2

__all__ = ["TOKEN_ENV", "Listen", "ScoringServer"]


# kserve 0.21 answers with FastAPI's ORJSONResponse, which FastAPI 0.165 deprecates (ADR 0012).
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")

# The bearer token every request but the health checks must carry; unset: no auth.
TOKEN_ENV = "SCORING_SERVE_TOKEN"
# Open without a token: what a load balancer's or Kubernetes' probes call.
_OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/")
_OPEN_GRPC = (
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


@dataclass(frozen=True)
class Listen:
    """Where and how the server listens."""

    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081  # 0: no gRPC
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file not found: {path}")


class _Guard:
    """ASGI middleware: a body limit (413), the bearer token (401), a JSON default.

    A request with no Content-Type (``tritonclient.http`` sends none) is taken as JSON;
    FastAPI would otherwise hand KServe raw bytes, which it reads as the binary extension.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, token: str | None) -> None:
        self.app, self.max_bytes, self.token = app, max_bytes, token

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if (
            self.token
            and scope["path"] not in _OPEN_PATHS
            and not _bearer_ok(headers.get(b"authorization", b""), self.token)
        ):
            await _reply(
                send,
                401,
                "a bearer token is required (Authorization: Bearer ...)",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _reply(
                send,
                413,
                f"the request body is {int(length)} bytes; the limit is "
                f"{self.max_bytes} bytes (--max-bytes)",
            )
            return
        if length is None and scope["method"] in ("POST", "PUT"):
            body, too_large = await _read_body(receive, self.max_bytes)
            if too_large:
                await _reply(
                    send,
                    413,
                    f"the request body is over the limit of {self.max_bytes} bytes (--max-bytes)",
                )
                return
            receive = _replay(body)
        if b"content-type" not in headers and b"inference-header-content-length" not in headers:
            scope = dict(scope, headers=[*scope["headers"], (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


def _bearer_ok(header: bytes, token: str) -> bool:
    scheme, _, given = header.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


async def _reply(
    send: Any, status: int, error: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = orjson.dumps({"error": error})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks), False


def _replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class _Rest(RESTServer):
    """KServe's REST server on our host, with our routes ahead of KServe's."""

    def __init__(self, served: ServedModel, listen: Listen, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served, self.listen = served, listen
        self.config.host = listen.host

    def create_application(self) -> None:
        app: FastAPI = kserve_app
        served = self.served

        # Registered first, so they answer these paths instead of KServe's.
        @app.get(f"/v2/models/{served.name}")
        async def metadata() -> dict[str, Any]:
            return served.metadata()

        @app.post(f"/v2/models/{served.name}/infer")
        async def infer(request: Request) -> Response:
            length = request.headers.get("inference-header-content-length")
            payload = parse_v2(await request.body(), length, served.name)
            answer = await served.predict(payload, request.headers)
            assert isinstance(answer, InferResponse)
            body, json_length = answer.to_rest()
            if json_length is None:
                return Response(orjson.dumps(body), media_type="application/json")
            return Response(
                body,
                media_type="application/octet-stream",
                headers={"inference-header-content-length": str(json_length)},
            )

        @app.get("/v2/health/ready")
        async def ready() -> JSONResponse:
            detail: dict[str, Any] = {
                "ready": served.ready,
                "model_name": served.name,
                "model_version": served.live.version,
            }
            if served.payload_log is not None:
                detail["payload_log"] = served.payload_log.health()
            return JSONResponse(detail, status_code=200 if served.ready else 503)

        app.add_exception_handler(RequestValidationError, _not_a_request)
        app.add_exception_handler(TooLarge, _status(413))
        app.add_exception_handler(RequestTimeout, _status(504))
        app.add_exception_handler(Overloaded, _status(503, {"retry-after": "1"}))
        super().create_application()
        # KServe logs each refused request with its traceback: a client's error is counted
        # (scoring_serve_requests) and answered, not logged.
        app.add_exception_handler(InvalidInput, _status(400))
        app.add_exception_handler(ModelNotFound, _status(404))
        app.add_middleware(_Guard, max_bytes=served.limits.max_bytes, token=self.listen.token)

    def _add_middlewares(self, app: FastAPI) -> None:
        """None of KServe's: its timing middleware costs two getrusage calls per request."""


async def _not_a_request(_: Any, exc: Exception) -> JSONResponse:
    """FastAPI's 422 without the whole body echoed back: where it is wrong, and how."""
    problems = [
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
        for e in getattr(exc, "errors", list)()[:5]
    ]
    return JSONResponse(
        {
            "error": 'not an inference request (v2: {"inputs": [...]} to '
            '/v2/models/NAME/infer; v1: {"instances": [...]} to /v1/models/NAME:predict): '
            + "; ".join(problems)
        },
        status_code=400,
    )


def _status(
    code: int, headers: dict[str, str] | None = None
) -> Callable[[Any, Exception], Awaitable[JSONResponse]]:
    async def handler(_: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=code, headers=headers)

    return handler


class _Grpc(GRPCServer):
    """KServe's gRPC server on our host, with TLS, the token and the size limit."""

    def __init__(self, listen: Listen, max_bytes: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listen, self.max_bytes = listen, max_bytes

    async def start(self, max_workers: int) -> None:
        interceptors: list[aio.ServerInterceptor] = [_Statuses()]
        if self.listen.token:
            interceptors.insert(0, _TokenInterceptor(self.listen.token))
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", self.max_bytes),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        address = f"{self.listen.host}:{self._port}"
        if self.listen.tls_cert and self.listen.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(self.listen.tls_key.read_bytes(), self.listen.tls_cert.read_bytes())]
            )
            self._server.add_secure_port(address, credentials)
        else:
            self._server.add_insecure_port(address)
        await self._server.start()
        await self._server.wait_for_termination()


class _Statuses(ExceptionToStatusInterceptor):
    """KServe's mapping of errors to gRPC statuses, without a traceback for a client's error."""

    async def handle_exception(
        self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str
    ) -> None:
        if isinstance(ex, InvalidInput) and not isinstance(ex, InferenceError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ex.reason)
        await super().handle_exception(ex, request_or_iterator, context, method_name)


class _TokenInterceptor(aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

        async def refuse(_: Any, context: aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a bearer token is required (metadata authorization: Bearer ...)",
            )

        self._refuse = grpc.unary_unary_rpc_method_handler(refuse)

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method in _OPEN_GRPC:
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if isinstance(given, bytes):
            given = given.decode("latin-1")
        if _bearer_ok(given.encode("latin-1"), self.token):
            return await continuation(details)
        return self._refuse


class ScoringServer(ModelServer):
    """One :class:`ServedModel` on REST and (unless ``grpc_port`` is 0) gRPC."""

    def __init__(self, served: ServedModel, listen: Listen) -> None:
        super().__init__(
            http_port=listen.http_port,
            grpc_port=listen.grpc_port,
            enable_grpc=listen.grpc_port != 0,
            enable_latency_logging=False,
            ssl_certfile=str(listen.tls_cert) if listen.tls_cert else None,
            ssl_keyfile=str(listen.tls_key) if listen.tls_key else None,
            grace_period=30,
        )
        self.served, self.listen = served, listen

    def start(self, models: Any = None) -> None:  # models: always [self.served]
        """Serve until SIGTERM or SIGINT; then finish requests in flight and flush the log."""
        self._register_and_check_atleast_one_model_is_ready([self.served])
        self._rest_server = _Rest(
            self.served,
            self.listen,
            "kserve.model_server:app",
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            grace_period=self.grace_period,
            timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = _Grpc(
                self.listen,
                self.served.limits.max_bytes,
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs={},
                grace_period=self.grace_period,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        try:
            asyncio.run(self._serve())
        finally:
            self.served.stop()
            if self.served.payload_log is not None:
                self.served.payload_log.close()  # logs its final counts


def token_from_env() -> str | None:
    """The bearer token from :data:`TOKEN_ENV` (never a flag: it would show in ``ps``)."""
    return os.environ.get(TOKEN_ENV) or None


def limits(
    max_rows: int, max_bytes: int, timeout_s: float, batch_rows: int, max_pending: int
) -> Limits:
    for name, value in (
        ("--max-rows", max_rows),
        ("--max-bytes", max_bytes),
        ("--timeout", timeout_s),
        ("--max-pending", max_pending),
    ):
        if value <= 0:
            raise ConfigError(f"{name} must be positive, not {value}")
    if batch_rows < 0:
        raise ConfigError(f"--batch-rows must be 0 (no batching) or more, not {batch_rows}")
    return Limits(max_rows, max_bytes, timeout_s, batch_rows, max_pending)
