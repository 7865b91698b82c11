"""Bulk loading of `backtest_runs` with COPY: one loader for seed, demo, import and tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from app.db.connector import Conn

JSON_COLUMNS = frozenset({"params", "dataset_meta", "summary", "regime_oos", "regime_is", "regime_pre"})


def _json(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value  # already JSON text, stored as given
    return orjson.dumps(value).decode()


async def copy_runs(conn: Conn, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> int:
    """COPY run dicts into `backtest_runs`; JSON columns may hold objects or JSON text."""
    records = [tuple(_json(r.get(c)) if c in JSON_COLUMNS else r.get(c) for c in columns) for r in rows]
    if records:
        await conn.copy_records_to_table("backtest_runs", records=records, columns=list(columns))
    return len(records)


async def copy_run_records(conn: Conn, records: list[tuple[Any, ...]], columns: Sequence[str]) -> int:
    """COPY ready-made records (JSON columns already text) into `backtest_runs`."""
    if records:
        await conn.copy_records_to_table("backtest_runs", records=records, columns=list(columns))
    return len(records)
