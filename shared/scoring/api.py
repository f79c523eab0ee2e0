"""The public API: load a model by URI and score records, messages or Arrow batches.

This is what ``import scoring`` exports, for teams that embed the scorer in their own
consumers or services. It is the code the jobs run: the artifact is loaded and verified by
:func:`scoring.lifecycle.loading.load_artifact`, rows are checked and scored by
:meth:`scoring.model.artifact.Scorer.score` (as in the batch job), and raw messages and
records are read by :mod:`scoring.model.decode` (as in the stream processor), so a refused
row gets the same reason and reason kind on every path, and fields outside the contract are
ignored on every path.

Example:
    >>> import scoring
    >>> model = scoring.load_model("models:/fraud@champion")  # doctest: +SKIP
    >>> [p.score for p in model.score_records([{"transaction_id": "t1", ...}])]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pyarrow as pa

from scoring.errors import ConfigError
from scoring.lifecycle.loading import ModelFollower, follows_alias, load_artifact
from scoring.model.artifact import ScoredBatch
from scoring.model.contract import Contract
from scoring.model.decode import Decoded, decode, decode_records
from scoring.model.live import LiveModel

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "Model", "Prediction", "load_model"]

# The stream processor's default (--max-message-bytes): larger messages are refused.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Prediction:
    """The outcome for one input row, in input order.

    Attributes:
        key: the row's key (the contract's key field), or None when it could not be read.
        score: the model's score (float64, bit for bit what the batch job writes), or None
            when the row was refused.
        label: ``score >= threshold`` as 0/1 for a binary classifier, else None.
        reason: why the row was refused (None when scored).
        reason_kind: the reason's category, e.g. ``out_of_range`` or ``missing_field``
            (see ``scoring.model.contract.REASON_KINDS`` and
            ``scoring.model.decode.PARSE_KINDS``); None when scored.
        model_name: the registered model that scored (or refused) the row.
        model_version: its version (``local`` for an artifact folder).
    """

    key: str | int | None
    score: float | None
    label: int | None
    reason: str | None
    reason_kind: str | None
    model_name: str
    model_version: str

    @property
    def refused(self) -> bool:
        return self.reason is not None


class Model:
    """A verified model artifact, ready to score, that can follow its registry alias.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or an artifact folder. The
            registry is the one the settings name (``MLFLOW_TRACKING_URI``, else the
            embedded store under ``SCORING_HOME``).
        threads: onnxruntime intra-op threads (one core by default).

    Raises:
        scoring.ScoringError: the model cannot be resolved, or its artifact is incomplete
            or fails its checksum.
    """

    def __init__(self, uri: str, threads: int = 1) -> None:
        self.uri = uri
        self.threads = threads
        self._live = LiveModel.of(load_artifact(uri), threads)
        self._follower: ModelFollower | None = None

    @property
    def name(self) -> str:
        """The registered model's name (an artifact folder's name for a folder)."""
        return self._live.name

    @property
    def version(self) -> str:
        """The version scoring now; ``local`` for an artifact folder."""
        return self._live.version

    @property
    def contract(self) -> Contract:
        """The scoring contract: key, features and their ranges, output and threshold."""
        return self._live.scorer.contract

    def score_batch(self, data: pa.RecordBatch | pa.Table) -> ScoredBatch:
        """Validate and score an Arrow batch whose columns are the contract's features.

        Returns:
            Per input row, in order: ``score`` and ``label`` (null where refused),
            ``reason`` and ``reason_kind`` (null where scored), ``valid``. A missing or
            mistyped column refuses every row with its reason; nothing raises on data.
        """
        return self._live.scorer.score(data)

    def score_records(self, records: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """Score dicts holding the key and every feature (``None`` is a missing value).

        Each record is checked exactly as the same event on Kafka is by the stream
        processor: a missing key or feature, a wrong type, NaN, a value out of range or an
        unknown category refuses the row with a reason. Fields other than the key and the
        features are ignored whatever they hold (a date, a Decimal, a nested dict, ...);
        numpy scalars are the numbers they hold. A key or feature holding a value JSON has
        no type for (a date, a Decimal, bytes) is refused as ``wrong_type`` naming the
        field. Never raises on input. The whole batch is scored by one model version.
        """
        live = self._live
        return predictions(live, decode_records(records, live.scorer.contract))

    def score_messages(
        self, values: Sequence[bytes | None], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> list[Prediction]:
        """Score raw JSON message values, as the stream processor does, one micro-batch.

        Never raises on input: an empty, oversized or unreadable message is refused with
        its reason like any invalid row; fields outside the contract are ignored. The whole
        batch is scored by one model version.
        """
        live = self._live
        return predictions(live, decode(values, live.scorer.contract, max_bytes))

    def refresh(self) -> bool:
        """Switch to the version the alias names now; True if the version changed.

        With :meth:`follow` running this only picks up what the background thread has
        already loaded, so it never blocks; otherwise it asks the registry now. A model
        loaded by version or from a folder never changes. Call it between two batches so
        that a batch is scored by one version.
        """
        if self._follower is not None:
            taken = self._follower.take()
        elif follows_alias(self.uri):
            from scoring.lifecycle import registry  # mlflow: only when an alias is followed

            info = registry.resolve(self.uri)
            if info.version == self.version:
                return False
            artifact = load_artifact(f"models:/{info.name}/{info.version}")
            taken = LiveModel.of(artifact, self.threads)
        else:
            return False
        if taken is None:
            return False
        self._live = taken
        return True

    def follow(self, poll_s: float = 10.0) -> None:
        """Check the alias every ``poll_s`` seconds in a background thread.

        A new version is loaded off the caller's path; :meth:`refresh` switches to it.
        A failed check or load is logged and the current version keeps scoring.

        Raises:
            ConfigError: the model was not loaded through an alias.
        """
        if not follows_alias(self.uri):
            raise ConfigError(
                f"{self.uri!r} names a fixed version or folder; only models:/NAME@ALIAS "
                "can be followed."
            )
        if self._follower is None:
            self._follower = ModelFollower(self.uri, self._live, self.threads, poll_s)

    def close(self) -> None:
        """Stop following the alias (the model keeps scoring with its current version)."""
        if self._follower is not None:
            self._follower.stop()
            self._follower = None

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({self.uri!r}, name={self.name!r}, version={self.version!r})"


def load_model(uri: str, threads: int = 1) -> Model:
    """Load and verify a model: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a folder.

    Args:
        uri: where the model is; an alias is resolved once to its version (see
            :meth:`Model.refresh` and :meth:`Model.follow` to follow it).
        threads: onnxruntime intra-op threads.

    Returns:
        The model, ready to score.
    """
    return Model(uri, threads)


def predictions(
    live: LiveModel, decoded: Decoded, scored: ScoredBatch | None = None
) -> list[Prediction]:
    """One prediction per decoded input, in input order, all from ``live``'s version.

    ``scored``: ``decoded.batch`` already scored by ``live`` (else it is scored here).
    """
    identity = (live.name, live.version)
    if scored is None:
        scored = live.scorer.score(decoded.batch)
    out: list[Prediction | None] = [None] * (len(decoded.rows) + len(decoded.refused))
    for refused in decoded.refused:
        out[refused.index] = Prediction(
            refused.key, None, None, refused.reason, refused.kind, *identity
        )
    scores, labels = scored.score.to_pylist(), scored.label.to_pylist()
    reasons = scored.reason.to_pylist()
    for row, index in enumerate(decoded.rows):
        key = decoded.keys[row]
        if scored.valid[row]:
            out[index] = Prediction(key, scores[row], labels[row], None, None, *identity)
        else:
            kind = scored.kinds[row] or "invalid"
            out[index] = Prediction(key, None, None, reasons[row], kind, *identity)
    return [prediction for prediction in out if prediction is not None]
