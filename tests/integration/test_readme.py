"""The README's commands work as written.

Every fenced block preceded by ``<!-- readme-test -->`` runs, in README order, in one bash
session from the checkout, right after the demo (`make demo` runs ``scoring demo``; here
with fewer rows and no stream part, the data it leaves has the same tables, dates and
model). Bash blocks run as they are; a Python block runs with the venv's ``python``.
Every other command block says why it is not run: ``<!-- readme-skip: REASON -->``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from scoring.batch import lake
from scoring.dev.demo.run import lake_paths
from scoring.settings import PROJECT_ROOT

from tests.integration.airflow.airflow_helpers import (
    SPARK_TASKS,
    Airflow,
    env_from_script,
    seed_db,
)

pytestmark = pytest.mark.integration

assert PROJECT_ROOT is not None, "the tests run from a checkout"
README = PROJECT_ROOT / "README.md"
MARK = "<!-- readme-test -->"
SKIP = re.compile(r"<!-- readme-skip: (.+?) -->")
# Blocks run by tests/integration/test_readme_own_data.py, in a folder of a user's files.
OWN_DATA = re.compile(r"<!-- readme-own-data(: .+?)? -->")
COMMANDS = ("bash", "python")  # the other fenced blocks show files (properties, a tree)
DEMO = "scoring demo --rows-per-day 1000 --days 7 --stream-events 0"


def marked_blocks(text: str, mark: str = MARK) -> list[tuple[str, str]]:
    """(language, code) of every fenced block right after ``mark``, in order."""
    pattern = re.escape(mark) + r"\n```(\w+)\n(.*?)\n```"
    return [(m.group(1), m.group(2)) for m in re.finditer(pattern, text, flags=re.S)]


def script_of(blocks: list[tuple[str, str]]) -> str:
    lines = ["set -euo pipefail", "source .venv/bin/activate", DEMO]
    for index, (language, code) in enumerate(blocks):
        lines.append(f"echo '--- README block {index} ({language})' >&2")
        if language == "bash":
            lines.append(code)
        elif language == "python":
            lines += ["python - <<'README_PYTHON'", code, "README_PYTHON"]
        else:
            raise AssertionError(f"no runner for a marked {language} block")
    return "\n".join(lines) + "\n"


def unmarked_commands(text: str) -> list[str]:
    """The first line of every command block with neither mark (nor a reason to skip)."""
    found = []
    for block in re.finditer(r"^```(\w*)\n(.*?)\n```$", text, flags=re.S | re.M):
        language, code = block.group(1), block.group(2)
        before = text[: block.start()].rstrip("\n").rsplit("\n", 1)[-1]
        run_elsewhere = SKIP.fullmatch(before) or OWN_DATA.fullmatch(before)
        if language in COMMANDS and before != MARK and not run_elsewhere:
            found.append(code.splitlines()[0])
    return found


def test_every_command_block_is_run_or_says_why_not() -> None:
    assert unmarked_commands("x\n```bash\nmake it\n```\n") == ["make it"]
    assert unmarked_commands("<!-- readme-skip: a cloud -->\n```bash\nmake it\n```\n") == []
    assert unmarked_commands("<!-- readme-own-data -->\n```bash\nmake it\n```\n") == []
    assert unmarked_commands(README.read_text()) == []


def test_marked_blocks_are_found() -> None:
    text = "a\n" + MARK + "\n```bash\necho 1\n```\n\n```bash\nnot marked\n```\n"
    text += MARK + "\n```python\nprint(2)\n```\n"
    assert marked_blocks(text) == [("bash", "echo 1"), ("python", "print(2)")]


def test_the_readme_blocks_run_in_order_after_the_demo(tmp_path: Path, airflow_db: Path) -> None:
    blocks = marked_blocks(README.read_text())
    languages = [language for language, _ in blocks]
    assert languages.count("python") >= 1 and languages.count("bash") >= 1, languages
    home = tmp_path / "scoring"
    # The DB env.sh would migrate on first use, already migrated (env.sh did that too).
    seed_db(home, airflow_db)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "SCORING_", "MLFLOW_"))
        and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["SCORING_HOME"] = str(home)  # where ./.scoring would be; the checkout's stays as is
    result = subprocess.run(
        ["bash", "-c", script_of(blocks)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "fraud" in result.stdout  # the embedding example printed the model's name
    # Its two demo rows (which carry the `ds` date) score; a bare key is refused.
    scored = re.findall(r"^(20261107-0000000[01]) (\S+) ([01]) None None \S+$", result.stdout, re.M)
    assert [key for key, _, _ in scored] == ["20261107-00000000", "20261107-00000001"], output
    assert all(0.0 <= float(score) <= 1.0 for _, score, _ in scored)
    assert re.search(r"^t-x None None missing_field amount: missing \S+$", result.stdout, re.M)

    # The Airflow block scored 2026-11-06 on the default engine, every task successful.
    airflow = Airflow(env_from_script({"SCORING_HOME": str(home)}))
    run_id = airflow.last_run_id("nightly_batch_scoring")
    assert airflow.ran_one_engine("nightly_batch_scoring", run_id, skipped=SPARK_TASKS)
    tables = lake_paths(home)
    assert lake.count_rows(tables["fraud_scores"], "2026-11-06") > 0
