"""Loading a model by URI, and following a registry alias to the version it names.

:func:`load_artifact` is the one loader both paths use (the batch job, the stream
processor, the public API): it resolves ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``
through the registry, downloads that version's folder and hands it to the model core
(:func:`scoring.model.artifact.read_artifact_dir`), which reads and verifies it; a local
folder goes to the model core as it is, without importing MLflow.

Both the stream processor and code that embeds the scorer (a faust agent, a team's own
consumer) follow ``models:/NAME@ALIAS`` with :class:`ModelFollower`: a background thread
checks the alias every ``poll_s`` seconds and loads a new version off the hot path; the
caller picks it up with :meth:`ModelFollower.take` between two batches, so a batch is
scored by one version. A follower of an optional model (a challenger in the champion's
shadow) may start with none, and has none while its alias names no version or one that
cannot be loaded; the caller reads :attr:`ModelFollower.current` between two batches.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from scoring.errors import ArtifactIncompleteError, ModelNotFoundError
from scoring.model.artifact import Artifact, read_artifact_dir
from scoring.model.live import LiveModel

__all__ = ["ModelFollower", "follows_alias", "load_artifact"]

log = logging.getLogger(__name__)


def load_artifact(uri: str) -> Artifact:
    """Resolve ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a local folder, verified.

    A registry URI is resolved once to its immutable version; the returned artifact
    carries that version, which is what every prediction records.
    """
    if not uri.startswith("models:/"):
        path = Path(uri)
        if not path.is_dir():
            raise ArtifactIncompleteError(uri, "the folder itself")
        return read_artifact_dir(path, uri)
    from scoring.lifecycle import registry  # mlflow is heavy; local-path loading does not need it

    version = registry.resolve(uri)
    with tempfile.TemporaryDirectory(prefix="scoring-model-") as tmp:
        local = registry.download(version, Path(tmp))
        return read_artifact_dir(
            local,
            f"{uri} (version {version.version})",
            expected_sha=version.sha256,
            name=version.name,
            version=version.version,
        )


def follows_alias(uri: str) -> bool:
    """Whether ``uri`` names a registry alias (``models:/NAME@ALIAS``) that can move."""
    return uri.startswith("models:/") and "@" in uri


class ModelFollower:
    """Follows a registry alias and loads the version it points to, off the hot path.

    Args:
        uri: ``models:/NAME@ALIAS``.
        current: the version scoring now; nothing is loaded until the alias moves away.
            ``None``: nothing is loaded yet, and the first check runs at once.
        threads: onnxruntime intra-op threads of the loaded versions' sessions.
        poll_s: seconds between two checks of the alias.
        on_failure: called (from the follower's thread) when loading a newly aliased
            version fails. A version that failed is tried again after ``poll_s``, then
            after twice as long each time, up to 10 minutes, and logged with its traceback
            only the first time: a broken version does not flood the log.
        on_check_failure: called (from the follower's thread) when the alias could not be
            checked at all, e.g. while the registry is down or refuses the credentials;
            the current version keeps scoring and the next check tries again.
        optional: whether the model may be absent (a shadow's challenger). Then an alias
            that names no version (not set yet, or deleted) or names one that cannot be
            loaded leaves :attr:`current` ``None``; a required model (the champion) keeps
            its current version in both cases.
    """

    MAX_RETRY_S = 600.0

    def __init__(
        self,
        uri: str,
        current: LiveModel | None,
        threads: int = 1,
        poll_s: float = 10.0,
        on_failure: Callable[[Exception], None] | None = None,
        on_check_failure: Callable[[Exception], None] | None = None,
        optional: bool = False,
    ) -> None:
        self.uri, self.threads, self.poll_s, self.optional = uri, threads, poll_s, optional
        self.on_failure = on_failure
        self.on_check_failure = on_check_failure
        self.check_failures = 0
        # The version the alias named when it was last acted on (None: it named none).
        self.version: str | None = current.version if current else None
        self._current = current
        self._fresh = False  # _current changed since the last take()
        self._named = True  # whether the alias named a version at the last check
        self._failed: str | None = None  # the version whose load failed, tried again at:
        self._failed_times = 0
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-follower", daemon=True)
        self._thread.start()

    @property
    def current(self) -> LiveModel | None:
        """The version to score with now (for a required model, the last that loaded).

        ``None`` only for an optional model: its alias names no version that loaded.
        """
        with self._lock:
            return self._current

    def take(self) -> LiveModel | None:
        """The newly loaded version, once; ``None`` while the alias has not moved."""
        with self._lock:
            if not self._fresh:
                return None
            self._fresh = False
            return self._current

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        if self._current is None:
            self.check()
        while not self._stop.wait(self.poll_s):
            self.check()

    def check(self) -> None:
        """Look at the alias once and load the version it names if that is new."""
        from scoring.lifecycle import registry

        try:
            info = registry.resolve(self.uri)
        except ModelNotFoundError as exc:
            if not self.optional:
                self._check_failed(exc)
                return
            self._reachable()
            if self._named or self._current is not None:
                log.info("%s names no version: nothing to score with it", self.uri)
            self._named, self._failed = False, None
            self._set(None)
            return
        except Exception as exc:  # registry down or refusing: keep scoring, try again later
            self._check_failed(exc)
            return
        self._reachable()
        self._named = True
        if info.version == self.version:
            return
        if info.version == self._failed and time.monotonic() < self._retry_at:
            return
        try:
            log.info("%s now points to version %s; loading it", self.uri, info.version)
            model = LiveModel.of(load_artifact(f"models:/{info.name}/{info.version}"), self.threads)
        except Exception as exc:  # keep scoring with the current version whatever happened
            self._load_failed(info.version, exc)
            return
        self._failed = None
        self._set(model)

    def _set(self, model: LiveModel | None) -> None:
        with self._lock:
            if model is self._current:
                return
            self._current, self._fresh = model, True
            self.version = model.version if model else None

    def _reachable(self) -> None:
        if self.check_failures:
            log.info("%s reachable again after %s failed checks", self.uri, self.check_failures)
            self.check_failures = 0

    def _check_failed(self, exc: Exception) -> None:
        self.check_failures += 1
        log.warning(
            "could not check %s (%s failure%s in a row so far): %s; still scoring with version %s",
            self.uri,
            self.check_failures,
            "" if self.check_failures == 1 else "s",
            type(exc).__name__,
            self.version,
        )
        if self.on_check_failure is not None:
            self.on_check_failure(exc)

    def _load_failed(self, version: str, exc: Exception) -> None:
        if version != self._failed:
            self._failed, self._failed_times = version, 0
            log.exception("could not load version %s, which %s points to", version, self.uri)
        else:
            log.warning("could not load version %s of %s again: %s", version, self.uri, exc)
        self._failed_times += 1
        wait = min(self.MAX_RETRY_S, self.poll_s * 2 ** (self._failed_times - 1))
        self._retry_at = time.monotonic() + wait
        if self.optional:
            self._set(None)  # what the alias names now cannot score: score with nothing
        kept = f"still scoring with version {self.version}" if self._current else "no model"
        log.info("%s: %s; next try in %.0f s", self.uri, kept, wait)
        if self.on_failure is not None:
            self.on_failure(exc)
