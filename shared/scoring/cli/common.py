"""What the command groups share: the consoles, the error wrapper, gate reports, options."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from scoring.errors import ScoringError
from scoring.masking import masked, unexpected

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
log = logging.getLogger(__name__)


def user_errors(func: F) -> F:
    """Turn a ScoringError into its message and exit code instead of a traceback.

    Any other exception is a bug or a failure nobody foresaw: its traceback is logged and
    the command exits 1. Either way every secret the process knows is masked
    (``scoring.masking``: the Kafka clients' and the secret environment variables'), in
    the printed line and in the traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # the command line's own exits and usage errors
        except ScoringError as exc:
            _print_error(masked(str(exc)))
            raise typer.Exit(exc.exit_code) from exc
        except Exception as exc:
            _print_error(unexpected(exc, log))
            raise typer.Exit(1) from exc

    return wrapper  # type: ignore[return-value]


def _print_error(message: str) -> None:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


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
    str | None,
    typer.Option(
        help="Kafka host:port (default KAFKA_BOOTSTRAP_SERVERS, then the --kafka-config "
        "file's bootstrap.servers)"
    ),
]
KafkaConfigFile = Annotated[
    Path | None,
    typer.Option(
        help="Kafka client properties file for a secured cluster (default "
        "SCORING_KAFKA_CONFIG; README: Secured Kafka)"
    ),
]
