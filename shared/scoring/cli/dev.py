"""``scoring dev``: local services on loopback (Kafka, an S3 server, an MLflow server).

Thin over ``scoring.dev``: the Kafka broker and the S3 and MLflow server processes, each
with its own folder under the data dir (``SCORING_HOME``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scoring.cli.common import console, errors, user_errors

__all__ = ["app"]

app = typer.Typer(
    help="Local services for development on loopback: Kafka, an S3 server, an MLflow server.",
    no_args_is_help=True,
)
s3_app = typer.Typer(help="An S3 API server (moto) on loopback.", no_args_is_help=True)
mlflow_app = typer.Typer(
    help="An MLflow tracking server on loopback, artifacts in the S3 server.", no_args_is_help=True
)
app.add_typer(s3_app, name="s3")
app.add_typer(mlflow_app, name="mlflow")


def _broker_dir() -> Path:
    from scoring.settings import load

    return load().home.resolve() / "kafka"


@app.command("up")
@user_errors
def dev_up(
    port: Annotated[
        int | None, typer.Option(help="client port (default: a free one, kept across restarts)")
    ] = None,
    secure: Annotated[
        bool,
        typer.Option(
            help="add a SASL_SSL (SCRAM-SHA-512) and a mutual-TLS listener, with client files"
        ),
    ] = False,
) -> None:
    """Start a single-node Kafka broker (KRaft) on 127.0.0.1; prints its bootstrap address.

    With --secure it prints two lines for `export $(scoring dev up --secure)`: the SASL_SSL
    listener as KAFKA_BOOTSTRAP_SERVERS and its client properties file as
    SCORING_KAFKA_CONFIG (a kcat -F file; the mutual-TLS one is named on stderr).
    """
    from scoring.dev import kafka_broker
    from scoring.settings import ENV

    broker = kafka_broker.start(_broker_dir(), port=port, secure=secure)
    errors.print(
        f"Kafka broker running (pid {broker.pid}), data in {broker.state_dir}; "
        "stop it with `scoring dev down`"
    )
    if broker.secure is None:
        print(broker.bootstrap)
        return
    listeners = broker.secure
    errors.print(
        f"plaintext {broker.bootstrap}\n"
        f"SASL_SSL  {listeners.sasl_ssl_bootstrap}  --kafka-config {listeners.sasl_ssl_config}\n"
        f"mTLS      {listeners.ssl_bootstrap}  --kafka-config {listeners.mtls_config}",
        highlight=False,
        soft_wrap=True,
    )
    print(f"{ENV['kafka_bootstrap']}={listeners.sasl_ssl_bootstrap}")
    print(f"{ENV['kafka_config']}={listeners.sasl_ssl_config}")


@app.command("down")
@user_errors
def dev_down() -> None:
    """Stop the broker started by `scoring dev up` (its data is kept)."""
    from scoring.dev import kafka_broker

    stopped = kafka_broker.stop(_broker_dir())
    console.print("Kafka broker stopped" if stopped else "no Kafka broker was running")


def _service_dir(name: str) -> Path:
    from scoring.settings import load

    return load().home.resolve() / name


def _stop_service(name: str, title: str) -> None:
    from scoring.dev import services

    stopped = services.stop(_service_dir(name))
    console.print(f"{title} stopped" if stopped else f"no {title} was running")


def _exports(env: dict[str, str]) -> None:
    import shlex

    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


@s3_app.command("up")
@user_errors
def dev_s3_up(
    bucket: Annotated[list[str], typer.Option(help="bucket to create (repeat)")] = ["lake"],  # noqa: B006
    port: Annotated[int | None, typer.Option(help="port (default: a free one)")] = None,
) -> None:
    """Start an S3 API server (moto, in memory) on 127.0.0.1 with one user and BUCKETs.

    Prints the AWS variables that point clients at it: `eval "$(scoring dev s3 up)"`.
    """
    from scoring.dev import services

    server = services.start_s3(_service_dir("s3"), tuple(bucket), port)
    errors.print(
        f"S3 server at {server.endpoint} (pid {server.pid}), buckets {', '.join(bucket)}; "
        "its data lives in memory. Stop it with `scoring dev s3 down`."
    )
    _exports(server.env())


@s3_app.command("down")
@user_errors
def dev_s3_down() -> None:
    """Stop the S3 server started by `scoring dev s3 up` (its data is gone)."""
    _stop_service("s3", "S3 server")


@mlflow_app.command("up")
@user_errors
def dev_mlflow_up(
    basic_auth: Annotated[
        bool, typer.Option(help="MLflow's basic-auth app, a new password")
    ] = False,
    port: Annotated[int | None, typer.Option(help="port (default: a free one)")] = None,
) -> None:
    """Start `mlflow server` on 127.0.0.1: SQLite store, artifacts in s3://mlflow (the S3 server).

    Starts the S3 server too if it is not running. Prints the MLflow (and AWS) variables
    that point clients at them: `eval "$(scoring dev mlflow up)"`.
    """
    from scoring.dev import services

    s3 = services.start_s3(_service_dir("s3"), ("lake",))
    server = services.start_mlflow(_service_dir("mlflow"), s3, port=port, basic_auth=basic_auth)
    errors.print(
        f"MLflow tracking server at {server.uri} (pid {server.pid}), artifacts in "
        f"s3://mlflow on {s3.endpoint}. Stop it with `scoring dev mlflow down`."
    )
    _exports({**s3.env(), **server.env()})


@mlflow_app.command("down")
@user_errors
def dev_mlflow_down() -> None:
    """Stop the MLflow server started by `scoring dev mlflow up` (its store is kept)."""
    _stop_service("mlflow", "MLflow server")
