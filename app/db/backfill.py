"""The backfills' reads and guarded writes on `backtest_runs` (the ledger and its lock are in `ledger`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from app.db.connector import Conn, Database, affected
from app.db.sql import q
from app.db.trials import Record

Cursor = tuple[datetime, uuid.UUID]


async def candidacy_page(conn: Conn, workspace_id: uuid.UUID, after: Cursor, size: int) -> Sequence[Record]:
    return await conn.fetch(q("select_candidacy_page"), workspace_id, after[0], after[1], size)


async def candidacy_run(db: Database, workspace_id: uuid.UUID, run_id: uuid.UUID) -> Record | None:
    return await db.fetchrow(q("select_candidacy_run"), run_id, workspace_id)


async def promote_candidates(conn: Conn, run_ids: list[uuid.UUID], workspace_id: uuid.UUID,
                             backfill_run_id: uuid.UUID) -> int:
    """Guarded update to `candidate`; the count is of history rows, one per updated run."""
    return affected(await conn.execute(q("update_candidacy_batch"), run_ids, workspace_id, backfill_run_id))


async def regime_page(conn: Conn, workspace_id: uuid.UUID, after: Cursor, size: int,
                      symbol: str | None) -> Sequence[Record]:
    return await conn.fetch(q("select_regime_page"), workspace_id, after[0], after[1], size, symbol)


async def write_regimes(conn: Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID], oos: list[Any],
                        in_sample: list[Any], pre: list[Any], backfill_run_id: uuid.UUID) -> int:
    """Guarded write of the snapshots of runs that still have none."""
    return affected(await conn.execute(q("update_regime_batch"), run_ids, oos, in_sample, workspace_id, pre,
                                       backfill_run_id))


async def undo_candidacy(conn: Conn, workspace_id: uuid.UUID, backfill_run_id: uuid.UUID,
                         undo_id: uuid.UUID) -> tuple[Record, list[Record], int]:
    """Revert the runs a candidacy backfill changed (unless changed since): the counts, examples of
    runs left alone, and how many were undone before."""
    result = await conn.fetchrow(q("undo_backfill_changes"), backfill_run_id, undo_id, workspace_id)
    assert result is not None  # an aggregate always returns its row
    examples = list(await conn.fetch(q("undo_skipped_examples"), backfill_run_id, undo_id, workspace_id))
    already = int(await conn.fetchval(q("undo_already_undone"), backfill_run_id, undo_id, workspace_id))
    return result, examples, already


async def undo_regime(conn: Conn, backfill_run_id: uuid.UUID, workspace_id: uuid.UUID) -> int:
    return int(await conn.fetchval(q("undo_regime_changes"), backfill_run_id, workspace_id))


async def run_window_stats(db: Database | Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID]) -> list[Record]:
    """Per run: bars in its OOS window and the sets tried on that window with their Sharpe variance."""
    return list(await db.fetch(q("run_window_stats"), workspace_id, run_ids))


async def workspace_window_stats(conn: Conn, workspace_id: uuid.UUID,
                                 chunk: int = 20_000) -> AsyncIterator[list[Record]]:
    """The sets tried and their Sharpe variance on every window of the workspace with more
    than one set, by window key, `chunk` rows at a time (one scan, in one transaction)."""
    async with conn.transaction(readonly=True):
        cursor = await conn.cursor(q("workspace_window_stats"), workspace_id)
        while rows := await cursor.fetch(chunk):
            yield list(rows)


async def run_window_keys(conn: Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID]) -> list[Record]:
    """Per run: its Sharpe, OOS bars, timeframe and window key (see `workspace_window_stats`)."""
    return list(await conn.fetch(q("run_window_keys"), workspace_id, run_ids))


async def count_candidacy_after(conn: Conn, workspace_id: uuid.UUID, after: Cursor) -> int:
    return int(await conn.fetchval(q("count_candidacy_after"), workspace_id, after[0], after[1]))


async def count_regime_after(conn: Conn, workspace_id: uuid.UUID, after: Cursor, symbol: str | None) -> int:
    return int(await conn.fetchval(q("count_regime_after"), workspace_id, after[0], after[1], symbol))


async def runs_without_regime_by_symbol(db: Database, workspace_id: uuid.UUID) -> dict[str | None, int]:
    return {r["symbol"]: int(r["runs"]) for r in await db.fetch(q("runs_without_regime_by_symbol"), workspace_id)}
