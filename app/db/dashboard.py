"""The dashboard's reads: workspaces with counts, regime coverage, strategy points, the gate funnel."""

from __future__ import annotations

import uuid
from typing import Any

from app.db import ledger
from app.db.connector import Database
from app.db.sql import q
from app.db.trials import Record


async def workspaces(db: Database, limit: int) -> list[Record]:
    return list(await db.fetch(q("dashboard_workspaces"), limit))


async def coverage(db: Database, workspace_id: uuid.UUID) -> list[Record]:
    return list(await db.fetch(q("dashboard_coverage"), workspace_id))


async def trials_per_strategy(db: Database, workspace_id: uuid.UUID) -> dict[str, int]:
    return {r["strategy"]: int(r["trials"]) for r in await db.fetch(q("dashboard_strategies"), workspace_id)}


async def strategy_points(db: Database, workspace_id: uuid.UUID, strategy: str, limit: int) -> list[Record]:
    return list(await db.fetch(q("dashboard_strategy_points"), workspace_id, strategy, limit))


async def run_funnel(db: Database, workspace_id: uuid.UUID) -> Record:
    funnel = await db.fetchrow(q("dashboard_run_funnel"), workspace_id)
    assert funnel is not None  # an aggregate always returns its row
    return funnel


async def latest_candidacy(db: Database, workspace_id: uuid.UUID) -> dict[str, Any] | None:
    row = await db.fetchrow(q("dashboard_latest_candidacy"), workspace_id)
    return ledger.row_json(row) if row else None
