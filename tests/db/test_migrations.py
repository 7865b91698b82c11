from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg

from app.db import Database, with_database
from app.db.migrate import dump_schema, load_migrations, status, upgrade
from app.db.runs import copy_runs
from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, TrialCache, recommend
from tests.factories import RUN_COLUMNS, run_row, trend_snapshot

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


PREVIOUS_RELEASE = 8  # the schema of the release before incremental ingest and partitions


async def _populate_previous_release(conn: asyncpg.Connection, ws: uuid.UUID) -> dict[str, int]:
    """Rows as the previous release wrote them: runs, a candidacy backfill's ledger and
    history, trials and evidence."""
    await conn.execute("INSERT INTO workspaces (id, name) VALUES ($1, 'before partitions')", ws)
    runs = [run_row(ws, i, strategy_name="s", kb_status="candidate" if i % 2 else "excluded",
                    regime_oos=trend_snapshot(1, 0.002, i)) for i in range(40)]
    await copy_runs(conn, runs, [c for c in RUN_COLUMNS if c != "regime_schema_version"])
    backfill = uuid.uuid4()
    await conn.execute("INSERT INTO kb_backfill_runs (id, workspace_id, kind, config, config_key, dry_run, status) "
                       "VALUES ($1, $2, 'candidacy', '{}', 'k', false, 'completed')", backfill, ws)
    await conn.execute(
        "INSERT INTO kb_status_history (run_id, workspace_id, from_status, to_status, actor, backfill_run_id) "
        "SELECT id, workspace_id, 'excluded', 'candidate', 'backfill', $2 FROM backtest_runs "
        "WHERE workspace_id = $1 AND kb_status = 'candidate'", ws, backfill)
    await conn.execute(
        "INSERT INTO kb_trials (workspace_id, source_run_id, strategy_name, params, sharpe, kb_status, content_hash) "
        "SELECT workspace_id, id, strategy_name, params, 1.0, kb_status, 'old' FROM backtest_runs "
        "WHERE workspace_id = $1 AND kb_status = 'candidate'", ws)
    await conn.execute(
        "INSERT INTO kb_evidence (workspace_id, source_run_id, strategy_name, params, sharpe, eligible, content_hash) "
        "SELECT workspace_id, id, strategy_name, params, 1.0, kb_status = 'candidate', 'old' FROM backtest_runs "
        "WHERE workspace_id = $1", ws)
    counts = {}
    for table in ("backtest_runs", "kb_status_history", "kb_trials", "kb_evidence"):
        counts[table] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    counts["history_max_id"] = int(await conn.fetchval("SELECT max(id) FROM kb_status_history"))
    return counts


async def test_a_populated_database_of_the_previous_release_migrates_in_place(server_dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    name = f"kb_test_previous_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(server_dsn, name)
        conn = await asyncpg.connect(dsn)
        ws = uuid.uuid4()
        try:
            await upgrade(conn, [m for m in load_migrations() if m.version <= PREVIOUS_RELEASE])
            before = await _populate_previous_release(conn, ws)
            ids = await conn.fetch("SELECT workspace_id, id, kb_status, params::text FROM backtest_runs ORDER BY id")
            await upgrade(conn)
            assert await conn.fetchval("SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent "
                                       "WHERE c.relname = 'backtest_runs'") == 16
            for table in ("backtest_runs", "kb_status_history", "kb_trials", "kb_evidence"):
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == before[table]
            assert await conn.fetch("SELECT workspace_id, id, kb_status, params::text FROM backtest_runs "
                                    "ORDER BY id") == ids
            # New history rows continue the identity after the copied ones.
            new_id = await conn.fetchval(
                "INSERT INTO kb_status_history (run_id, workspace_id, to_status, actor) "
                "SELECT id, workspace_id, 'rejected', 'test' FROM backtest_runs LIMIT 1 RETURNING id")
            assert new_id > before["history_max_id"]
        finally:
            await conn.close()
        db = await Database(dsn, max_size=4).open()
        try:
            # The KB rebuilt from the migrated rows: a first ingest reads everything.
            done = await ingest(db, ws)
            assert (done.mode, done.scanned, done.updated) == ("full", 20, 20)
            answer = await recommend(db, RecommendQuery(ws, "s", tags=("uptrend",), top_k=5), TrialCache())
            assert answer.considered == 20
            # Deleting a workspace still cascades through every partitioned table.
            await db.execute("DELETE FROM workspaces WHERE id = $1", ws)
            for table in ("kb_status_history", "kb_trials", "kb_evidence"):
                assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE workspace_id = $1", ws) == 0
            # Emptying the runs table (CASCADE: the history references it) empties the KB tables.
            other = uuid.uuid4()
            await db.execute("INSERT INTO workspaces (id, name) VALUES ($1, 'other')", other)
            async with db.acquire() as c:
                await copy_runs(c, [run_row(other, i, strategy_name="s", kb_status="candidate",
                                            regime_oos=trend_snapshot(1, 0.002, i)) for i in range(5)], RUN_COLUMNS)
            assert (await ingest(db, other)).inserted == 5
            await db.execute("TRUNCATE backtest_runs CASCADE")
            for table in ("kb_trials", "kb_evidence"):
                assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        finally:
            await db.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_each_kb_partition_references_its_run_partition(db: Database) -> None:
    """kb_trials and kb_evidence check their runs partition to partition (migration 0013):
    every partition has one cascading key to the backtest_runs partition of its bounds
    (the schema dump lists the parents' constraints only)."""
    keys = await db.fetch(
        "SELECT c.conrelid::regclass::text AS kb, c.confrelid::regclass::text AS runs, c.confdeltype, "
        "       pg_get_expr(k.relpartbound, k.oid) = pg_get_expr(r.relpartbound, r.oid) AS same_bounds "
        "FROM pg_constraint c JOIN pg_class k ON k.oid = c.conrelid JOIN pg_class r ON r.oid = c.confrelid "
        "JOIN pg_inherits i ON i.inhrelid = c.conrelid "
        "WHERE c.contype = 'f' AND i.inhparent IN ('kb_trials'::regclass, 'kb_evidence'::regclass)")
    partitions = await db.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent IN ('kb_trials'::regclass, 'kb_evidence'::regclass)")
    assert partitions == 32 and len(keys) == partitions and len({k["kb"] for k in keys}) == partitions
    assert all(k["same_bounds"] and k["confdeltype"] == b"c" and k["runs"].startswith("backtest_runs_") for k in keys)
    # A cascade deletes from the partition: each one moves the revisions itself.
    bumps = await db.fetchval(
        "SELECT count(*) FROM pg_trigger t JOIN pg_inherits i ON i.inhrelid = t.tgrelid "
        "WHERE i.inhparent IN ('kb_trials'::regclass, 'kb_evidence'::regclass) AND NOT t.tgisinternal "
        "AND t.tgfoid = 'kb_bump_revision_after_delete'::regproc")
    assert bumps == partitions
