"""Real Spark (local[2]) with Delta Lake, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from shared.demo.run import write_demo_table
from shared.spark import build_session

START = date(2026, 11, 1)
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
ROWS_PER_DAY = 3000


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    home = tmp_path_factory.mktemp("spark-home")
    session = build_session(
        "scoring-tests",
        master="local[2]",
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.sql.warehouse.dir": str(home / "warehouse"),
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def source_table(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three days of demo transactions as a Delta table partitioned by ``ds``."""
    path = str(tmp_path_factory.mktemp("lake") / "transactions")
    write_demo_table(spark, path, days=len(DAYS), rows_per_day=ROWS_PER_DAY, start=START)
    return path


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


def job_args(
    model: Path | str, source: str, target: Path | str, date: str | None = None
) -> list[str]:
    """Command-line options of jobs/batch/score.py."""
    args = ["--model", str(model), "--source", source, "--target", str(target)]
    return args + (["--date", date] if date else [])
