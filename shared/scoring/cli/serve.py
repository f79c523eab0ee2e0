"""``scoring serve``: answer the Open Inference Protocol over HTTP and gRPC (``scoring.serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scoring.cli.common import KafkaBootstrap, KafkaConfigFile, errors, user_errors

__all__ = ["serve"]


@user_errors
def serve(
    model_uri: Annotated[
        str, typer.Argument(help="models:/NAME@ALIAS (followed), models:/NAME/N or a folder")
    ],
    name: Annotated[
        str | None, typer.Option(help="the model's name in the URLs (default: its registry name)")
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to listen on (0.0.0.0 in a container)")
    ] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="REST port")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: no gRPC)")] = 8081,
    max_rows: Annotated[int, typer.Option(help="rows per request; more: 413")] = 10_000,
    max_bytes: Annotated[
        int, typer.Option(help="request body bytes; more: 413 (gRPC: RESOURCE_EXHAUSTED)")
    ] = 8 * 1024 * 1024,
    timeout: Annotated[
        float, typer.Option(help="seconds a request may take; then 504 (gRPC: DEADLINE_EXCEEDED)")
    ] = 10.0,
    batch_rows: Annotated[
        int,
        typer.Option(
            help="requests arriving together are scored in one call of up to this many rows "
            "(0: each alone)"
        ),
    ] = 1_000,
    max_pending: Annotated[
        int,
        typer.Option(help="requests being scored at once; more are answered 503 at once"),
    ] = 256,
    log_topic: Annotated[
        str | None,
        typer.Option(help="Kafka topic every prediction is written to, as the stream writes it"),
    ] = None,
    bootstrap: KafkaBootstrap = None,
    kafka_config: KafkaConfigFile = None,
    log_queue: Annotated[
        int, typer.Option(help="predictions waiting for Kafka at most; more are dropped, counted")
    ] = 100_000,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate: serve HTTPS and gRPC over TLS")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert")] = None,
    model_poll_seconds: Annotated[
        float, typer.Option(help="how often a followed alias is checked")
    ] = 10.0,
    ort_threads: Annotated[
        int | None, typer.Option(help="onnxruntime threads (default SCORING_ORT_THREADS or 1)")
    ] = None,
) -> None:
    """Serve a model over the Open Inference Protocol (REST and gRPC) until SIGTERM.

    Every request but the health checks needs `Authorization: Bearer $SCORING_SERVE_TOKEN`
    when that variable is set.
    """
    from scoring.lifecycle.loading import load_artifact
    from scoring.masking import mask_in_logs
    from scoring.model.live import LiveModel
    from scoring.serve.metrics import ServeMetrics
    from scoring.serve.model import ServedModel
    from scoring.serve.payload_log import PayloadLog
    from scoring.serve.server import Listen, ScoringServer, limits, token_from_env
    from scoring.settings import load
    from scoring.stream.kafka_config import preflight, resolve

    mask_in_logs()  # the environment's secrets, the server's token among them
    token = token_from_env()
    listen = Listen(host, http_port, grpc_port, tls_cert, tls_key, token)
    bounds = limits(max_rows, max_bytes, timeout, batch_rows, max_pending)
    threads = load(ort_threads=ort_threads).ort_threads
    live = LiveModel.of(load_artifact(model_uri), threads)
    metrics = ServeMetrics()
    payload_log = None
    if log_topic:
        client = resolve(bootstrap, kafka_config)
        mask_in_logs(client.secrets())
        preflight(client)  # a wrong password or CA fails now, naming the file
        payload_log = PayloadLog(log_topic, client, live.scorer.contract.key, log_queue)
    served = ServedModel(
        name or live.name, model_uri, live, bounds, metrics, payload_log, threads,
        model_poll_seconds,
    )  # fmt: skip
    scheme = "https" if tls_cert else "http"
    errors.print(
        f"serving {live.name} version {live.version} as {served.name}: "
        f"{scheme}://{host}:{http_port}/v2/models/{served.name}"
        + (f", gRPC {host}:{grpc_port}" if grpc_port else "")
        + (f"; every prediction to Kafka topic {log_topic}" if log_topic else ""),
        highlight=False,
        soft_wrap=True,
    )
    ScoringServer(served, listen).start()
