"""Executors that get the code from a packed environment, on a worker that has no project.

The standalone worker is started in a bare environment: its own working directory, a
``PATH`` and ``PYSPARK_PYTHON`` that lead to the plain base interpreter (no numpy, no
onnxruntime, no project). The job ships the environment built by ``scoring batch
pack-env`` with ``--archives``; the executors must run their Python from its unpacked copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scoring.batch.job import BatchJob, run
from scoring.batch.pyenv import archive_conf, executor_requirements, pack
from scoring.batch.spark import submit_command
from scoring.settings import PROJECT_ROOT

from tests.integration.conftest import DAYS, job_args, standalone_cluster

pytestmark = pytest.mark.cluster

SOURCES = PROJECT_ROOT / "shared" / "scoring"
PACKED = PROJECT_ROOT / "build" / "packed"
WHEELS = PROJECT_ROOT / "build" / "wheels"  # filled by `make venv`
BASE_PYTHON = Path(getattr(sys, "_base_executable", sys.executable))
PROBE = """
import json
from pyspark.sql import SparkSession

def where(_):
    import sys
    import scoring
    yield json.dumps({"prefix": sys.prefix, "scoring": scoring.__file__})

spark = SparkSession.builder.getOrCreate()
print(spark.sparkContext.parallelize([0], 1).mapPartitions(where).collect()[0])
"""


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pack`` from the wheels ``make venv`` downloaded (no index), kept under ``build/``
    and built again only when the sources or the executors' pins change."""
    digest = hashlib.sha256(json.dumps(executor_requirements()).encode())
    for path in [PROJECT_ROOT / "pyproject.toml", *sorted(SOURCES.rglob("*.py"))]:
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + path.read_bytes())
    archive = PACKED / f"scoring-env-{digest.hexdigest()[:16]}.tar.gz"
    if not archive.exists():
        built = pack(tmp_path_factory.mktemp("packed") / archive.name, wheels=WHEELS)
        PACKED.mkdir(parents=True, exist_ok=True)
        for stale in PACKED.glob("scoring-env-*.tar.gz"):
            stale.unlink()
        shutil.move(built, archive)
    return archive


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    state = tmp_path_factory.mktemp("bare-worker")
    bare = subprocess.run(
        [str(BASE_PYTHON), "-c", "import numpy"], capture_output=True, check=False
    )
    assert bare.returncode != 0, f"{BASE_PYTHON} is not a plain Python: it has numpy"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"}
    }
    env |= {
        "HOME": str(state),
        "PATH": f"{BASE_PYTHON.parent}:/usr/bin:/bin",
        "PYSPARK_PYTHON": str(BASE_PYTHON),
        # Only to find the Spark installation the master and worker JVMs run from.
        "PYTHON": sys.executable,
    }
    with standalone_cluster(state, env) as master:
        yield master, state / "work"


def _submit(command: list[str], tmp_path: Path) -> str:
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "SCORING_HOME": str(tmp_path / "home")},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout.strip().splitlines()[-1]


def test_the_job_scores_on_a_bare_worker_from_the_packed_environment(
    bare_cluster: tuple[str, Path],
    packed: Path,
    spark: SparkSession,
    source_table: str,
    artifact_dir: Path,
    tmp_path: Path,
) -> None:
    master, work_dir = bare_cluster
    scoring = str(Path(sys.executable).parent / "scoring")
    target = tmp_path / "scores"
    job = job_args(artifact_dir, source_table, target, DAYS[0])
    command = [scoring, "batch", "submit", "--master", master, "--python-env", str(packed), *job]
    summary = json.loads(_submit(command, tmp_path))
    assert summary["status"] == "ok" and summary["rows_scored"] > 0

    local = run(
        spark, BatchJob(str(artifact_dir), source_table, str(tmp_path / "local"), date=DAYS[0])
    )
    on_cluster = spark.read.format("delta").load(str(target)).orderBy("transaction_id")
    on_local = spark.read.format("delta").load(local["target"]).orderBy("transaction_id")
    assert on_cluster.count() == on_local.count() == local["rows_scored"]
    assert np.array_equal(
        on_cluster.toArrow()["score"].to_numpy(), on_local.toArrow()["score"].to_numpy()
    )
    assert on_cluster.where(F.col("ds") != DAYS[0]).count() == 0

    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    seen = json.loads(
        _submit(submit_command(probe, [], master, conf=archive_conf(str(packed))), tmp_path)
    )
    prefix = Path(seen["prefix"]).resolve()
    assert prefix.is_relative_to(work_dir.resolve()), seen  # the executor's unpacked archive
    assert prefix.name == "environment"
    assert Path(seen["scoring"]).resolve().is_relative_to(prefix)  # not the checkout's shared/
    assert not prefix.is_relative_to(PROJECT_ROOT)
