"""The built wheel works without the checkout and adds one import name, ``scoring``.

The wheel is built from a copy of the sources (``pip wheel``, as a user would) and
installed with ``--no-deps`` into a fresh venv. So that the test does not install pyspark
and the rest again, the fresh venv sees the project venv's third-party packages through a
``.pth`` line naming its site-packages; the project's own editable install is a ``.pth``
file in that folder too, and Python does not process ``.pth`` files of a folder added this
way, so ``scoring`` can only come from the wheel (the test checks where it was imported
from). Every command then runs from a folder outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from scoring.dev.demo.data import FEATURES, KEY
from scoring.dev.demo.train import TrainedModel
from scoring.dev.kafka_broker import Broker, free_port
from scoring.settings import PROJECT_ROOT
from scoring.stream.events import to_events
from scoring.stream.metrics import fetch_health

from tests.integration.conftest import package_args
from tests.integration.kafka_helpers import Topics, outputs_by_key, produce, read_all

pytestmark = pytest.mark.integration

assert PROJECT_ROOT is not None, "the tests run from a checkout"
CHECKOUT: Path = PROJECT_ROOT
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index"]
PIP_WHEEL += ["--no-build-isolation"]  # offline: the venv's setuptools builds it


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a copy of the sources (the checkout stays free of build output)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(CHECKOUT / name, source / name)
    shutil.copytree(
        CHECKOUT / "shared",
        source / "shared",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [*PIP_WHEEL, "-w", str(dist), str(source)],
        check=True,
    )
    (built,) = dist.glob("scoring-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; third-party packages from the project venv."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "project-venv-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
    )
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A working folder outside the checkout and an environment that cannot reach it."""
    work = tmp_path / "work"
    work.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")
        and not k.startswith("SCORING_")
    }
    env["SCORING_HOME"] = str(tmp_path / "home")
    yield work, env


def _run(
    venv: Path, args: list[str], work: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "scoring"), *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_wheel_adds_only_the_scoring_import_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
        entries = [line.split(",")[0] for line in archive.read(record).decode().splitlines()]
        info = record.rsplit("/", 1)[0]
        top_level = f"{info}/top_level.txt"
        if top_level in names:
            assert archive.read(top_level).decode().split() == ["scoring"]
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    tops = {entry.split("/")[0] for entry in entries if entry}
    assert tops == {"scoring", info}, f"unexpected top-level names: {sorted(tops)}"
    assert "scoring/py.typed" in entries
    assert "scoring/entrypoints/batch_score.py" in entries
    assert "scoring = scoring.cli:main" in entry_points


def test_the_commands_run_from_the_wheel_without_the_checkout(
    venv: Path,
    outside: tuple[Path, dict[str, str]],
    trained: TrainedModel,
    kafka: Broker,
    topics: Topics,
    demo_table: pa.Table,
) -> None:
    work, env = outside
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import scoring; print(scoring.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"scoring imported from {where}"
    assert not Path(where).is_relative_to(CHECKOUT)

    shown = _run(venv, ["--help"], work, env)
    assert shown.returncode == 0, shown.stderr
    assert all(group in shown.stdout for group in ("model", "batch", "stream"))

    packaged = _run(venv, package_args(trained), work, env)
    assert packaged.returncode == 0, packaged.stderr
    assert packaged.stdout.split() == ["1"]

    job = ["--model", "models:/fraud/1", "--source", "/lake/t", "--target", "/lake/s"]
    missing = _run(venv, ["batch", "submit", "--dry-run", "--", *job], work, env)
    assert missing.returncode != 0
    assert "SCORING_JARS_DIR" in missing.stderr and "jars/spark" in missing.stderr
    jars = Path(env["SCORING_HOME"], "jars", "spark")
    jars.mkdir(parents=True)
    (jars / "delta-spark_2.13-4.4.0.jar").write_bytes(b"")  # a dry run only lists them
    dry = _run(venv, ["batch", "submit", "--dry-run", "--", *job], work, env)
    assert dry.returncode == 0, dry.stderr
    command = dry.stdout.split()
    script = next(Path(part) for part in command if part.endswith("batch_score.py"))
    assert script.is_file() and script.is_relative_to(venv)
    assert command[-len(job) :] == job
    assert any(str(jars.resolve()) in part for part in command)

    _stream(venv, work, env, kafka, topics, demo_table)


def _stream(
    venv: Path,
    work: Path,
    env: dict[str, str],
    kafka: Broker,
    topics: Topics,
    demo_table: pa.Table,
) -> None:
    """``scoring stream run`` of the wheel scores events from the real broker."""
    port = free_port()
    log_file = work / "stream.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [
                str(venv / "bin" / "scoring"),
                "stream",
                "run",
                "--model",
                "models:/fraud/1",
                "--bootstrap",
                kafka.bootstrap,
                "--input-topic",
                topics.input,
                "--output-topic",
                topics.output,
                "--dlq-topic",
                topics.dlq,
                "--metrics-port",
                str(port),
            ],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        health: dict[str, object] = {}
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = fetch_health(f"http://127.0.0.1:{port}/health")
            except (OSError, ValueError):
                health = {}
            if health.get("status") == "ok" and health.get("assigned"):
                break
            time.sleep(0.3)
        assert health.get("model_version") == "1", log_file.read_text()[-4000:]
        rows = demo_table.slice(0, 50)
        features = [f.name for f in FEATURES]
        produce(kafka.bootstrap, topics.input, to_events(rows, KEY, features))
        out = read_all(kafka.bootstrap, topics.output, 1, timeout=60, settle=0.5)
        assert out, log_file.read_text()[-4000:]
        assert {p["model_version"] for ps in outputs_by_key(out).values() for p in ps} == {"1"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_file.read_text()[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
