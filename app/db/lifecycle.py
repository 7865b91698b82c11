"""Opening the database: `DATABASE_URL` or the embedded server, once per command or app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from app.db.connector import Database
from app.db.embedded import database_url
from app.db.migrate import pending_count, upgrade
from app.db.sql import q
from app.errors import DriverError, KBError


def translate(exc: asyncpg.PostgresError) -> DriverError:
    """A driver error as the project's error: one line, the SQLSTATE kept."""
    text = str(exc).strip()
    first = text.splitlines()[0][:500] if text else type(exc).__name__
    return DriverError(f"the database refused the command: {first}", getattr(exc, "sqlstate", None))


@asynccontextmanager
async def translated_errors() -> AsyncIterator[None]:
    """Driver errors raised inside become `DriverError` (chained)."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        raise translate(exc) from exc


async def check_schema(db: Database) -> None:
    """A schema that is behind is an error that names the fix."""
    async with db.acquire() as conn:
        if await pending_count(conn):
            raise KBError("the database schema is not up to date: run `kb db upgrade` first")


@asynccontextmanager
async def open_database(*, migrate: bool = False, check: bool = True, max_size: int = 4) -> AsyncIterator[Database]:
    """A connected `Database`. With `migrate`, pending migrations are applied first; with
    `check` (the default), a schema that is behind is refused; neither: opened as it is
    (`kb db status` on a fresh database)."""
    db = Database(database_url(), max_size=max_size)
    await db.open()
    try:
        async with translated_errors():
            if migrate:
                async with db.acquire() as conn:
                    await upgrade(conn)
            elif check:
                await check_schema(db)
            yield db
    finally:
        await db.close()


# The driver's own error type, for a web framework's exception handler (translate it with `translate`).
DRIVER_ERROR = asyncpg.PostgresError


async def ping(db: Database) -> None:
    """One round trip: the database answers."""
    await db.fetchval(q("ping"))
