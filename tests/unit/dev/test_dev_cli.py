"""`scoring dev topic` without a broker: what it says, and its exit code (no JVM here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scoring.cli import app
from typer.testing import CliRunner


@pytest.mark.parametrize("command", [["create", "loan_applications"], ["list"]])
def test_topic_commands_without_a_dev_broker_say_how_to_start_one(
    scoring_home: Path, command: list[str]
) -> None:
    result = CliRunner().invoke(app, ["dev", "topic", *command])
    assert result.exit_code == 4, result.output
    assert result.stdout == ""
    assert " ".join(result.stderr.split()) == (
        "error: No Kafka broker of `scoring dev up` is running (its folder: "
        f"{scoring_home.resolve() / 'kafka'}). Start it with `scoring dev up`, then run "
        "this again."
    )
