"""Small Delta tables written with delta-rs, laid out like the batch job's (no JVM)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")


def _day(day: str) -> dt.date:
    return dt.date.fromisoformat(day)


def write_source(path: Path, rows: dict[str, int]) -> str:
    for day, n in rows.items():
        write_deltalake(
            path,
            pa.table(
                {
                    "transaction_id": [f"{day}-{i}" for i in range(n)],
                    "ds": pa.array([_day(day)] * n, pa.date32()),
                    "amount": np.arange(n, dtype=np.float64),
                }
            ),
            partition_by=["ds"],
            mode="append",
        )
    return str(path)


def write_output(
    lake_dir: Path,
    day: str,
    scored: int,
    rejected: int,
    *,
    version: str = "1",
    run: str = "run-1",
    seed: int = 0,
    source_version: int = 2,  # the source's latest: three days, one commit each
) -> None:
    """Write one date of predictions and rejects the way the batch job lays them out."""
    rng = np.random.default_rng(seed)
    lineage = {
        "model_name": "fraud",
        "model_version": version,
        "source_version": source_version,
        "run_id": run,
    }

    def frame(n: int, **columns: object) -> pa.Table:
        base = {
            "transaction_id": [f"{day}-{i}" for i in range(n)],
            "ds": pa.array([_day(day)] * n, pa.date32()),
        }
        data = {**base, **columns, **{k: [v] * n for k, v in lineage.items()}}
        return pa.table(data)

    write_deltalake(
        lake_dir / "scores",
        frame(scored, score=rng.beta(0.6, 30.0, scored), label=[0] * scored),
        partition_by=["ds"],
        mode="append",
    )
    write_deltalake(
        lake_dir / "scores_rejects",
        frame(rejected, reason=["amount: -1.0 is below min 0.0"] * rejected),
        partition_by=["ds"],
        mode="append",
    )
