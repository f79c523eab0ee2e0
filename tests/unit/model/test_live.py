"""The model follower through a registry outage (the registry faked at its module seam)."""

from __future__ import annotations

from typing import Any

import pytest
from scoring.errors import TrackingServerError
from scoring.lifecycle import registry
from scoring.model import live
from scoring.model.live import LiveModel, ModelFollower


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
    monkeypatch.setattr(live, "load_artifact", lambda uri: loaded.append(uri) or uri)
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
