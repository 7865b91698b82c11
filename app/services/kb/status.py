"""A workspace at a glance: runs by kb_status, eligible runs, active trials, recent backfills."""

from __future__ import annotations

import uuid
from typing import Any

from app.db import Database, ledger
from app.db.sql import q
from app.db.workspaces import require_workspace


async def workspace_status(db: Database, workspace_id: uuid.UUID, recent_backfills: int = 5) -> dict[str, Any]:
    """Runs by kb_status, eligible runs and active trials (also per strategy), recent backfills."""
    await require_workspace(db, workspace_id)
    async with db.acquire() as conn:
        by_status = {r["kb_status"]: r for r in await conn.fetch(q("status_runs_by_kb_status"), workspace_id)}
        eligible = {r["strategy"]: r["n"] for r in await conn.fetch(q("status_eligible_by_strategy"), workspace_id)}
        trials = {r["strategy"]: r["n"] for r in await conn.fetch(q("status_trials_by_strategy"), workspace_id)}
        archived = int(await conn.fetchval(q("status_archived_trials"), workspace_id))
        backfills = await ledger.list_runs(conn, workspace_id, recent_backfills)
    return {
        "workspace_id": str(workspace_id),
        "runs_by_kb_status": {k: int(by_status[k]["n"]) if k in by_status else 0
                              for k in ("excluded", "candidate", "promoted", "rejected")},
        "runs_with_regime_oos": sum(int(r["with_regime"]) for r in by_status.values()),
        "eligible": sum(eligible.values()),
        "eligible_by_strategy": eligible,
        "active_trials": sum(trials.values()),
        "active_trials_by_strategy": trials,
        "archived_trials": archived,
        "recent_backfills": [
            {"id": b["id"], "kind": b["kind"], "dry_run": b["dry_run"], "status": b["status"],
             "started_at": b["started_at"], "counts": b["counts"]}
            for b in backfills
        ],
    }
