"""The model scoring now, and a follower that keeps it on the version a registry alias names.

Both the stream processor and code that embeds the scorer (a faust agent, a team's own
consumer) follow ``models:/NAME@ALIAS`` this way: a background thread checks the alias
every ``poll_s`` seconds and loads a new version off the hot path; the caller picks it up
with :meth:`ModelFollower.take` between two batches, so a batch is scored by one version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scoring.model.artifact import Artifact, Scorer, load_artifact

__all__ = ["LiveModel", "ModelFollower", "follows_alias"]

log = logging.getLogger(__name__)


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


def follows_alias(uri: str) -> bool:
    """Whether ``uri`` names a registry alias (``models:/NAME@ALIAS``) that can move."""
    return uri.startswith("models:/") and "@" in uri


class ModelFollower:
    """Follows a registry alias and loads the version it points to, off the hot path.

    Args:
        uri: ``models:/NAME@ALIAS``.
        current: the version scoring now; nothing is loaded until the alias moves away.
        threads: onnxruntime intra-op threads of the loaded versions' sessions.
        poll_s: seconds between two checks of the alias.
        on_failure: called (from the follower's thread) when loading a newly aliased
            version fails; the current version keeps scoring.
        on_check_failure: called (from the follower's thread) when the alias could not be
            checked at all, e.g. while the registry is down or refuses the credentials;
            the current version keeps scoring and the next check tries again.
    """

    def __init__(
        self,
        uri: str,
        current: LiveModel,
        threads: int = 1,
        poll_s: float = 10.0,
        on_failure: Callable[[Exception], None] | None = None,
        on_check_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self.uri, self.version = uri, current.version
        self.threads, self.poll_s = threads, poll_s
        self.on_failure = on_failure
        self.on_check_failure = on_check_failure
        self.check_failures = 0
        self._pending: LiveModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-follower", daemon=True)
        self._thread.start()

    def take(self) -> LiveModel | None:
        """The newly loaded version, once; ``None`` while the alias has not moved."""
        with self._lock:
            pending, self._pending = self._pending, None
            return pending

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def check(self) -> None:
        """Look at the alias once and load the version it names if that is new."""
        from scoring.lifecycle import registry

        try:
            info = registry.resolve(self.uri)
        except Exception as exc:  # registry down or refusing: keep scoring, try again later
            self.check_failures += 1
            log.warning(
                "could not check %s (%s failure%s in a row so far): %s; still scoring with "
                "version %s",
                self.uri,
                self.check_failures,
                "" if self.check_failures == 1 else "s",
                type(exc).__name__,
                self.version,
            )
            if self.on_check_failure is not None:
                self.on_check_failure(exc)
            return
        if self.check_failures:
            log.info("%s reachable again after %s failed checks", self.uri, self.check_failures)
            self.check_failures = 0
        if info.version == self.version:
            return
        try:
            log.info("%s now points to version %s; loading it", self.uri, info.version)
            model = LiveModel.of(load_artifact(f"models:/{info.name}/{info.version}"), self.threads)
        except Exception as exc:  # keep scoring with the current version whatever happened
            log.exception("could not load the version %s points to", self.uri)
            if self.on_failure is not None:
                self.on_failure(exc)
            return
        with self._lock:
            self._pending, self.version = model, model.version
