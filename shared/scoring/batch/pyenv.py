"""The executors' Python environment as one archive, for clusters without a shared path.

Spark's documented way for Python code on a cluster whose nodes do not share a path with
the machine that submits: a packed virtual environment passed with ``--archives
env.tar.gz#environment`` and ``spark.pyspark.python=./environment/bin/python``. Each
executor unpacks it into its own working directory.

:func:`pack` builds that archive with venv-pack from a fresh virtual environment holding
this project (a regular install, not an editable one pointing back at a checkout) and the
packages the executors import, pinned to the versions installed here, so executors score
with exactly the onnxruntime, numpy and pyarrow of the driver. pyspark itself is left out:
each executor's Python runs Spark's own ``pyspark.zip`` from the worker's installation.
A packed venv uses the base interpreter at the same path on the target
(``--python-prefix`` of venv-pack otherwise): install that plain Python on the workers.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from scoring.errors import ConfigError
from scoring.settings import PROJECT_ROOT

__all__ = ["ARCHIVE_ALIAS", "archive_conf", "download_wheels", "executor_requirements", "pack"]

log = logging.getLogger(__name__)

ARCHIVE_ALIAS = "environment"
# What an executor's Python worker imports to run the batch job's scoring function.
_EXECUTOR_MODULES = ("scoring.batch.job", "pyspark.worker")
_PROVIDED = {"pyspark", "py4j", "scoring"}


def archive_conf(archive: str, driver_python: str | None = None) -> dict[str, str]:
    """Spark settings that ship ``archive`` and run the executors' Python from it.

    The driver (client mode) keeps its own interpreter.
    """
    return {
        "spark.archives": f"{archive}#{ARCHIVE_ALIAS}",
        "spark.pyspark.python": f"./{ARCHIVE_ALIAS}/bin/python",
        "spark.pyspark.driver.python": driver_python or sys.executable,
    }


def executor_requirements() -> list[str]:
    """``name==version`` of every installed distribution the executors' code imports."""
    script = (
        "import importlib, json, sys\n"
        "from importlib.metadata import packages_distributions, version\n"
        f"for m in {_EXECUTOR_MODULES!r}: importlib.import_module(m)\n"
        "dists = packages_distributions()\n"
        "names = {d for m in list(sys.modules) for d in dists.get(m.split('.')[0], [])}\n"
        "print(json.dumps(sorted(f'{n}=={version(n)}' for n in names)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    pinned = json.loads(result.stdout.strip().splitlines()[-1])
    return [p for p in pinned if p.split("==")[0].lower() not in _PROVIDED]


def download_wheels(folder: Path) -> Path:
    """Fetch the wheels of :func:`executor_requirements` and of what they need into ``folder``.

    With them, :func:`pack` needs no package index: for machines cut off from one, and
    so the tests run offline once set up.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:"]
    subprocess.run([*pip, "-d", str(folder), *executor_requirements()], check=True)
    return folder


def pack(output: Path, project: Path | None = PROJECT_ROOT, wheels: Path | None = None) -> Path:
    """Build the executors' environment and pack it into ``output`` (``.tar.gz``).

    With ``wheels`` (a folder filled by :func:`download_wheels`) nothing is fetched: the
    packages come from that folder and the project's wheel is built with this
    interpreter's setuptools, not in an isolated build environment.
    """
    if project is None or not (project / "pyproject.toml").is_file():
        raise ConfigError(f"{project} is not a checkout of the project (no pyproject.toml).")
    try:
        import venv_pack
    except ImportError as exc:
        raise ConfigError("Packing needs venv-pack: pip install venv-pack.") from exc
    requirements = executor_requirements()
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scoring-pyenv-") as tmp:
        env = Path(tmp) / "env"
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(env)], check=True)
        pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q"]
        if wheels is not None:
            pip += ["--no-index", "--find-links", str(wheels)]
        log.info("installing %s into the executors' environment", ", ".join(requirements))
        subprocess.run([*pip, *requirements], check=True)
        # The project without its dependencies: the driver-only ones (mlflow, pyspark, ...)
        # stay out; what the executors import was pinned above.
        subprocess.run(
            [*pip, "--no-deps", str(_project_wheel(project, Path(tmp), wheels))], check=True
        )
        venv_pack.pack(prefix=str(env), output=str(output), force=True)
    return output


def _project_wheel(project: Path, tmp: Path, wheels: Path | None) -> Path:
    """The project as a wheel (offline with ``wheels``: built by this interpreter)."""
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist")]
    if wheels is not None:
        build += ["--no-index", "--no-build-isolation"]
    subprocess.run([*build, str(project)], check=True)
    (wheel,) = (tmp / "dist").glob("*.whl")
    return wheel
