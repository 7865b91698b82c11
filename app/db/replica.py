"""Reads from a streaming replica (`KB_READ_DATABASE_URL`), never older than the caller's
own writes, and from the primary whenever the replica cannot give that.

Two ways a read stays current:
- `reader()`: the primary's WAL position is read first; the replica serves the read once
  it has replayed up to there (waiting at most `max_wait`), else the primary does. Whatever
  was committed before the request (the caller's own writes included) is then visible.
- `matrices()`: recommend's cached matrices are loaded in one snapshot together with their
  revision; a load whose revision is older than the one read on the primary is done again
  on the primary (see the revision caches), so only a lagging replica costs a second read.

A replica that is down or behind is said once in the log, and again only once it is back."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from app.db.connector import TRANSIENT_ERRORS, Database
from app.db.sql import q
from app.errors import DatabaseUnavailable
from app.urls import redact_url

log = logging.getLogger(__name__)

READ_FROM_REPLICA, BEHIND, DOWN = "replica", "behind", "down"
_UNREACHABLE: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, DatabaseUnavailable, asyncpg.PostgresError)
POLL_S = 0.02


class Replica:
    def __init__(self, primary: Database, url: str, max_wait: float = 1.0, max_size: int = 8) -> None:
        self.primary = primary
        self.url = url
        self.max_wait = max_wait
        self._db = Database(url, max_size=max_size)
        self._opened = False
        self.state = READ_FROM_REPLICA
        self.reads = {READ_FROM_REPLICA: 0, BEHIND: 0, DOWN: 0}  # reads served, by why

    async def close(self) -> None:
        if self._opened:
            await self._db.close()
            self._opened = False

    async def _database(self) -> Database:
        if not self._opened:
            await self._db.open()
            self._opened = True
        return self._db

    def _now(self, state: str, detail: str = "") -> None:
        """Count a read and log a change of state (once, not once per read)."""
        self.reads[state] += 1
        if state != self.state:
            where = redact_url(self.url)
            messages = {READ_FROM_REPLICA: f"reads go to the replica {where} again",
                        BEHIND: f"the replica {where} is behind the primary: reads go to the primary{detail}",
                        DOWN: f"the replica {where} cannot be reached: reads go to the primary{detail}"}
            (log.info if state == READ_FROM_REPLICA else log.warning)(messages[state])
            self.state = state

    async def reader(self) -> Database:
        """The replica once it has replayed what the primary had committed now; else the primary."""
        target = str(await self.primary.fetchval(q("primary_wal_position")))
        try:
            replica = await self._database()
            deadline = time.monotonic() + self.max_wait
            while not await replica.fetchval(q("replayed_past"), target):
                if time.monotonic() >= deadline:
                    self._now(BEHIND, f" (it has not replayed {target} within {self.max_wait:g}s)")
                    return self.primary
                await asyncio.sleep(POLL_S)
        except _UNREACHABLE as exc:
            self._now(DOWN, f" ({type(exc).__name__})")
            return self.primary
        self._now(READ_FROM_REPLICA)
        return replica

    async def matrices(self) -> Database:
        """Where recommend loads matrices from: the replica if it can be reached (the load
        checks its revision against the primary's), else the primary."""
        try:
            replica = await self._database()
            await replica.fetchval(q("ping"))
        except _UNREACHABLE as exc:
            self._now(DOWN, f" ({type(exc).__name__})")
            return self.primary
        return replica

    def loaded(self, lagged: bool) -> None:
        """A matrix load from the replica: current, or older than the primary's revision
        (then read again there)."""
        if lagged:
            self._now(BEHIND, " (a matrix it served was older than the primary's revision)")
        else:
            self._now(READ_FROM_REPLICA)


@asynccontextmanager
async def read_replica(primary: Database) -> AsyncIterator[Replica | None]:
    """The replica named by KB_READ_DATABASE_URL for reads beside `primary` (None when
    unset); KB_READ_MAX_WAIT seconds (default 1) bound a wait for it to catch up."""
    url = os.environ.get("KB_READ_DATABASE_URL", "").strip()
    if not url:
        yield None
        return
    replica = Replica(primary, url, max_wait=float(os.environ.get("KB_READ_MAX_WAIT", "1")))
    try:
        yield replica
    finally:
        await replica.close()
