"""Opening the database for a command: DATABASE_URL or the embedded server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.db import Database
from app.db.embedded import database_url
from app.db.migrate import pending_count, upgrade
from app.errors import KBError


@asynccontextmanager
async def open_database(*, migrate: bool = False, max_size: int = 4) -> AsyncIterator[Database]:
    """A connected `Database`. With `migrate`, pending migrations are applied first;
    otherwise a schema that is behind is an error that names the fix."""
    db = Database(database_url(), max_size=max_size)
    await db.open()
    try:
        async with db.acquire() as conn:
            if migrate:
                await upgrade(conn)
            elif await pending_count(conn):
                raise KBError("the database schema is not up to date: run `kb db upgrade` first")
        yield db
    finally:
        await db.close()
