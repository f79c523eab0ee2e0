"""What the command groups share: the consoles, the error wrapper, gate reports, options."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from scoring.errors import ScoringError

__all__ = [
    "FORWARD_ALL",
    "DateColumn",
    "KafkaBootstrap",
    "KafkaConfigFile",
    "console",
    "errors",
    "iso_date",
    "print_report",
    "user_errors",
]

# Commands that hand every argument, --help included, to a job's own parser.
FORWARD_ALL = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}

console = Console()
errors = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn a ScoringError into its message and exit code instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ScoringError as exc:
            errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from exc

    return wrapper  # type: ignore[return-value]


def print_report(report: dict[str, Any]) -> None:
    """Gate reports: readable on stderr, JSON as the last stdout line for schedulers."""
    errors.print(report)
    print(json.dumps(report, default=str))


def iso_date(text: str | None) -> str | None:
    """An option callback: the date as YYYY-MM-DD, or a usage error (exit 2)."""
    from datetime import date

    if text is None:
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a date like 2026-11-20") from exc


DateColumn = Annotated[str, typer.Option(help="the tables' date column")]
KafkaBootstrap = Annotated[
    str | None, typer.Option(help="Kafka host:port (default KAFKA_BOOTSTRAP_SERVERS)")
]
KafkaConfigFile = Annotated[
    Path | None,
    typer.Option(
        help="Kafka client properties file for a secured cluster (default "
        "SCORING_KAFKA_CONFIG; README: Secured Kafka)"
    ),
]
