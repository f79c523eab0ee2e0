"""No source file of the package is too long to read at once (600 lines at most).

A module past that holds more than one concern; split it along its seams (as the CLI's
command groups, the processor's delivery and the broker's JVM settings were).
"""

from __future__ import annotations

from pathlib import Path

import scoring

LIMIT = 600
PACKAGE = Path(scoring.__file__).parent


def too_long(root: Path, limit: int = LIMIT) -> dict[str, int]:
    """Each ``.py`` file under ``root`` with more than ``limit`` lines, by relative path."""
    counts = {
        str(path.relative_to(root)): len(path.read_text().splitlines())
        for path in sorted(root.rglob("*.py"))
    }
    return {name: lines for name, lines in counts.items() if lines > limit}


def test_the_check_sees_a_long_file(tmp_path: Path) -> None:
    (tmp_path / "short.py").write_text("x = 1\n" * 3)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "long.py").write_text("x = 1\n" * 4)
    assert too_long(tmp_path, limit=3) == {"sub/long.py": 4}


def test_no_module_is_over_the_limit() -> None:
    assert too_long(PACKAGE) == {}
