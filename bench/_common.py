"""Shared set-up for the bench scripts: a fresh, migrated database."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

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
