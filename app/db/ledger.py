"""The backfill ledger and its per-workspace advisory lock: the only caller of that SQL.

One row per backfill run (kind, configuration, cursor, counts, heartbeat, owner). The
lock is a transaction-level advisory lock keyed by (kind, workspace), held by a
transaction left open on a connection of its own: it holds through a connection pooler
in transaction mode, and ends with that transaction (or the connection). Every write to
a running row is guarded by the run's `owner` token, so a process that lost its lock
(and was taken over by a `--resume` elsewhere) can never write that row again.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from app.db.connector import TRANSIENT_ERRORS, Conn, affected, is_gone
from app.db.sql import q
from app.errors import BackfillLocked

log = logging.getLogger(__name__)

RESUMABLE = ("interrupted", "failed", "limit_reached")


class TakenOver(BackfillLocked):
    """Another process took over this backfill run; this one must not write it again."""


async def acquire_lock(conn: Conn, kind: str, workspace_id: uuid.UUID) -> None:
    """Take the lock on `conn` (a connection of the caller's own) or raise `BackfillLocked`."""
    if await try_lock(conn, kind, workspace_id):
        return
    holder = await conn.fetchval(q("backfill_lock_holder"), workspace_id, kind)
    who = f" (process {holder})" if holder else ""
    raise BackfillLocked(
        f"another backfill-{kind} is running on workspace {workspace_id}{who}; "
        "wait for it to finish or stop it, then try again"
    )


async def try_lock(conn: Conn, kind: str, workspace_id: uuid.UUID) -> bool:
    """Open the holding transaction on `conn` and take the lock in it; when the lock is
    not free the transaction is closed again."""
    await conn.execute(q("begin_lock_transaction"))
    if await conn.fetchval(q("try_backfill_lock"), kind, str(workspace_id)):
        return True
    await conn.execute(q("end_lock_transaction"))
    return False


async def abandon_lock(conn: Conn) -> None:
    """End the holding transaction rolling back what was done in it (a failed undo)."""
    if not is_gone(conn):
        await conn.execute(q("abort_lock_transaction"))


async def release_lock(conn: Conn, kind: str, workspace_id: uuid.UUID) -> None:
    """End the holding transaction (committing what the caller did in it); a closed
    connection has released the lock already."""
    del kind, workspace_id  # the transaction holds exactly this lock
    if is_gone(conn):
        return
    try:
        await conn.execute(q("end_lock_transaction"))
    except TRANSIENT_ERRORS:
        log.debug("lock connection closed while unlocking", exc_info=True)


async def mark_dead_runs_interrupted(conn: Conn, workspace_id: uuid.UUID, kind: str) -> list[uuid.UUID]:
    """Called while holding the lock: any run still marked running has no live process."""
    return [r["id"] for r in await conn.fetch(q("mark_dead_runs_interrupted"), workspace_id, kind)]


async def find_resumable(conn: Conn, workspace_id: uuid.UUID, kind: str, config_key: str,
                         dry_run: bool) -> asyncpg.Record | None:
    return await conn.fetchrow(q("find_resumable_run"), workspace_id, kind, config_key, dry_run)


async def open_run(conn: Conn, workspace_id: uuid.UUID, kind: str, config: dict[str, Any], config_key: str,
                   dry_run: bool, cursor: tuple[datetime, uuid.UUID], owner: uuid.UUID) -> uuid.UUID:
    run_id: uuid.UUID = await conn.fetchval(
        q("insert_backfill_run"), workspace_id, kind, orjson.dumps(config).decode(), config_key, dry_run,
        cursor[0], cursor[1], os.getpid(), owner)
    return run_id


async def reopen_run(conn: Conn, workspace_id: uuid.UUID, run_id: uuid.UUID, owner: uuid.UUID) -> None:
    await conn.execute(q("reopen_backfill_run"), run_id, os.getpid(), owner, workspace_id)


async def checkpoint(conn: Conn, workspace_id: uuid.UUID, run_id: uuid.UUID, owner: uuid.UUID,
                     cursor: tuple[datetime, uuid.UUID], counts_json: str) -> None:
    """Move the cursor and counts, inside the batch's transaction. A run this process no
    longer owns raises `TakenOver`, which rolls the whole batch back."""
    status = await conn.execute(q("checkpoint_backfill_run"), run_id, cursor[0], cursor[1], counts_json, owner,
                                workspace_id)
    if affected(status) != 1:
        raise TakenOver(f"backfill run {run_id} was taken over by another process; committed batches are kept")


async def batch_committed(conn: Conn, workspace_id: uuid.UUID, run_id: uuid.UUID,
                          cursor: tuple[datetime, uuid.UUID]) -> bool:
    """After a lost COMMIT acknowledgement: did the batch ending at `cursor` commit?"""
    return bool(await conn.fetchval(q("backfill_cursor_is"), run_id, cursor[0], cursor[1], workspace_id))


async def committed_counts(conn: Conn, workspace_id: uuid.UUID, run_id: uuid.UUID) -> str | None:
    """The counts the ledger holds for a run, as JSON text."""
    value: str | None = await conn.fetchval(q("backfill_run_counts"), run_id, workspace_id)
    return value


async def heartbeat(conn: Conn, workspace_id: uuid.UUID, run_id: uuid.UUID, owner: uuid.UUID) -> None:
    status = await conn.execute(q("heartbeat_backfill_run"), run_id, owner, workspace_id)
    if affected(status) != 1:
        raise TakenOver(f"backfill run {run_id} was taken over by another process; committed batches are kept")


async def close_run(conn: Conn, workspace_id: uuid.UUID, run_id: uuid.UUID, owner: uuid.UUID, status: str,
                    error: str | None) -> bool:
    """Record the end of a run this process still owns; False when it no longer does."""
    result = await conn.execute(q("close_backfill_run"), run_id, status, error, owner, workspace_id)
    return affected(result) == 1


async def owns_running(conn: Conn, workspace_id: uuid.UUID, run_id: uuid.UUID, owner: uuid.UUID) -> bool:
    row = await conn.fetchrow(q("backfill_run_status"), run_id, workspace_id)
    return row is not None and row["status"] == "running" and row["owner"] == owner


async def get_run(conn: Conn, run_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(q("get_backfill_run"), run_id)


async def list_runs(conn: Conn, workspace_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
    """The ledger of a workspace, newest first, as JSON-ready rows."""
    return [row_json(r) for r in await conn.fetch(q("list_backfill_runs"), workspace_id, limit)]


def row_json(r: Any) -> dict[str, Any]:
    """The JSON shape of one ledger row (CLI `backfill-runs`, status and the API)."""
    return {
        "id": str(r["id"]), "kind": r["kind"], "dry_run": r["dry_run"], "status": r["status"],
        "config": orjson.loads(r["config"]), "counts": orjson.loads(r["counts"]),
        "started_at": r["started_at"].isoformat(), "heartbeat_at": r["heartbeat_at"].isoformat(),
        "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
        "invocations": r["invocations"], "error": r["error"],
    }


async def open_undo_run(conn: Conn, workspace_id: uuid.UUID, undo_of: uuid.UUID) -> uuid.UUID:
    run_id: uuid.UUID = await conn.fetchval(q("insert_undo_run"), workspace_id, str(undo_of))
    return run_id


async def complete_undo_run(conn: Conn, workspace_id: uuid.UUID, run_id: uuid.UUID, *, reverted: int,
                            changed_since: int, already_undone: int) -> None:
    await conn.execute(q("complete_undo_run"), run_id, reverted, changed_since, already_undone, workspace_id)


async def mark_undone(conn: Conn, workspace_id: uuid.UUID, run_id: uuid.UUID) -> None:
    await conn.execute(q("mark_backfill_run_undone"), run_id, workspace_id)

