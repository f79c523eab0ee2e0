"""Loading by URI without MLflow for a folder, and the model follower: a registry outage, an
optional model whose alias comes and goes, and versions that fail to load (the registry
faked at its module seam)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scoring.errors import (
    ArtifactIncompleteError,
    ChecksumMismatchError,
    ModelNotFoundError,
    TrackingServerError,
)
from scoring.lifecycle import loading, registry
from scoring.lifecycle.loading import ModelFollower, follows_alias, load_artifact
from scoring.model.live import LiveModel


def test_a_local_folder_loads_without_importing_mlflow(artifact_dir: Path) -> None:
    code = (
        "import sys; from scoring.lifecycle.loading import load_artifact; "
        f"artifact = load_artifact({str(artifact_dir)!r}); "
        "print(artifact.version, 'mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "False"]


def test_a_uri_that_is_no_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactIncompleteError, match="the folder itself"):
        load_artifact(str(tmp_path / "absent"))


def test_only_an_alias_is_followed() -> None:
    assert follows_alias("models:/fraud@champion")
    assert not follows_alias("models:/fraud/3")
    assert not follows_alias("/models/fraud@champion")


def test_failed_alias_checks_are_counted_and_the_alias_is_followed_again_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: list[Any] = [
        TrackingServerError("http://registry", "could not be reached."),
        TrackingServerError("http://registry", "could not be reached."),
        type("Info", (), {"name": "fraud", "version": "1"})(),
        type("Info", (), {"name": "fraud", "version": "2"})(),
    ]

    def resolve(uri: str) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    loaded: list[str] = []
    monkeypatch.setattr(registry, "resolve", resolve)
    monkeypatch.setattr(loading, "load_artifact", lambda uri: loaded.append(uri) or uri)
    monkeypatch.setattr(LiveModel, "of", classmethod(lambda cls, a, t=1: cls("fraud", a[-1], None)))  # type: ignore[arg-type]
    check_failures: list[Exception] = []
    load_failures: list[Exception] = []
    follower = ModelFollower(
        "models:/fraud@champion",
        LiveModel("fraud", "1", None),  # type: ignore[arg-type]
        poll_s=3600,
        on_failure=load_failures.append,
        on_check_failure=check_failures.append,
    )
    try:
        follower.check()
        follower.check()
        assert follower.check_failures == 2 and len(check_failures) == 2
        assert follower.take() is None and follower.version == "1"  # still scoring with 1
        follower.check()  # back, alias unchanged
        assert follower.check_failures == 0 and follower.take() is None
        follower.check()  # the alias moved while the registry was away
        taken = follower.take()
        assert taken is not None and taken.version == "2"
        assert loaded == ["models:/fraud/2"] and load_failures == []
    finally:
        follower.stop()


class FakeRegistry:
    """What the alias names at each check: a version number, or None (no such alias)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: str | None = None
        self.broken: set[str] = set()
        self.loads: list[str] = []
        monkeypatch.setattr(registry, "resolve", self.resolve)
        monkeypatch.setattr(loading, "load_artifact", self.load)
        monkeypatch.setattr(
            LiveModel,
            "of",
            classmethod(lambda cls, a, t=1: cls("fraud", a.rsplit("/", 1)[-1], None)),
        )

    def resolve(self, uri: str) -> Any:
        if self.names is None:
            raise ModelNotFoundError(uri, "Registered model alias challenger not found.")
        return type("Info", (), {"name": "fraud", "version": self.names})()

    def load(self, uri: str) -> str:
        self.loads.append(uri)
        if uri.rsplit("/", 1)[-1] in self.broken:
            raise ChecksumMismatchError(uri, "a" * 64, "b" * 64, "scoring.json")
        return uri


def test_an_optional_model_starts_with_none_and_follows_the_alias_being_set_and_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeRegistry(monkeypatch)
    follower = ModelFollower("models:/fraud@challenger", None, poll_s=3600, optional=True)
    try:
        follower.check()
        assert follower.current is None and follower.take() is None
        fake.names = "3"
        follower.check()
        assert follower.current is not None and follower.current.version == "3"
        follower.check()  # unchanged: nothing loaded again
        assert fake.loads == ["models:/fraud/3"]
        fake.names = None  # the rollout deleted the alias
        follower.check()
        assert follower.current is None and follower.version is None
        fake.names = "3"  # and set it again, to the same version
        follower.check()
        assert follower.current is not None and follower.current.version == "3"
    finally:
        follower.stop()


def test_a_version_that_fails_to_load_is_tried_again_later_not_at_every_check(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeRegistry(monkeypatch)
    fake.names, fake.broken = "4", {"4"}
    clock = [1000.0]
    monkeypatch.setattr(loading.time, "monotonic", lambda: clock[0])
    failures: list[Exception] = []
    follower = ModelFollower(
        "models:/fraud@challenger", None, poll_s=10, on_failure=failures.append, optional=True
    )
    follower.stop()  # checks are driven by hand below
    follower.check()
    for _ in range(5):  # within the first retry interval
        clock[0] += 1
        follower.check()
    assert len(fake.loads) == 1 and len(failures) == 1 and follower.current is None
    clock[0] += 10
    follower.check()  # tried again, then only after twice as long
    clock[0] += 15
    follower.check()
    assert len(fake.loads) == 2
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1  # the first failure only
    fake.names = "5"  # a new version is loaded at once
    follower.check()
    assert follower.current is not None and follower.current.version == "5"


def test_a_required_model_keeps_scoring_when_its_alias_is_gone_or_broken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeRegistry(monkeypatch)
    check_failures: list[Exception] = []
    follower = ModelFollower(
        "models:/fraud@champion",
        LiveModel("fraud", "1", None),  # type: ignore[arg-type]
        poll_s=3600,
        on_check_failure=check_failures.append,
    )
    try:
        follower.check()  # the alias is gone: a failed check, the champion stays
        assert len(check_failures) == 1
        fake.names, fake.broken = "2", {"2"}
        follower.check()
        assert follower.take() is None and follower.version == "1"
        current = follower.current
        assert current is not None and current.version == "1"
    finally:
        follower.stop()
