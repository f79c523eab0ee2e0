"""``scoring stream``: run a stream processor, and wait for processors during a rollout.

Thin over ``scoring.stream`` (the processor and its command line) and the rollout waits
of ``scoring.lifecycle.rollout``. ``wait-version`` also waits for model servers
(``scoring serve``): they follow the alias as the processors do.
"""

from __future__ import annotations

from typing import Annotated

import typer

from scoring.cli.common import FORWARD_ALL, print_report, user_errors

__all__ = ["app"]

app = typer.Typer(help="Real-time scoring of a Kafka topic.", no_args_is_help=True)


@app.command(
    "run",
    context_settings=FORWARD_ALL,
    add_help_option=False,
)
@user_errors  # the worker masks its own errors; this one anything before it starts
def stream_run(ctx: typer.Context) -> None:
    """Score a Kafka topic until SIGTERM (see --help for the options)."""
    from scoring.stream.main import main as process_main

    raise typer.Exit(process_main(ctx.args))


@app.command("wait-version")
@user_errors
def wait_version(
    name: str,
    version: str,
    health_url: Annotated[
        list[str],
        typer.Option(
            help="a processor's /health URL, or a model server's /v2/models/NAME URL "
            "(repeat for each)"
        ),
    ],
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 120,
) -> None:
    """Wait until every listed stream processor and model server reports NAME at VERSION.

    A server (`scoring serve`) is read at its Open Inference Protocol metadata URL; if it
    asks for a token (401), SCORING_SERVE_TOKEN is sent as a bearer token. Prints what
    each URL reports as JSON; exits 5 naming the ones behind when the timeout comes first.
    """
    from scoring.lifecycle.rollout import wait_for_version

    print_report(wait_for_version(health_url, name, version, timeout))


@app.command("wait-shadow")
@user_errors
def wait_shadow(
    name: str,
    version: str,
    health_url: Annotated[
        list[str], typer.Option(help="a processor's /health URL (repeat for each)")
    ],
    events: Annotated[
        int, typer.Option(min=1, help="shadow predictions by VERSION, summed over processors")
    ] = 1000,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 3600,
) -> None:
    """Wait until every listed processor shadows NAME at VERSION and EVENTS were scored.

    Prints the counts and when the wait started and ended as JSON; exits 5 with the
    numbers when the timeout comes first.
    """
    from scoring.lifecycle.rollout import wait_for_shadow

    print_report(wait_for_shadow(health_url, name, version, events, timeout))
