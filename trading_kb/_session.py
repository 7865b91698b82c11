"""One connection's state on its private loop: the open database, the recommend cache, error translation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack, suppress
from typing import Any, TypeVar

from app.db import Database, open_database
from app.db.connector import TRANSIENT_ERRORS
from app.db.embedded import is_embedded
from app.db.lifecycle import check_schema, translated_errors
from app.errors import DatabaseError, KBError
from app.services.kb.recommend import TrialCache
from trading_kb._loop import LoopThread

T = TypeVar("T")
POOL_SIZE = 4
# Connection losses (bare OSError excepted: a file error must not read as a lost connection).
CONNECTION_LOST = tuple(e for e in TRANSIENT_ERRORS if e is not OSError)
CLOSE_TIMEOUT_S = 30.0


class Session:
    """What a `KnowledgeBase` holds: a loop thread, the database opened on it, one cache."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.loop = LoopThread(name="trading-kb")
        self.cache = TrialCache()
        self._db: Database | None = None
        self._stack: AsyncExitStack | None = None
        self._lock = threading.Lock()
        self.closed = False

    @property
    def db(self) -> Database:
        if self._db is None:
            raise KBError("this trading_kb connection is closed; call trading_kb.connect() again")
        return self._db

    async def _open(self) -> None:
        stack = AsyncExitStack()
        if self.url is None:
            # DATABASE_URL or the embedded server: the embedded one is ours to migrate, an external one is
            # migrated on purpose only (`kb db upgrade`) and refused when behind.
            self._db = await stack.enter_async_context(open_database(migrate=is_embedded(), max_size=POOL_SIZE))
        else:
            db = await Database(self.url, max_size=POOL_SIZE).open()
            stack.push_async_callback(db.close)
            try:
                async with translated_errors():
                    await check_schema(db)
            except BaseException:
                await stack.aclose()
                raise
            self._db = db
        self._stack = stack

    def open(self) -> None:
        """Connect (on the private loop); a failure leaves nothing running."""
        try:
            self.call(self._open)
        except BaseException:
            self.loop.stop()
            raise

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        """`await fn(*args, **kwargs)` on the private loop, from this (sync) thread.
        Errors surface as `KBError`s with their one-line message."""
        if self.closed:
            raise KBError("this trading_kb connection is closed; call trading_kb.connect() again")
        try:
            return self.loop.run(_translated(fn(*args, **kwargs)))
        except KBError as exc:
            # The loop thread's frames say nothing to a notebook user: the message does.
            raise exc.with_traceback(None) from exc.__cause__

    def close(self, timeout: float | None = CLOSE_TIMEOUT_S) -> None:
        """Close the database and stop the loop; a second close does nothing."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        stack, self._stack, self._db = self._stack, None, None
        try:
            if stack is not None and self.loop.running:
                self.loop.run(_translated(stack.aclose()), timeout)
        finally:
            self.loop.stop()

    def finalize(self) -> None:
        """`close` for the garbage collector and interpreter exit: bounded, and silent."""
        with suppress(Exception):  # nothing can be reported at exit
            self.close(timeout=5.0)


async def _translated(coro: Coroutine[Any, Any, T]) -> T:
    """Driver errors become `DriverError`; a lost connection a `DatabaseError` saying so."""
    try:
        async with translated_errors():
            return await coro
    except CONNECTION_LOST as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:500] if text else type(exc).__name__
        raise DatabaseError(f"lost the database connection ({first}); committed work is kept, "
                            "call again") from exc
