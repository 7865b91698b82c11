"""Bounded retries on a lost connection, for every writer (backfills, ingest, import)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.db.connector import TRANSIENT_ERRORS, Conn, Database
from app.errors import DatabaseError

log = logging.getLogger(__name__)
T = TypeVar("T")

WRITE_RETRIES = 3


async def retrying(what: str, op: Callable[[int], Awaitable[T]],
                   on_error: Callable[[], Awaitable[None]] | None = None) -> T:
    """`op(attempt)`, retried on a lost connection with backoff (0.2, 0.4, 0.8 s); after
    the last attempt a DatabaseError that says committed work is kept."""
    for attempt in range(WRITE_RETRIES + 1):
        try:
            return await op(attempt)
        except TRANSIENT_ERRORS as exc:
            if on_error is not None:
                await on_error()
            log.warning("%s failed (%s); attempt %d of %d", what, exc, attempt + 1, WRITE_RETRIES + 1)
            if attempt == WRITE_RETRIES:
                raise DatabaseError(
                    f"lost the database connection {WRITE_RETRIES + 1} times while {what} ({exc}); "
                    "everything before it is committed: rerun with --resume"
                ) from exc
            await asyncio.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


async def hold_connection(db: Database) -> Conn:
    """A connection of the caller's own, outside `acquire()`'s scope: the backfill lock
    lives on one for a whole run, and the batch writer keeps one between batches."""
    return await db.pool.acquire()


async def release_quietly(db: Database, conn: Conn) -> None:
    """Give a held connection back; a dead one is dropped (the pool replaces it)."""
    try:
        await db.pool.release(conn)  # type: ignore[arg-type]  # held connections come from this pool
    except Exception:
        log.debug("connection was already closed", exc_info=True)
