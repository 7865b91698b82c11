"""Shared set-up for the bench scripts: a fresh, migrated database."""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.db import Database, with_database
from app.db.embedded import database_url
from app.db.migrate import upgrade


async def fresh_database(name: str) -> Database:
    server = database_url()
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    db = await Database(with_database(server, name), max_size=6).open()
    async with db.acquire() as conn:
        await upgrade(conn)
    return db


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a bench on the event loop the `kb` command uses (uvloop when installed)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
