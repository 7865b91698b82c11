"""Bulk loading of `backtest_runs` with COPY: one loader for seed, demo, import and tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg
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
    return await copy_run_records(conn, records, columns)


async def copy_run_records(conn: Conn, records: list[tuple[Any, ...]], columns: Sequence[str]) -> int:
    """COPY ready-made records (JSON columns already text) into `backtest_runs`."""
    if records:
        await copy_records(conn, "backtest_runs", records, columns)
    return len(records)


async def copy_records(conn: Conn, table: str, records: list[tuple[Any, ...]], columns: Sequence[str]) -> None:
    """COPY that fails, rather than waits forever, when its connection is lost. asyncpg's
    COPY waits for the socket to take more data whenever the server falls behind, and a
    lost connection does not wake that wait; so the connection's end cancels the COPY,
    and the loss is raised as the error a lost connection gives (writers retry on it)."""
    copying = asyncio.ensure_future(conn.copy_records_to_table(table, records=records, columns=list(columns)))
    lost = False

    def on_lost(_conn: object) -> None:
        nonlocal lost
        lost = True
        copying.cancel()

    conn.add_termination_listener(on_lost)
    try:
        await copying
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if lost and (current is None or not current.cancelling()):
            raise asyncpg.exceptions.ConnectionDoesNotExistError("the connection was lost during COPY") from None
        raise
    finally:
        # A lost connection has left its pool already, and its listeners with it.
        with contextlib.suppress(asyncpg.exceptions.InterfaceError):
            conn.remove_termination_listener(on_lost)
