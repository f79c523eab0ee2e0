"""The one root exception and its subclasses.

Every failure a user can cause is a subclass of :class:`ScoringError` whose message says
what was wrong and what to do about it. Entry points catch ``ScoringError``, print the
message and exit with :attr:`ScoringError.exit_code`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ArtifactIncompleteError",
    "BrokerError",
    "ChecksFailedError",
    "ChecksumMismatchError",
    "ConfigError",
    "ContractError",
    "ConversionError",
    "ConversionMismatchError",
    "GateFailedError",
    "JarsMissingError",
    "ModelNotFoundError",
    "NoDataError",
    "RollbackError",
    "SchemaMismatchError",
    "ScoringError",
    "SourceNotFoundError",
    "StorageAccessError",
    "StreamError",
    "TableFeatureError",
    "TrackingServerError",
    "UnsupportedModelError",
    "did_you_mean",
]


def did_you_mean(word: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the one of ``valid`` closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ScoringError(Exception):
    """Root of every error this project raises on purpose."""

    exit_code = 1


class ConfigError(ScoringError):
    """A setting is missing or invalid."""

    exit_code = 2


class ModelNotFoundError(ScoringError):
    """A registry has no such model name, version or alias (or the URI names none)."""

    def __init__(self, uri: str, detail: str, registry: str | None = None) -> None:
        # registry: which registry was asked and how to ask another; a user who ran the
        # command from the wrong folder or environment sees where the answer came from.
        message = f"Model {uri!r} could not be resolved: {detail.rstrip('.')}."
        super().__init__(f"{message} {registry}" if registry else message)


class ArtifactIncompleteError(ScoringError):
    def __init__(self, location: str, missing: str) -> None:
        super().__init__(
            f"The model artifact at {location} is incomplete: {missing} is missing. "
            "Re-package the model with `scoring model package`."
        )


class ChecksumMismatchError(ScoringError):
    def __init__(self, location: str, expected: str, actual: str, against: str) -> None:
        super().__init__(
            f"The ONNX graph at {location} does not match its {against}: expected SHA-256 "
            f"{expected}, found {actual}. The artifact was altered or partly copied; refusing "
            "to load it. Re-package the model or restore the original files."
        )


class ContractError(ScoringError):
    """A scoring contract is malformed or does not fit the graph it describes."""

    exit_code = 2


class UnsupportedModelError(ScoringError):
    exit_code = 2


class ConversionError(ScoringError):
    """A converter refused the model: which step, the converter's reason, how to fix it."""

    exit_code = 2

    def __init__(self, converter: str, where: str, reason: str, advice: str) -> None:
        self.where = where
        super().__init__(
            f"{converter} cannot convert {where} to ONNX: {reason.rstrip('.')}. {advice} "
            "Nothing was registered."
        )


class ConversionMismatchError(ScoringError):
    def __init__(self, max_diff: float, tolerance: float, rows: int, worst_row: int) -> None:
        self.max_diff = max_diff
        super().__init__(
            f"The converted ONNX graph disagrees with the native model: max absolute score "
            f"difference {max_diff:.3g} over {rows} sample rows (worst at row {worst_row}) "
            f"exceeds the tolerance {tolerance:.3g}. Nothing was registered. This is usually a "
            "converter limitation; try another estimator or converter version, or raise "
            "--tolerance only if that difference is acceptable."
        )


class SchemaMismatchError(ScoringError):
    exit_code = 3

    def __init__(self, source: str, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"The source {source} does not match the model's scoring contract; nothing was "
            f"written.\n{lines}\nFix the source table or score it with a model whose "
            "contract fits."
        )


class SourceNotFoundError(ScoringError):
    exit_code = 3

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"The source table {source} could not be read: {detail}")


class StorageAccessError(ScoringError):
    """The object store refused the credentials (wrong key, expired token, no permission)."""

    exit_code = 3

    def __init__(self, table: str, code: str) -> None:
        super().__init__(
            f"The object store refused access to {table} ({code}). "
            "Check the credentials the AWS provider chain finds (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE or the instance role), "
            "AWS_ENDPOINT_URL and AWS_REGION, and that they may read the source and write "
            "the targets."
        )


class TableFeatureError(ScoringError):
    """A Delta table uses a feature the embedded engine cannot read or write safely."""

    exit_code = 3

    def __init__(self, table: str, features: Iterable[str], action: str) -> None:
        names = ", ".join(features)
        super().__init__(
            f"The Delta table {table} uses {names}, which the arrow engine (delta-rs) cannot "
            f"{action} safely; nothing was written. Score it on Spark instead: "
            "--engine python, or `scoring batch submit`."
        )


class TrackingServerError(ScoringError):
    """The MLflow tracking server refused the credentials or could not be reached."""

    exit_code = 2

    def __init__(self, uri: str, detail: str) -> None:
        super().__init__(f"The MLflow tracking server at {uri} {detail}")


class JarsMissingError(ScoringError):
    def __init__(self, jars_dir: str, detail: str | None = None) -> None:
        super().__init__(
            f"The Delta Lake jars from {jars_dir} are not loaded: "
            + (detail or "that folder has none")
            + ". Resolve them once with `make jars` in a checkout of the project (Maven, "
            "infra/pom.xml, into infra/jars), then point the setting jars_dir "
            "(SCORING_JARS_DIR) at that folder, or copy them into $SCORING_HOME/jars/spark "
            "(the default when the project is installed from a wheel)."
        )


class RollbackError(ScoringError):
    exit_code = 2


class BrokerError(ScoringError):
    """The local Kafka broker (scoring.dev.kafka_broker) could not be started or stopped."""


class StreamError(ScoringError):
    """The stream processor cannot start or go on (missing topic, fenced, no broker)."""

    exit_code = 4


class NoDataError(ScoringError):
    """The source has no rows for the date yet: a scheduler's sensor keeps waiting on it."""

    exit_code = 4

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(
            f"The source {source} has no rows {detail} yet. Wait for the day's load to land, "
            "or check the table path, the date and the date column."
        )


class ChecksFailedError(ScoringError):
    """A batch run's output failed one or more data checks (counts, rejects, drift)."""

    exit_code = 5

    def __init__(self, what: str, failures: Iterable[str]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(
            f"Output checks failed for {what}:\n{lines}\nLook at the rejects table and the run "
            "report; fix the source and re-run the date, or raise the threshold if the change "
            "is expected."
        )


class GateFailedError(ScoringError):
    """A candidate model version failed a rollout gate; it must not become (or stay) champion."""

    exit_code = 5

    def __init__(self, gate: str, detail: str) -> None:
        self.gate = gate
        super().__init__(f"The {gate} failed: {detail}.")
