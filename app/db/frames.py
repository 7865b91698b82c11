"""Whole-table reads of one workspace's trials and runs, for the Python API's DataFrames."""

from __future__ import annotations

import uuid

from app.db.connector import Database
from app.db.sql import q
from app.db.trials import Record


async def trials_frame_rows(db: Database, workspace_id: uuid.UUID, strategy: str | None) -> list[Record]:
    """Active trials (of one strategy when given); `params` arrives as JSON text."""
    return list(await db.fetch(q("trials_frame_rows"), workspace_id, strategy))


async def runs_frame_rows(db: Database, workspace_id: uuid.UUID, strategy: str | None,
                          limit: int | None) -> list[Record]:
    """Runs, newest first, at most `limit` (None: all); jsonb columns arrive as JSON text."""
    return list(await db.fetch(q("runs_frame_rows"), workspace_id, strategy, limit))
