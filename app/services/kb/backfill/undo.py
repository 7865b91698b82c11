"""backfill-undo: revert exactly what one candidacy backfill changed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.db import Database
from app.db.queries import q
from app.errors import BadInput, NotFound
from app.services.kb.backfill.engine import acquire_lock, release_lock


@dataclass(frozen=True)
class UndoResult:
    backfill_run_id: uuid.UUID
    undo_run_id: uuid.UUID
    changed_by_backfill: int
    reverted: int
    changed_since: int
    changed_since_examples: list[tuple[str, str]]


async def undo_backfill(db: Database, backfill_run_id: uuid.UUID) -> UndoResult:
    """Revert the runs a backfill changed, from its history rows, in one transaction.

    Runs whose status changed again after the backfill are left alone and reported.
    """
    row = await db.fetchrow(q("get_backfill_run"), backfill_run_id)
    if row is None:
        raise NotFound(f"no backfill run {backfill_run_id}; `kb backfill-runs` lists them")
    if row["kind"] != "candidacy":
        raise BadInput(f"backfill run {backfill_run_id} is a {row['kind']} run; only candidacy runs can be undone")
    if row["dry_run"]:
        raise BadInput(f"backfill run {backfill_run_id} was a dry run and changed nothing")
    workspace_id = row["workspace_id"]
    async with db.acquire() as conn:
        await acquire_lock(conn, "candidacy", workspace_id)
        try:
            async with conn.transaction():
                undo_id = await conn.fetchval(
                    "INSERT INTO kb_backfill_runs (workspace_id, kind, config, config_key, dry_run, status, pid)"
                    " VALUES ($1, 'undo', $2::jsonb, $3, false, 'running', pg_backend_pid()) RETURNING id",
                    workspace_id, f'{{"undo_of": "{backfill_run_id}"}}', f"undo:{backfill_run_id}",
                )
                result = await conn.fetchrow(q("undo_backfill_changes"), backfill_run_id, undo_id)
                assert result is not None  # an aggregate query always returns its one row
                examples = await conn.fetch(q("undo_skipped_examples"), backfill_run_id, undo_id)
                reverted, changed = int(result["reverted"]), int(result["changed_by_backfill"])
                await conn.execute(
                    "UPDATE kb_backfill_runs SET status = 'completed', finished_at = now(), counts = $2::jsonb"
                    " WHERE id = $1",
                    undo_id, f'{{"reverted": {reverted}, "changed_since": {changed - reverted}}}',
                )
                if reverted:
                    await conn.execute(q("mark_backfill_run_undone"), backfill_run_id)
        finally:
            await release_lock(conn, "candidacy", workspace_id)
    return UndoResult(
        backfill_run_id, undo_id, changed, reverted, changed - reverted,
        [(str(r["run_id"]), r["kb_status"]) for r in examples],
    )
