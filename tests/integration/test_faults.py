"""Process-level faults: bad connection settings, parallel upgrades, SIGKILL mid-backfill."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import asyncpg
import pytest

from app.db import with_database
from tests.conftest import run_row

KB = [sys.executable, "-m", "app.services.kb.cli"]


def run_kb(*argv: str, url: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run([*KB, *argv], capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.mark.parametrize("url", [
    "postgresql://kb:secret-pw@no-such-host.invalid:5432/kb",
    "postgresql://kb:secret-pw@127.0.0.1:1/kb",
])
def test_unreachable_database_is_one_line_exit_1(url: str) -> None:
    proc = run_kb("db", "status", url=url)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "cannot connect to the database" in proc.stderr
    assert "secret-pw" not in proc.stderr and "Traceback" not in proc.stderr


async def test_parallel_db_upgrade_from_empty(server_dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    await admin.execute('DROP DATABASE IF EXISTS "kb_test_parallel_cli"')
    await admin.execute('CREATE DATABASE "kb_test_parallel_cli"')
    try:
        url = with_database(server_dsn, "kb_test_parallel_cli")
        procs = await asyncio.gather(*(asyncio.to_thread(run_kb, "db", "upgrade", url=url) for _ in range(2)))
        assert [p.returncode for p in procs] == [0, 0], [p.stderr for p in procs]
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 1
        await conn.close()
    finally:
        await admin.execute('DROP DATABASE IF EXISTS "kb_test_parallel_cli" WITH (FORCE)')
        await admin.close()


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_batches", [3, 40])
async def test_sigkill_then_resume_equals_uninterrupted(db, db_url, make_workspace, insert_runs, kill_after_batches):
    ws = await make_workspace()
    good = {"trades": 40, "sharpe": 1.2, "max_drawdown_pct": -12.0}
    rows = [run_row(ws, i, summary=good if i % 10 < 3 else {**good, "sharpe": -1}) for i in range(20_000)]
    await insert_runs(rows)
    eligible = {r["id"] for i, r in enumerate(rows) if i % 10 < 3}
    env = {**os.environ, "DATABASE_URL": db_url}
    proc = subprocess.Popen([*KB, "backfill-candidacy", "--workspace-id", str(ws), "--limit", "100000",
                             "--batch-size", "50"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            done = await db.fetchval("SELECT count(*) FROM kb_status_history WHERE workspace_id = $1", ws)
            if done >= kill_after_batches * 50 or proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = await db.fetchval("SELECT count(*) FROM kb_status_history WHERE workspace_id = $1", ws)
    assert before % 50 == 0  # only whole batches are ever committed
    ledger = await db.fetchrow("SELECT status, counts FROM kb_backfill_runs WHERE workspace_id = $1", ws)
    resumed = await asyncio.to_thread(run_kb, "backfill-candidacy", "--workspace-id", str(ws), "--limit", "100000",
                                      "--batch-size", "50", "--resume", "--json", url=db_url)
    if ledger["status"] == "completed":
        assert resumed.returncode == 2  # the kill came after the end: nothing to resume
    else:
        assert resumed.returncode == 0, resumed.stderr
    got = {r["id"] for r in await db.fetch(
        "SELECT id FROM backtest_runs WHERE workspace_id = $1 AND kb_status = 'candidate'", ws)}
    assert got == eligible
    assert await db.fetchval("SELECT count(*) FROM kb_status_history WHERE workspace_id = $1", ws) == len(eligible)
    assert await db.fetchval(
        "SELECT count(DISTINCT run_id) FROM kb_status_history WHERE workspace_id = $1", ws) == len(eligible)
    final = await db.fetchrow("SELECT status, counts::json->>'updated' AS updated, counts::json->>'scanned' AS scanned"
                              " FROM kb_backfill_runs WHERE workspace_id = $1", ws)
    assert final["status"] == "completed"
    assert int(final["updated"]) == len(eligible) and int(final["scanned"]) == 20_000
