"""The model core points down only: no module under scoring/model/ imports scoring.lifecycle.

The registry resolves a ``models:/`` URI to a folder and hands that to the model core
(:mod:`scoring.lifecycle.loading`), so the core can be used, and tested, without MLflow.
The check reads the source files, so an import inside a function, a relative import or
an ``importlib.import_module`` of a constant name is caught too, not only what importing
the modules happens to load.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import scoring.model

MODEL_CORE = Path(scoring.model.__file__).parent
FORBIDDEN = "scoring.lifecycle"


def imported(source: str, module: str) -> list[tuple[int, str]]:
    """Every module name ``source`` (the text of ``module``) imports, with its line."""
    package = module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.append((node.lineno, base))
            # `from scoring import lifecycle` imports the package scoring.lifecycle.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and _called(node.func) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _called(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _forbidden(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


def test_the_model_core_imports_nothing_from_the_lifecycle() -> None:
    files = sorted(MODEL_CORE.rglob("*.py"))
    assert {p.name for p in files} >= {"__init__.py", "artifact.py", "contract.py", "live.py"}
    offending = [
        f"{path.relative_to(MODEL_CORE.parent)}:{line} imports {name}"
        for path in files
        for line, name in imported(path.read_text(), _module_of(path))
        if _forbidden(name)
    ]
    assert offending == []


def _module_of(path: Path) -> str:
    relative = path.relative_to(MODEL_CORE.parent.parent).with_suffix("")
    return ".".join(relative.parts)


@pytest.mark.parametrize(
    "source",
    [
        "import scoring.lifecycle.registry",
        "from scoring.lifecycle import registry",
        "from scoring import lifecycle",
        "from ..lifecycle import registry",
        "from .. import lifecycle",
        "def load():\n    from scoring.lifecycle import registry\n    return registry",
        "class A:\n    def f(self):\n        import scoring.lifecycle as lc",
        "import importlib\nimportlib.import_module('scoring.lifecycle.registry')",
    ],
)
def test_the_check_catches_every_spelling_of_the_import(source: str) -> None:
    names = [name for _, name in imported(source, "scoring.model.artifact")]
    assert any(_forbidden(name) for name in names), names


def test_the_check_lets_the_core_import_itself_and_the_errors() -> None:
    source = "from scoring.errors import ContractError\nfrom . import contract\nimport pyarrow"
    names = [name for _, name in imported(source, "scoring.model.artifact")]
    assert not any(_forbidden(name) for name in names)
    assert "scoring.model.contract" in names
