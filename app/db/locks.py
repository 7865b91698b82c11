"""Advisory locks held for as long as a job runs, by an open transaction on a connection
of their own.

A transaction-scoped lock is the one that holds through a connection pooler in
transaction mode (PgBouncer): the pooler keeps a server connection for a client while
its transaction is open, whereas a session lock would stay on whichever server
connection ran the statement that took it, and be handed with it to another client.
The holding transaction runs nothing else, so it holds no snapshot back from vacuum;
ending the job rolls it back, which releases the lock (and a dead process's lock is
released by the server when its connection goes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from asyncpg.transaction import Transaction

from app.db.connector import Conn, Database, is_gone
from app.db.retry import hold_connection, release_quietly


class HeldLock:
    """A connection whose open transaction holds one advisory lock (or none, if it was taken)."""

    def __init__(self, db: Database, conn: Conn, tx: Transaction, held: bool) -> None:
        self.db = db
        self.conn = conn
        self.tx = tx
        self.held = held

    async def release(self) -> None:
        try:
            if not is_gone(self.conn):
                await self.tx.rollback()
        finally:
            await release_quietly(self.db, self.conn)


async def take(db: Database, query: str, *args: Any) -> HeldLock:
    """Open a transaction on a connection of its own and run `query` (a `pg_try_advisory_xact_lock`
    or `pg_advisory_xact_lock` call) in it; `held` says whether the lock is now held."""
    conn = await hold_connection(db)
    tx = conn.transaction()
    try:
        await tx.start()
        got = await conn.fetchval(query, *args)
    except BaseException:
        await release_quietly(db, conn)
        raise
    held = got is None or bool(got)  # pg_advisory_xact_lock returns void (None) once it holds
    lock = HeldLock(db, conn, tx, held)
    if not held:
        await lock.release()
    return lock


@asynccontextmanager
async def holding(db: Database, query: str, *args: Any) -> AsyncIterator[HeldLock]:
    """`take`, released when the block ends."""
    lock = await take(db, query, *args)
    try:
        yield lock
    finally:
        if lock.held:
            await lock.release()
