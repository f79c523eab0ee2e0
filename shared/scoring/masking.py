"""Secrets kept out of every line the process writes: logs, errors, summaries.

One process-wide :class:`SecretsFilter` knows every secret the process was told of (a Kafka
client's passwords, through :func:`mask_in_logs`) and the values of the environment
variables that libraries read secrets from (:data:`SECRET_VARIABLES`). It sits on the root
logger's handlers; :func:`masked` applies it to what is printed rather than logged (an
``error:`` line, a JSON summary, a ``/health`` field).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable

__all__ = ["MASK", "SECRET_VARIABLES", "SecretsFilter", "mask_in_logs", "masked", "unexpected"]

MASK = "***"

# Environment variables holding secrets that libraries read for themselves (the AWS SDKs
# in S3A and delta-rs, MLflow's client): their errors could quote them, so they are masked
# like the Kafka client's secrets; so is the server's own bearer token.
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "SCORING_SERVE_TOKEN",
)


class SecretsFilter(logging.Filter):
    """Masks known secret values in every log record that passes through a handler.

    The clients never log a password on purpose; this catches the accidental case (an
    exception that quotes its configuration). Attach it to handlers, not loggers, so that
    records of child loggers are filtered too. A secret is masked as written and as
    ``repr()`` or JSON quote it (a quoted configuration doubles its backslashes).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask ``secrets`` too, from now on."""
        known = set(self._secrets)
        for secret in secrets:
            # Very short values would mask ordinary words; no real secret is that short.
            if len(secret) >= 4:
                known.update((secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]))
        # Longest first: a secret that contains another is masked whole.
        self._secrets = sorted(known, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        masked = self.mask(message)
        if record.exc_info and record.exc_text is None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        if masked != message:
            record.msg, record.args = masked, None
        return True

    def mask(self, text: str) -> str:
        """``text`` with every secret replaced by :data:`MASK`."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


# The process's one filter: every secret it was told of, on every root handler.
_SECRETS = SecretsFilter()


def mask_in_logs(secrets: Iterable[str] = ()) -> None:
    """Mask the process's secrets in every line the root logger's handlers write from now on.

    The secrets are ``secrets`` (added to those of earlier calls, e.g. a Kafka client's
    ``KafkaClientConfig.secrets()``) and the values of :data:`SECRET_VARIABLES` in the
    environment; :func:`masked` masks the same ones. Lines logged while the root logger
    has no handler (Python's last resort) are masked too.
    """
    _SECRETS.add(_environment_secrets())
    _SECRETS.add(secrets)
    for handler in (*logging.getLogger().handlers, logging.lastResort):
        if handler is not None:
            handler.addFilter(_SECRETS)


def masked(text: str) -> str:
    """``text`` with every secret of the process masked, for what is printed, not logged.

    The secrets are those :func:`mask_in_logs` was given and the current values of
    :data:`SECRET_VARIABLES`.
    """
    _SECRETS.add(_environment_secrets())
    return _SECRETS.mask(text)


def _environment_secrets() -> list[str]:
    return [os.environ[name] for name in SECRET_VARIABLES if os.environ.get(name)]


def unexpected(exc: BaseException, log: logging.Logger) -> str:
    """Log the traceback of an error nobody foresaw (masked); the masked line to print."""
    mask_in_logs()
    log.error("unexpected error", exc_info=exc)
    return masked(f"unexpected {type(exc).__name__}: {exc} (the traceback is in the log above)")
