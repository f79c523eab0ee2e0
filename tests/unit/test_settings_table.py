"""The README's table of settings is the one rendered from the settings model."""

from __future__ import annotations

import subprocess
import sys

from scoring.settings import ENV, PROJECT_ROOT, Settings
from scoring.settings_table import BEGIN, DEFAULTS, END, FLAGS, render


def test_the_readme_holds_the_rendered_table() -> None:
    assert PROJECT_ROOT is not None, "the tests run from a checkout"
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1, f"README: {BEGIN} ... {END}"
    shown = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    assert shown.strip("\n") == render().strip("\n"), (
        "The README's Configuration table is stale: paste the output of "
        "`.venv/bin/python -m scoring.settings_table` in its place."
    )


def test_every_setting_is_a_row_with_its_variable_and_description() -> None:
    table = render()
    for name, field in Settings.model_fields.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"`{ENV[name]}`" in row and field.description and field.description in row
    assert f"`{ENV['config']}`" in table
    assert set(FLAGS) <= set(Settings.model_fields) and set(DEFAULTS) <= set(Settings.model_fields)


def test_python_m_prints_the_table_between_the_markers() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "scoring.settings_table"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert printed == f"{BEGIN}\n{render()}{END}\n"
