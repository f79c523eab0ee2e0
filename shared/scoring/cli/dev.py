"""``scoring dev``: local services on loopback (Kafka, an S3 server, an MLflow server).

Thin over ``scoring.dev``: the Kafka broker and the S3 and MLflow server processes, each
with its own folder under the data dir (``SCORING_HOME``), and the broker's topics
(``scoring.stream.topics``). Every ``up`` prints ``export NAME=VALUE`` lines on stdout, for
``eval "$(scoring dev ... up)"``; what people read goes to stderr.
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
topic_app = typer.Typer(
    help="Topics on the Kafka broker of `scoring dev up`.", no_args_is_help=True
)
s3_app = typer.Typer(help="An S3 API server (moto) on loopback.", no_args_is_help=True)
mlflow_app = typer.Typer(
    help="An MLflow tracking server on loopback, artifacts in the S3 server.", no_args_is_help=True
)
app.add_typer(topic_app, name="topic")
app.add_typer(s3_app, name="s3")
app.add_typer(mlflow_app, name="mlflow")


def _broker_dir() -> Path:
    from scoring.settings import load

    return load().home.resolve() / "kafka"


def _exports(env: dict[str, str]) -> None:
    """``export NAME=VALUE`` lines for ``eval "$(scoring dev ... up)"``, shell-quoted."""
    import shlex

    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


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
    """Start a single-node Kafka broker (KRaft) on 127.0.0.1.

    Prints KAFKA_BOOTSTRAP_SERVERS for your shell: `eval "$(scoring dev up)"`. With
    --secure that is the SASL_SSL listener, and SCORING_KAFKA_CONFIG its client properties
    file (a kcat -F file; the mutual-TLS one is named on stderr). Create topics with
    `scoring dev topic create`.
    """
    from scoring.dev import kafka_broker
    from scoring.settings import ENV

    broker = kafka_broker.start(_broker_dir(), port=port, secure=secure)
    errors.print(
        f"Kafka broker at {broker.bootstrap} (pid {broker.pid}), data in {broker.state_dir}. "
        "Create topics with `scoring dev topic create NAME`; stop it with `scoring dev down`.",
        highlight=False,
        soft_wrap=True,
    )
    if broker.secure is None:
        _exports({ENV["kafka_bootstrap"]: broker.bootstrap})
        return
    listeners = broker.secure
    errors.print(
        f"SASL_SSL  {listeners.sasl_ssl_bootstrap}  --kafka-config {listeners.sasl_ssl_config}\n"
        f"mTLS      {listeners.ssl_bootstrap}  --kafka-config {listeners.mtls_config}",
        highlight=False,
        soft_wrap=True,
    )
    _exports(
        {
            ENV["kafka_bootstrap"]: listeners.sasl_ssl_bootstrap,
            ENV["kafka_config"]: str(listeners.sasl_ssl_config),
        }
    )


@app.command("down")
@user_errors
def dev_down() -> None:
    """Stop the broker started by `scoring dev up` (its data is kept)."""
    from scoring.dev import kafka_broker

    stopped = kafka_broker.stop(_broker_dir())
    console.print("Kafka broker stopped" if stopped else "no Kafka broker was running")


def _dev_bootstrap() -> str:
    """The plaintext address of the running broker of `scoring dev up`."""
    from scoring.dev import kafka_broker
    from scoring.errors import StreamError

    broker = kafka_broker.running(_broker_dir())
    if broker is None:
        raise StreamError(
            f"No Kafka broker of `scoring dev up` is running (its folder: {_broker_dir()}). "
            "Start it with `scoring dev up`, then run this again."
        )
    return broker.bootstrap


@topic_app.command("create")
@user_errors
def dev_topic_create(
    topic: Annotated[
        list[str], typer.Argument(metavar="TOPIC", help="names of the topics to create")
    ],
    partitions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="partitions of each new topic, at least one per worker that will read it "
            "(default 3, as for a topic the broker makes itself)",
        ),
    ] = None,
) -> None:
    """Create each TOPIC on the broker of `scoring dev up` (one replica: it is one broker).

    A topic that exists already is left as it is: fine if it has --partitions partitions,
    an error (exit 4) if not: its partitions are never changed here.
    """
    from scoring.dev.kafka_server import PARTITIONS
    from scoring.errors import StreamError
    from scoring.stream import topics

    bootstrap = _dev_bootstrap()
    count = partitions or PARTITIONS
    before = topics.create_missing(bootstrap, list(dict.fromkeys(topic)), count)
    differ = []
    for name, found in before.items():
        if found is None:
            console.print(f"created topic {name} ({_partitions(count)}) on {bootstrap}")
        elif found == count:
            console.print(f"topic {name} exists already ({_partitions(found)}) on {bootstrap}")
        else:
            differ.append(f"topic {name} has {_partitions(found)}, not {count}")
    if differ:
        raise StreamError(
            f"{'; '.join(differ)} (on {bootstrap}); nothing was changed. Ask for the "
            "partitions it has with --partitions, or choose another name."
        )


@topic_app.command("list")
@user_errors
def dev_topic_list() -> None:
    """List the topics on the broker of `scoring dev up` and their partitions."""
    from scoring.stream import topics

    bootstrap = _dev_bootstrap()
    found = {n: c for n, c in topics.existing(bootstrap).items() if not n.startswith("__")}
    if not found:
        errors.print(f"no topics on {bootstrap} yet: make one with `scoring dev topic create`")
    width = max(map(len, found), default=0)
    for name in sorted(found):
        console.print(f"{name:<{width}}  {_partitions(found[name])}", highlight=False)


def _partitions(count: int) -> str:
    return f"{count} partition" + ("" if count == 1 else "s")


def _service_dir(name: str) -> Path:
    from scoring.settings import load

    return load().home.resolve() / name


def _stop_service(name: str, title: str) -> None:
    from scoring.dev import services

    stopped = services.stop(_service_dir(name))
    console.print(f"{title} stopped" if stopped else f"no {title} was running")


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
