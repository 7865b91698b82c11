from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from app.db import Database, with_database
from app.db.migrate import dump_schema, load_migrations, status, upgrade

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "app" / "db" / "schema.txt"


async def test_schema_matches_committed_dump(db: Database) -> None:
    async with db.acquire() as conn:
        dumped = await dump_schema(conn)
    assert dumped == SCHEMA_FILE.read_text(), "run `kb db dump-schema > app/db/schema.txt` after a migration"


async def test_upgrade_is_idempotent_and_status_lists_all(db: Database) -> None:
    async with db.acquire() as conn:
        assert await upgrade(conn) == []
        states = await status(conn)
    assert [s.version for s in states] == [m.version for m in load_migrations()]
    assert all(s.applied for s in states)


async def test_concurrent_upgrades_from_empty_database(server_dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    name = "kb_test_concurrent_upgrade"
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(server_dsn, name)
        conns = [await asyncpg.connect(dsn) for _ in range(3)]
        results = await asyncio.gather(*(upgrade(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, len(load_migrations())]
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(load_migrations())
        for c in conns:
            await c.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
