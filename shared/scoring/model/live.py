"""The model scoring now: its scorer and the identity every prediction records.

A :class:`LiveModel` is what a path swaps between two batches when a registry alias moves
(:class:`scoring.lifecycle.loading.ModelFollower` loads the new one off the hot path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scoring.model.artifact import Artifact, Scorer

__all__ = ["LiveModel"]


@dataclass(frozen=True)
class LiveModel:
    """The model scoring now: its scorer and the identity every prediction records."""

    name: str
    version: str
    scorer: Scorer

    @classmethod
    def of(cls, artifact: Artifact, threads: int = 1) -> LiveModel:
        name = artifact.name or Path(artifact.source).name
        return cls(name, artifact.version or "local", artifact.scorer(threads))
