"""The KB tables (`kb_trials`, `kb_evidence`, the revision counter): every query the
ingest, recommend, evaluate and status code runs on them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
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


async def begin_write(conn: Conn, workspace_id: uuid.UUID) -> int:
    """Inside a transaction: wait for the workspace's other KB writers, and return the
    revision this write stamps on the rows it changes."""
    return int(await conn.fetchval(q("begin_kb_write"), workspace_id))


async def bump_revision(conn: Conn, workspace_id: uuid.UUID, revision: int, strategies: Iterable[str] = (),
                        reset: Iterable[str] = ()) -> None:
    """Move the workspace, and the strategies changed, to this write's revision; `reset`:
    the strategies whose rows already there changed or left (their caches rebuild)."""
    await conn.execute(q("bump_trial_revision"), workspace_id, revision)
    changed = sorted(set(strategies) | set(reset))
    if changed:
        await conn.execute(q("bump_strategy_revisions"), workspace_id, revision, changed, sorted(set(reset)))


async def strategy_revision(db: Database | Conn, workspace_id: uuid.UUID, strategy: str) -> tuple[int, int]:
    """A strategy's (revision, reset revision): (0, 0) before anything was written."""
    row = await db.fetchrow(q("strategy_revision"), workspace_id, strategy)
    return (0, 0) if row is None else (int(row["revision"]), int(row["reset_revision"]))


async def rows_fingerprint(db: Database, kind: str, workspace_id: uuid.UUID, strategy: str,
                           revision: int) -> tuple[int, str, int]:
    """(rows, digest, reset revision) of a strategy's rows up to `revision` that a matrix of
    `kind` (trials or evidence) is built from, in one statement's snapshot."""
    row = await db.fetchrow(q("rows_fingerprint"), workspace_id, strategy, revision, kind)
    assert row is not None  # an aggregate always returns its row
    return int(row["n"]), str(row["digest"]), int(row["reset"])


LOAD_CHUNK = 20_000  # rows per fetch of a matrix load: what it holds as records at once


@dataclass
class Snapshot:
    """A strategy's rows as of one revision, read from a cursor in chunks."""

    revision: int
    after: int  # the rows are those written after this revision; -1: all of them
    cursor: Any

    async def chunks(self, size: int = LOAD_CHUNK) -> AsyncIterator[list[Record]]:
        while rows := await self.cursor.fetch(size):
            yield list(rows)


@asynccontextmanager
async def strategy_snapshot(db: Database, query: str, workspace_id: uuid.UUID, strategy: str,
                            after: int) -> AsyncIterator[Snapshot]:
    """A strategy's (revision) and a cursor over its rows written after revision `after`
    (-1: all), in one snapshot: the rows are exactly those of that revision. After a
    reset (rows already loaded changed or left) every row is read again."""
    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        revision, reset = await strategy_revision(conn, workspace_id, strategy)
        if reset > after >= 0:
            after = -1
        yield Snapshot(revision, -1 if after < 0 else after, await conn.cursor(q(query), workspace_id, strategy, after))


async def trial_dsr(db: Database, workspace_id: uuid.UUID, trial_ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    return {r["id"]: r["dsr"] for r in await db.fetch(q("trial_details"), workspace_id, trial_ids)}


async def ingest_page(conn: Conn, workspace_id: uuid.UUID, after: tuple[datetime, uuid.UUID],
                      size: int) -> list[Record]:
    return list(await conn.fetch(q("select_ingest_page"), workspace_id, after[0], after[1], size))


async def changed_runs_page(conn: Conn, workspace_id: uuid.UUID, snapshot: str, after: tuple[str, uuid.UUID],
                            size: int) -> list[Record]:
    """Runs written by transactions that `snapshot` did not see, keyset on (kb_xid, id)."""
    return list(await conn.fetch(q("select_changed_runs_page"), workspace_id, snapshot, after[0], after[1], size))


async def current_snapshot(db: Database | Conn) -> str:
    return str(await db.fetchval(q("current_snapshot")))


async def ingest_snapshot(db: Database | Conn, workspace_id: uuid.UUID) -> str | None:
    """The snapshot the workspace's last complete ingest read under (None: never ingested)."""
    value = await db.fetchval(q("ingest_snapshot"), workspace_id)
    return None if value is None else str(value)


async def save_ingest_snapshot(conn: Conn, workspace_id: uuid.UUID, snapshot: str) -> None:
    await conn.execute(q("save_ingest_snapshot"), workspace_id, snapshot)


async def existing_trial_hashes(conn: Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID]) -> dict[Any, Record]:
    return {r["source_run_id"]: r for r in await conn.fetch(q("existing_trial_hashes"), workspace_id, run_ids)}


# Writing a KB row whose run is gone (deleted after the row's page was read).
RUN_DELETED = asyncpg.ForeignKeyViolationError


async def runs_still_there(conn: Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    return {r["id"] for r in await conn.fetch(q("runs_still_there"), workspace_id, run_ids)}


async def upsert_trials(conn: Conn, workspace_id: uuid.UUID, rows: Sequence[tuple[Any, ...]],
                        revision: int) -> list[Record]:
    """Rows (inserted, strategy_name, old_strategy) of the trials inserted or changed."""
    return list(await conn.fetch(q("upsert_trials"), workspace_id, *columns_of(rows), revision))


async def upsert_evidence(conn: Conn, workspace_id: uuid.UUID, rows: Sequence[tuple[Any, ...]],
                          revision: int) -> list[Record]:
    """Insert or update evidence rows (unchanged ones are skipped); rows as `upsert_trials`."""
    if not rows:
        return []
    return list(await conn.fetch(q("upsert_evidence"), workspace_id, *columns_of(rows), revision))


async def delete_stale_evidence(conn: Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID] | None) -> int:
    """Evidence whose run no longer qualifies (not completed, or its regime removed), of
    these runs (None: of every run)."""
    return affected(await conn.execute(q("delete_stale_evidence"), workspace_id, run_ids))


async def count_stale_trials(conn: Conn, workspace_id: uuid.UUID) -> int:
    return int(await conn.fetchval(q("count_stale_trials"), workspace_id))


async def archive_stale_trials(conn: Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID] | None) -> list[str]:
    """Archive the trials of these runs (None: of every run) that left the KB; returns the
    strategy of each trial archived."""
    return [r["strategy_name"] for r in await conn.fetch(q("archive_stale_trials"), workspace_id, run_ids)]


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


async def trial_window_stats(conn: Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID] | None,
                             chunk: int = 20_000) -> AsyncIterator[list[Record]]:
    """Per active trial in the windows of these runs (None: in every window), its window's
    figures, `chunk` rows at a time from a cursor (inside the caller's transaction), so a
    workspace of any size is read in bounded memory."""
    query, args = (("trial_window_stats", (workspace_id,)) if run_ids is None
                   else ("trial_window_stats_of_runs", (workspace_id, run_ids)))
    cursor = await conn.cursor(q(query), *args)
    while rows := await cursor.fetch(chunk):
        yield list(rows)


async def trials_awaiting_dsr(conn: Conn, workspace_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval(q("trials_awaiting_dsr"), workspace_id))


async def mark_trials_without_dsr(conn: Conn, workspace_id: uuid.UUID, inputs: str,
                                  run_ids: list[uuid.UUID] | None) -> int:
    return affected(await conn.execute(q("mark_trials_without_dsr"), workspace_id, inputs, run_ids))


async def update_trial_dsr(conn: Conn, workspace_id: uuid.UUID, rows: Sequence[tuple[Any, ...]]) -> int:
    """Write (trial id, dsr, inputs JSON) rows; returns how many were written."""
    if not rows:
        return 0
    return affected(await conn.execute(q("update_trial_dsr"), workspace_id, *columns_of(rows)))


async def load_walkforward(db: Database, workspace_id: uuid.UUID, strategy: str,
                           scope_key: str) -> tuple[int, str, str] | None:
    """The newest stored check of this scope, as (revision, model JSON, summary JSON)."""
    row = await db.fetchrow(q("load_walkforward"), workspace_id, strategy, scope_key)
    return None if row is None else (int(row["revision"]), row["model"], row["summary"])


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


async def kb_estimated_rows(conn: Conn) -> int:
    return int(await conn.fetchval(q("kb_estimated_rows")))


async def analyze_kb_tables(conn: Conn) -> None:
    await conn.execute(q("analyze_kb_tables"))
