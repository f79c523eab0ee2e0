"""``scoring demo``: the whole path on generated data, end to end (``scoring.dev.demo``)."""

from __future__ import annotations

from typing import Annotated

import typer

from scoring.cli.common import console, user_errors

__all__ = ["demo"]


@user_errors
def demo(
    rows_per_day: Annotated[int, typer.Option(help="demo rows per day")] = 20_000,
    days: Annotated[int, typer.Option(help="days of demo data")] = 7,
    stream_events: Annotated[
        int, typer.Option(help="events streamed through Kafka afterwards (0: batch only)")
    ] = 3_000,
    secure: Annotated[
        bool,
        typer.Option(
            help="stream over the local broker's SASL_SSL listener with its client file "
            "(as `scoring dev up --secure`)"
        ),
    ] = False,
) -> None:
    """Train, package, promote, batch-score one date, then score it live on Kafka."""
    from scoring.dev.demo.run import run_demo

    run_demo(
        console, rows_per_day=rows_per_day, days=days, stream_events=stream_events, secure=secure
    )
