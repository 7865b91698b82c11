"""backfill-undo: revert exactly what one backfill changed (candidacy: the kb_status
changes, from history; regime: the snapshots it wrote)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from app.db import Database, ledger
from app.db import backfill as runs
from app.db.connector import Conn
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


@dataclass(frozen=True)
class _Reverted:
    changed: int  # runs the backfill changed
    reverted: int
    already: int  # reverted by an earlier undo
    examples: list[tuple[str, str]]  # runs left alone because they changed again since


async def undo_backfill(db: Database, backfill_run_id: uuid.UUID) -> UndoResult:
    """Revert what a backfill changed, in one transaction under that kind's lock:
    candidacy from its history rows, regime by clearing the snapshots it wrote.

    Runs that changed again after the backfill are left alone and reported; runs an
    earlier undo reverted are counted as already undone.
    """
    async with db.acquire() as conn:
        row = await ledger.get_run(conn, backfill_run_id)
        if row is None:
            raise NotFound(f"no backfill run {backfill_run_id}; `kb backfill-runs` lists them")
        kind = row["kind"]
        if kind not in _REVERT:
            raise BadInput(f"backfill run {backfill_run_id} is a {kind} run; only backfills can be undone")
        if row["dry_run"]:
            raise BadInput(f"backfill run {backfill_run_id} was a dry run and changed nothing")
        workspace_id = row["workspace_id"]
        # The lock's transaction is the undo's: it commits with the release, or rolls back.
        await ledger.acquire_lock(conn, kind, workspace_id)
        try:
            undo_id = await ledger.open_undo_run(conn, workspace_id, backfill_run_id)
            done = await _REVERT[kind](conn, backfill_run_id, undo_id, row)
            changed_since = max(done.changed - done.reverted - done.already, 0)
            await ledger.complete_undo_run(conn, workspace_id, undo_id, reverted=done.reverted,
                                           changed_since=changed_since, already_undone=done.already)
            if done.reverted:
                await ledger.mark_undone(conn, workspace_id, backfill_run_id)
        except BaseException:
            await ledger.abandon_lock(conn)
            raise
        await ledger.release_lock(conn, kind, workspace_id)
    return UndoResult(backfill_run_id, undo_id, done.changed, done.reverted, changed_since, done.examples,
                      done.already)


async def _revert_candidacy(conn: Conn, backfill_run_id: uuid.UUID, undo_id: uuid.UUID, row: Any) -> _Reverted:
    """Back to each run's previous kb_status, from the history rows the backfill wrote."""
    result, examples, already = await runs.undo_candidacy(conn, row["workspace_id"], backfill_run_id, undo_id)
    return _Reverted(int(result["changed_by_backfill"]), int(result["reverted"]), already,
                     [(str(r["run_id"]), r["kb_status"]) for r in examples])


async def _revert_regime(conn: Conn, backfill_run_id: uuid.UUID, undo_id: uuid.UUID, row: Any) -> _Reverted:
    """Clear the snapshots the regime backfill wrote (trials built on them leave the KB at
    the next `kb ingest`)."""
    written = int(orjson.loads(row["counts"]).get("updated", 0))
    reverted = await runs.undo_regime(conn, backfill_run_id, row["workspace_id"])
    already = written - reverted if row["status"] == "undone" else 0
    return _Reverted(written, reverted, already, [])


_REVERT = {"candidacy": _revert_candidacy, "regime": _revert_regime}
