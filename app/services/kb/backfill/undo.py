"""backfill-undo: revert exactly what one backfill changed (candidacy: the kb_status
changes, from history; regime: the snapshots it wrote)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from app.db import Database, ledger
from app.db.connector import Conn
from app.db.sql import q
from app.errors import BadInput, NotFound


@dataclass(frozen=True)
class UndoResult:
    backfill_run_id: uuid.UUID
    undo_run_id: uuid.UUID
    changed_by_backfill: int
    reverted: int
    changed_since: int
    changed_since_examples: list[tuple[str, str]]
    already_undone: int = 0


async def undo_backfill(db: Database, backfill_run_id: uuid.UUID) -> UndoResult:
    """Revert the runs a backfill changed, from its history rows, in one transaction.

    Runs whose status changed again after the backfill are left alone and reported; runs
    an earlier undo reverted are counted as already undone.
    """
    async with db.acquire() as conn:
        row = await ledger.get_run(conn, backfill_run_id)
        if row is None:
            raise NotFound(f"no backfill run {backfill_run_id}; `kb backfill-runs` lists them")
        if row["kind"] not in ("candidacy", "regime"):
            raise BadInput(f"backfill run {backfill_run_id} is a {row['kind']} run; only backfills can be undone")
        if row["dry_run"]:
            raise BadInput(f"backfill run {backfill_run_id} was a dry run and changed nothing")
        workspace_id = row["workspace_id"]
        if row["kind"] == "regime":
            return await _undo_regime(conn, backfill_run_id, workspace_id, row)
        await ledger.acquire_lock(conn, "candidacy", workspace_id)
        try:
            async with conn.transaction():
                undo_id = await ledger.open_undo_run(conn, workspace_id, backfill_run_id)
                result = await conn.fetchrow(q("undo_backfill_changes"), backfill_run_id, undo_id)
                assert result is not None  # an aggregate query always returns its one row
                examples = await conn.fetch(q("undo_skipped_examples"), backfill_run_id, undo_id)
                already = int(await conn.fetchval(q("undo_already_undone"), backfill_run_id, undo_id))
                reverted, changed = int(result["reverted"]), int(result["changed_by_backfill"])
                changed_since = max(changed - reverted - already, 0)
                await ledger.complete_undo_run(conn, undo_id, reverted=reverted, changed_since=changed_since,
                                               already_undone=already)
                if reverted:
                    await ledger.mark_undone(conn, backfill_run_id)
        finally:
            await ledger.release_lock(conn, "candidacy", workspace_id)
    return UndoResult(
        backfill_run_id, undo_id, changed, reverted, changed_since,
        [(str(r["run_id"]), r["kb_status"]) for r in examples], already,
    )


async def _undo_regime(conn: Conn, backfill_run_id: uuid.UUID, workspace_id: uuid.UUID, row: Any) -> UndoResult:
    """Clear the snapshots the regime backfill wrote (trials built on them leave the KB at
    the next `kb ingest`)."""
    written = int(orjson.loads(row["counts"]).get("updated", 0))
    await ledger.acquire_lock(conn, "regime", workspace_id)
    try:
        async with conn.transaction():
            undo_id = await ledger.open_undo_run(conn, workspace_id, backfill_run_id)
            reverted = int(await conn.fetchval(q("undo_regime_changes"), backfill_run_id, workspace_id))
            already = written - reverted if row["status"] == "undone" else 0
            changed_since = max(written - reverted - already, 0)
            await ledger.complete_undo_run(conn, undo_id, reverted=reverted, changed_since=changed_since,
                                           already_undone=already)
            if reverted:
                await ledger.mark_undone(conn, backfill_run_id)
    finally:
        await ledger.release_lock(conn, "regime", workspace_id)
    return UndoResult(backfill_run_id, undo_id, written, reverted, changed_since, [], already)
