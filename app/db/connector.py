"""The one object that owns the asyncpg pool."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from app import far_time
from app.errors import DatabaseUnavailable
from app.urls import redact_url

# What code receives from `Database.acquire()` or `connect()`; both speak the same API.
Conn = asyncpg.Connection | PoolConnectionProxy


# Errors that mean "the server or the network went away", worth a bounded retry.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.InterfaceError,
    # A connection whose server just sent its FATAL goodbye, before the close itself is
    # processed, refuses new queries with "cannot switch to state ...".
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
)


def affected(status: str) -> int:
    """The row count of a command status such as `UPDATE 12` or `INSERT 0 3`."""
    return int(status.rsplit(" ", 1)[-1])


def is_gone(conn: Conn) -> bool:
    """True when the connection is closed; a pooled connection whose server side was
    lost is detached from its proxy, and asking the proxy raises instead of answering."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


def application_name(pid: int | None = None) -> str:
    """How a `kb` process (this one by default) shows up in pg_stat_activity: `trading-kb[<pid>]`."""
    return f"trading-kb[{os.getpid() if pid is None else pid}]"


def with_database(dsn: str, name: str) -> str:
    """The same server and credentials, another database name."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


redact_dsn = redact_url


def behind_pooler() -> bool:
    """KB_DB_POOLER=transaction: the database URL is a pooler in transaction mode
    (PgBouncer), which may give each transaction another server connection. Statements
    are then not kept prepared across transactions (the server connection that prepared
    one may be gone); the session's time zone travels as a startup parameter, which the
    pooler sets on every server connection it hands over; no session lock is used
    anywhere (app.db.locks)."""
    value = os.environ.get("KB_DB_POOLER", "").strip().lower()
    if value in ("", "none", "session"):
        return False
    if value in ("transaction", "pgbouncer"):
        return True
    raise DatabaseUnavailable(f"KB_DB_POOLER must be 'transaction' or 'none', got {value!r}")


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Keep json/jsonb as text: callers decode only the keys they need (orjson), and
    # writes pass JSON text that the server parses once. (The session is in UTC: the
    # time zone is a startup parameter.)
    # Timestamps beyond Python's range become FarTime values, never a failed page.
    await conn.set_type_codec("timestamptz", schema="pg_catalog", encoder=far_time.encode,
                              decoder=far_time.decode, format="tuple")


def describe_connect_error(dsn: str, exc: BaseException) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, socket.gaierror):
        reason = f"host not found ({reason})"
    return f"cannot connect to the database {redact_dsn(dsn)}: {reason}; check DATABASE_URL"


class Database:
    """Owns an asyncpg pool: explicit `open()`/`close()`, or `async with`.

    Pass `pool=` to reuse an existing pool; a pool handed in is never closed here.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        min_size: int = 1,
        max_size: int = 4,
    ) -> None:
        if dsn is None and pool is None:
            raise ValueError("Database needs a dsn or a pool")
        self.dsn = dsn or ""
        self._pool = pool
        self._owns_pool = pool is None
        self._min_size = min_size
        self._max_size = max_size

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Database.open() has not been called")
        return self._pool

    async def open(self) -> Database:
        if self._pool is not None:
            return self
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                init=_init_connection,
                timeout=10.0,
                server_settings={"application_name": application_name(), "TimeZone": "UTC"},
                statement_cache_size=0 if behind_pooler() else 100,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(describe_connect_error(self.dsn, exc)) from exc
        except ValueError:  # the URL itself does not parse; its text may hold part of the password
            raise DatabaseUnavailable(
                f"DATABASE_URL {redact_dsn(self.dsn)} is not a valid connection URL; percent-encode special "
                "characters in the user name and password (@ as %40, / as %2F, : as %3A)") from None
        return self

    async def close(self) -> None:
        if self._pool is not None and self._owns_pool:
            await self._pool.close()
        if self._owns_pool:
            self._pool = None

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[PoolConnectionProxy]:
        async with self.pool.acquire() as conn:
            yield conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.pool.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.pool.acquire() as conn:
            return str(await conn.execute(query, *args))
