"""A deterministic card-transaction feature table for the demo, tests and benchmarks.

Twenty features (numeric, categorical, some nullable), a string key, a date column and a
fraud label drawn from a known logistic model, so a trained model has real signal. A
small share of rows break the contract on purpose (negative amounts, unknown countries,
NaN) so the rejects path has something to do.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scoring.model.contract import Feature

__all__ = ["CATEGORIES", "FEATURES", "KEY", "LABEL", "generate_day", "write_parquet"]

KEY = "transaction_id"
DATE = "ds"
LABEL = "is_fraud"

CATEGORIES: dict[str, tuple[str, ...]] = {
    "merchant_category": (
        "grocery",
        "fuel",
        "travel",
        "electronics",
        "restaurants",
        "online_retail",
        "gambling",
        "jewelry",
        "pharmacy",
        "other",
    ),
    "channel": ("pos", "online", "atm", "phone"),
    "country": ("US", "GB", "DE", "FR", "BR", "IN", "NG", "CN", "JP", "CA"),
    "device_type": ("mobile", "desktop", "tablet", "terminal"),
    "card_type": ("credit", "debit", "prepaid"),
}

# name, nullable, min, max
_NUMERIC: tuple[tuple[str, bool, float | None, float | None], ...] = (
    ("amount", False, 0.0, 50_000.0),
    ("hour", False, 0.0, 23.0),
    ("day_of_week", False, 0.0, 6.0),
    ("customer_age", True, 18.0, 110.0),
    ("account_age_days", False, 0.0, 40_000.0),
    ("txn_count_1h", False, 0.0, None),
    ("txn_count_24h", False, 0.0, None),
    ("amount_avg_30d", True, 0.0, None),
    ("amount_std_30d", True, 0.0, None),
    ("distance_from_home_km", True, 0.0, 20_100.0),
    ("distance_from_last_txn_km", True, 0.0, 20_100.0),
    ("minutes_since_last_txn", True, 0.0, None),
    ("failed_logins_24h", False, 0.0, None),
    ("card_present", False, 0.0, 1.0),
    ("credit_limit", False, 0.0, None),
)
_NULLABLE_CATEGORIES = {"merchant_category", "device_type"}

FEATURES: tuple[Feature, ...] = tuple(
    Feature(name=n, type="double", nullable=nullable, min=lo, max=hi)
    for n, nullable, lo, hi in _NUMERIC
) + tuple(
    Feature(name=n, type="string", nullable=n in _NULLABLE_CATEGORIES, categories=cats)
    for n, cats in CATEGORIES.items()
)


def _with_nulls(rng: np.random.Generator, values: np.ndarray, share: float) -> pa.Array:
    return pa.array(values, mask=rng.random(values.size) < share)


def generate_day(day: date, rows: int, seed: int = 7, bad_share: float = 0.002) -> pa.Table:
    """One day's transactions; the same (day, rows, seed) always gives the same table."""
    rng = np.random.default_rng([seed, day.toordinal(), rows])
    cat = {n: rng.choice(len(c), size=rows) for n, c in CATEGORIES.items()}
    amount = np.round(rng.lognormal(3.5, 1.2, rows), 2)
    hour = rng.integers(0, 24, rows)
    age = rng.integers(18, 90, rows).astype(np.float64)
    account_age = rng.integers(0, 9000, rows)
    count_1h = rng.poisson(0.3, rows)
    count_24h = count_1h + rng.poisson(2.5, rows)
    avg_30d = np.round(amount * rng.lognormal(0, 0.4, rows), 2)
    std_30d = np.round(avg_30d * rng.uniform(0.1, 1.0, rows), 2)
    home = np.round(rng.exponential(25, rows), 3)
    last = np.round(rng.exponential(15, rows), 3)
    since = np.round(rng.exponential(600, rows), 1)
    failed = rng.poisson(0.1, rows)
    present = (rng.random(rows) < 0.6).astype(np.int64)
    limit = rng.choice([1000, 2500, 5000, 10000, 25000], size=rows).astype(np.float64)
    # Fraud: big unusual amounts, night hours, far from home, online, risky merchants.
    logit = (
        -9.0
        + 1.2 * np.log1p(amount / np.maximum(avg_30d, 1.0))
        + 1.6 * ((hour < 5) | (hour > 22))
        + 1.0 * np.log1p(home / 50)
        + 1.8 * (cat["channel"] == 1)
        + 2.4 * np.isin(cat["merchant_category"], [6, 7])
        + 1.4 * (cat["card_type"] == 2)
        + 1.5 * failed
        + 0.8 * count_1h
        - 0.8 * present
        - 0.0002 * account_age
    )
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int32)

    if bad_share > 0:  # rows that break the contract on purpose
        bad = rng.random(rows) < bad_share
        amount = np.where(bad & (rng.random(rows) < 0.5), -1.0, amount)
        amount = np.where(bad & (amount >= 0), np.nan, amount)
    country = np.array(CATEGORIES["country"], dtype=object)[cat["country"]]
    if bad_share > 0:
        country = np.where(rng.random(rows) < bad_share / 2, "ZZ", country)

    columns: dict[str, pa.Array] = {
        KEY: pa.array([f"{day:%Y%m%d}-{i:08d}" for i in range(rows)]),
        DATE: pa.array(np.full(rows, day), pa.date32()),
        "amount": pa.array(amount),
        "hour": pa.array(hour),
        "day_of_week": pa.array(np.full(rows, day.weekday())),
        "customer_age": _with_nulls(rng, age, 0.03),
        "account_age_days": pa.array(account_age),
        "txn_count_1h": pa.array(count_1h),
        "txn_count_24h": pa.array(count_24h),
        "amount_avg_30d": _with_nulls(rng, avg_30d, 0.05),
        "amount_std_30d": _with_nulls(rng, std_30d, 0.05),
        "distance_from_home_km": _with_nulls(rng, home, 0.04),
        "distance_from_last_txn_km": _with_nulls(rng, last, 0.04),
        "minutes_since_last_txn": _with_nulls(rng, since, 0.08),
        "failed_logins_24h": pa.array(failed),
        "card_present": pa.array(present),
        "credit_limit": pa.array(limit),
    }
    for name, values in CATEGORIES.items():
        picked = np.array(values, dtype=object)[cat[name]]
        if name == "country":
            picked = country
        share = 0.03 if name in _NULLABLE_CATEGORIES else 0.0
        columns[name] = _with_nulls(rng, picked, share) if share else pa.array(picked, pa.string())
    columns[LABEL] = pa.array(label)
    return pa.table(columns)


def write_parquet(folder: Path, start: date, days: int, rows_per_day: int) -> list[Path]:
    """Write ``days`` days of data as one parquet file per day; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        path = folder / f"{DATE}={day.isoformat()}.parquet"
        pq.write_table(generate_day(day, rows_per_day), path)
        files.append(path)
    return files
