"""The KB tables (`kb_trials`, `kb_evidence`, the revision counter): every query the
ingest, recommend, evaluate and status code runs on them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from app.db.connector import Conn, Database, affected
from app.db.sql import q, unnest_columns

log = logging.getLogger(__name__)

Record = asyncpg.Record
# Row tuples for the unnest writes are built in the order the SQL names its columns.
TRIAL_COLUMNS = unnest_columns("upsert_trials")
EVIDENCE_COLUMNS = unnest_columns("upsert_evidence")


def columns_of(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Row tuples as one list per column: the arrays an `unnest` insert takes."""
    return [list(c) for c in zip(*rows, strict=True)]


async def kb_revision(db: Database | Conn, workspace_id: uuid.UUID) -> int:
    """The workspace's KB revision: bumped by every ingest that changes trials or evidence."""
    return int(await db.fetchval(q("trial_revision"), workspace_id) or 0)


async def bump_revision(conn: Conn, workspace_id: uuid.UUID) -> None:
    await conn.execute(q("bump_trial_revision"), workspace_id)


async def load_trials(db: Database, workspace_id: uuid.UUID, strategy: str) -> list[Record]:
    return list(await db.fetch(q("load_trials"), workspace_id, strategy))


async def load_evidence(db: Database, workspace_id: uuid.UUID, strategy: str) -> list[Record]:
    return list(await db.fetch(q("load_evidence"), workspace_id, strategy))


async def ingest_page(conn: Conn, workspace_id: uuid.UUID, after: tuple[datetime, uuid.UUID],
                      size: int) -> list[Record]:
    return list(await conn.fetch(q("select_ingest_page"), workspace_id, after[0], after[1], size))


async def existing_trial_hashes(conn: Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID]) -> dict[Any, Record]:
    return {r["source_run_id"]: r for r in await conn.fetch(q("existing_trial_hashes"), workspace_id, run_ids)}


async def upsert_trials(conn: Conn, workspace_id: uuid.UUID, rows: Sequence[tuple[Any, ...]]) -> list[Record]:
    return list(await conn.fetch(q("upsert_trials"), workspace_id, *columns_of(rows)))


async def upsert_evidence(conn: Conn, workspace_id: uuid.UUID, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert or update evidence rows (unchanged ones are skipped); returns how many changed."""
    if not rows:
        return 0
    return len(await conn.fetch(q("upsert_evidence"), workspace_id, *columns_of(rows)))


async def delete_stale_evidence(conn: Conn, workspace_id: uuid.UUID) -> int:
    """Evidence whose run no longer qualifies (not completed, or its regime removed)."""
    return affected(await conn.execute(q("delete_stale_evidence"), workspace_id))


async def count_stale_trials(conn: Conn, workspace_id: uuid.UUID) -> int:
    return int(await conn.fetchval(q("count_stale_trials"), workspace_id))


async def archive_stale_trials(conn: Conn, workspace_id: uuid.UUID) -> int:
    return affected(await conn.execute(q("archive_stale_trials"), workspace_id))


async def status_counts(db: Database, workspace_id: uuid.UUID) -> dict[str, Any]:
    """Runs by kb_status, eligible runs and active trials per strategy, archived trials."""
    async with db.acquire() as conn:
        return {
            "by_status": {r["kb_status"]: r for r in await conn.fetch(q("status_runs_by_kb_status"), workspace_id)},
            "eligible": {r["strategy"]: r["n"] for r in await conn.fetch(q("status_eligible_by_strategy"),
                                                                         workspace_id)},
            "trials": {r["strategy"]: r["n"] for r in await conn.fetch(q("status_trials_by_strategy"), workspace_id)},
            "archived": int(await conn.fetchval(q("status_archived_trials"), workspace_id)),
        }


async def trial_window_stats(conn: Conn, workspace_id: uuid.UUID) -> list[Record]:
    return list(await conn.fetch(q("trial_window_stats"), workspace_id))


async def trials_awaiting_dsr(conn: Conn, workspace_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval(q("trials_awaiting_dsr"), workspace_id))


async def update_trial_dsr(conn: Conn, workspace_id: uuid.UUID, rows: Sequence[tuple[Any, ...]]) -> int:
    """Write (trial id, dsr, inputs JSON) rows; returns how many were written."""
    if not rows:
        return 0
    return affected(await conn.execute(q("update_trial_dsr"), workspace_id, *columns_of(rows)))


async def load_walkforward(db: Database, workspace_id: uuid.UUID, strategy: str, scope_key: str,
                           revision: int) -> tuple[str, str] | None:
    """The stored check of this revision and scope, as (model JSON, summary JSON)."""
    row = await db.fetchrow(q("load_walkforward"), workspace_id, strategy, scope_key, revision)
    return None if row is None else (row["model"], row["summary"])


async def save_walkforward(db: Database, workspace_id: uuid.UUID, strategy: str, scope_key: str, revision: int,
                           model: str, summary: str) -> bool:
    """Store a check; best effort: a read-only database (a standby, a read-only role) still
    answers, it only replays again next time. Returns whether it was stored."""
    try:
        await db.execute(q("save_walkforward"), workspace_id, strategy, scope_key, revision, model, summary)
    except asyncpg.exceptions.ReadOnlySQLTransactionError:
        log.info("database is read-only: walk-forward check of %s not stored", strategy)
        return False
    return True


async def analyze_kb_tables(conn: Conn) -> None:
    await conn.execute(q("analyze_kb_tables"))
