"""A workspace at a glance: runs by kb_status, eligible runs, active trials, recent backfills."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from app.db import Database, ledger, trials
from app.db.workspaces import require_workspace

KB_STATUSES = ("excluded", "candidate", "promoted", "rejected")


@dataclass(frozen=True)
class WorkspaceStatus:
    workspace_id: uuid.UUID
    runs_by_kb_status: dict[str, int]
    runs_with_regime_oos: int
    eligible_by_strategy: dict[str, int]
    active_trials_by_strategy: dict[str, int]
    archived_trials: int
    recent_backfills: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "workspace_id": str(self.workspace_id), "runs_by_kb_status": self.runs_by_kb_status,
            "runs_with_regime_oos": self.runs_with_regime_oos, "eligible": sum(self.eligible_by_strategy.values()),
            "eligible_by_strategy": self.eligible_by_strategy,
            "active_trials": sum(self.active_trials_by_strategy.values()),
            "active_trials_by_strategy": self.active_trials_by_strategy, "archived_trials": self.archived_trials,
            "recent_backfills": self.recent_backfills,
        }


async def workspace_status(db: Database, workspace_id: uuid.UUID, recent_backfills: int = 5) -> WorkspaceStatus:
    """Runs by kb_status, eligible runs and active trials (also per strategy), recent backfills."""
    await require_workspace(db, workspace_id)
    counts = await trials.status_counts(db, workspace_id)
    async with db.acquire() as conn:
        backfills = await ledger.list_runs(conn, workspace_id, recent_backfills)
    by_status = counts["by_status"]
    return WorkspaceStatus(
        workspace_id,
        {k: int(by_status[k]["n"]) if k in by_status else 0 for k in KB_STATUSES},
        sum(int(r["with_regime"]) for r in by_status.values()),
        counts["eligible"], counts["trials"], counts["archived"],
        [{"id": b["id"], "kind": b["kind"], "dry_run": b["dry_run"], "status": b["status"],
          "started_at": b["started_at"], "counts": b["counts"]} for b in backfills],
    )
