"""Workspaces: the scope of every query."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from app.db import locks
from app.db.connector import Conn, Database
from app.db.sql import q
from app.errors import NotFound


async def require_workspace(db: Database | Conn, workspace_id: uuid.UUID) -> None:
    """Raise `NotFound` (with the fix) when the workspace does not exist."""
    if not await db.fetchval(q("workspace_exists"), workspace_id):
        raise NotFound(f"workspace {workspace_id} does not exist; check --workspace-id")


async def ensure_workspace(conn: Conn, workspace_id: uuid.UUID, name: str) -> None:
    await conn.execute(q("ensure_workspace"), workspace_id, name)


async def reset_workspace(conn: Conn, workspace_id: uuid.UUID, name: str) -> None:
    """Delete the workspace and everything in it, then create it empty (inside the
    caller's transaction, serialized with any other reset of the same workspace)."""
    await conn.execute(q("lock_workspace_xact"), str(workspace_id))
    await conn.execute(q("delete_workspace"), workspace_id)
    await conn.execute(q("ensure_workspace"), workspace_id, name)


async def count_runs(conn: Conn, workspace_id: uuid.UUID) -> int:
    return int(await conn.fetchval(q("count_workspace_runs"), workspace_id))


@asynccontextmanager
async def workspace_job(db: Database, workspace_id: uuid.UUID, on_wait: Callable[[], None]) -> AsyncIterator[None]:
    """Run one whole-workspace job at a time (two `kb demo` at once): a second one waits
    for the first to finish (`on_wait` is told), then runs."""
    async with locks.holding(db, q("try_lock_workspace_job"), str(workspace_id)) as held:
        if held.held:
            yield
            return
    on_wait()
    async with locks.holding(db, q("lock_workspace_job"), str(workspace_id)):
        yield


async def workspaces_named(db: Database | Conn, name: str) -> list[Any]:
    return list(await db.fetch(q("workspaces_named"), name))


async def create_named_workspace(db: Database, name: str) -> uuid.UUID:
    """The workspace called `name`, created if there is none (once, even when two
    commands name it at the same time)."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(q("lock_workspace_name_xact"), name)
        found = await workspaces_named(conn, name)
        if found:
            return uuid.UUID(str(found[0]["id"]))
        workspace_id = uuid.uuid4()
        await conn.execute(q("ensure_workspace"), workspace_id, name)
        return workspace_id
