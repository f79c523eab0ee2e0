"""Small read-only questions about one date of a Delta table, answered without Spark.

A scheduler's sensor and the output checks need row counts and one or two columns of a
single date; starting a JVM for that would cost more than the answer. These helpers read
the Delta log and the date's Parquet files with delta-rs (``deltalake``) and pyarrow.
Tables are named by path or URI (``/lake/t``, ``s3://bucket/t``); catalog names need a
metastore, which only Spark has.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from scoring.batch.tables import for_delta_rs, is_catalog_name, raise_for_access
from scoring.errors import ConfigError, SourceNotFoundError

__all__ = [
    "count_rows",
    "date_filter",
    "date_predicate",
    "earlier_dates",
    "open_table",
    "read_date",
]

log = logging.getLogger(__name__)


def open_table(table: str, version: int | None = None) -> DeltaTable:
    """The Delta table at ``table`` (a path or URI), at ``version`` or its latest."""
    if is_catalog_name(table):
        raise ConfigError(
            f"{table!r} looks like a catalog table name; this command reads Delta tables by "
            "path or URI (e.g. /lake/fraud_scores or s3://bucket/fraud_scores). Give the "
            "table's location."
        )
    location, options = for_delta_rs(table)
    try:
        return DeltaTable(location, version=version, storage_options=options or None)
    except TableNotFoundError as exc:
        raise_for_access(location, exc)
        raise SourceNotFoundError(location, "there is no Delta table at that location") from exc
    except Exception as exc:  # delta-rs raises plain exceptions for missing versions, I/O
        raise_for_access(location, exc)
        what = f"version {version}" if version is not None else "its latest version"
        raise SourceNotFoundError(
            location, f"{what} could not be opened ({type(exc).__name__}: {exc})"
        ) from exc


def date_filter(schema: pa.Schema, date_column: str, date: str) -> pc.Expression:
    """``date_column == date`` for a date, string or timestamp column."""
    if date_column not in schema.names:
        raise ConfigError(
            f"The table has no date column {date_column!r} (columns: {', '.join(schema.names)})."
        )
    kind = schema.field(date_column).type
    day = dt.date.fromisoformat(date)
    column = pc.field(date_column)
    if pa.types.is_date(kind):
        return column == pa.scalar(day, kind)
    if pa.types.is_timestamp(kind):
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC if kind.tz else None)
        end = start + dt.timedelta(days=1)
        return (column >= pa.scalar(start, kind)) & (column < pa.scalar(end, kind))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column == day.isoformat()
    raise ConfigError(f"The date column {date_column!r} is {kind}; expected a date or a string.")


def date_predicate(schema: pa.Schema, date_column: str, date: str) -> str:
    """:func:`date_filter` as the SQL predicate a delta-rs write replaces (``replaceWhere``)."""
    date_filter(schema, date_column, date)  # the same checks and errors
    kind = schema.field(date_column).type
    day = dt.date.fromisoformat(date)
    column = f'"{date_column}"'
    if pa.types.is_timestamp(kind):
        start = f"CAST('{day.isoformat()}' AS TIMESTAMP)"
        end = f"CAST('{(day + dt.timedelta(days=1)).isoformat()}' AS TIMESTAMP)"
        return f"{column} >= {start} AND {column} < {end}"
    if pa.types.is_date(kind):
        return f"{column} = CAST('{day.isoformat()}' AS DATE)"
    return f"{column} = '{day.isoformat()}'"


def _dataset(table: DeltaTable) -> pads.Dataset:
    return table.to_pyarrow_dataset()


def count_rows(table: str, date: str, date_column: str = "ds", version: int | None = None) -> int:
    """Rows of ``table`` on ``date`` (only that date's files are opened when partitioned)."""
    data = _dataset(open_table(table, version))
    return int(data.count_rows(filter=date_filter(data.schema, date_column, date)))


def read_date(
    table: str,
    date: str,
    columns: Sequence[str],
    date_column: str = "ds",
    version: int | None = None,
) -> pa.Table:
    """``columns`` of the rows of ``table`` on ``date``."""
    data = _dataset(open_table(table, version))
    missing = [c for c in columns if c not in data.schema.names]
    if missing:
        raise ConfigError(f"The table {table} has no column(s) {', '.join(missing)}.")
    return data.to_table(columns=list(columns), filter=date_filter(data.schema, date_column, date))


def earlier_dates(table: str, date: str, date_column: str = "ds", limit: int = 7) -> list[str]:
    """Up to ``limit`` dates before ``date`` that have rows in ``table``, newest first.

    For a table partitioned by ``date_column`` this reads only the Delta log.
    """
    delta = open_table(table)
    if date_column in delta.metadata().partition_columns:
        values = {p[date_column] for p in delta.partitions() if p.get(date_column)}
    else:
        column = _dataset(delta).to_table(columns=[date_column])[date_column]
        values = {str(v) for v in pc.unique(column).to_pylist() if v is not None}
    # Partition values of a date column are ISO dates; a timestamp keeps its date part.
    days = sorted({v[:10] for v in values if v[:10] < date}, reverse=True)
    return days[:limit]
