"""`kb db status|upgrade` through the real command, on a database with no schema yet."""

from __future__ import annotations

import asyncpg

from app.db import with_database
from app.db.embedded import embedded_settings
from app.db.migrate import load_migrations


async def test_status_on_a_fresh_database_lists_pending_then_upgrade_applies(cli, server_dsn, monkeypatch) -> None:
    name = "kb_test_fresh_status"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        monkeypatch.setenv("DATABASE_URL", with_database(server_dsn, name))
        code, out, err = await cli("db", "status")
        assert code == 0, err
        assert out.count("pending") == len(load_migrations()) + 1 and "run `kb db upgrade`" in out
        code, _, err = await cli("status", "--workspace-id", "00000000-0000-0000-0000-000000000001")
        assert code == 1 and "kb db upgrade" in err
        assert (await cli("db", "upgrade"))[0] == 0
        code, out, _ = await cli("db", "status")
        assert code == 0 and "pending" not in out and out.count("applied") == len(load_migrations())
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_the_embedded_server_runs_with_the_kb_settings(db) -> None:
    """Applied once per data directory; the buffer cache waits for the server's next start."""
    for name, value in embedded_settings().items():
        if name == "shared_buffers":
            assert await db.fetchval("SELECT setting FROM pg_file_settings WHERE name = $1 AND applied IS NOT NULL "
                                     "ORDER BY seqno DESC LIMIT 1", name) == value
        else:
            assert await db.fetchval(f"SHOW {name}") == value
