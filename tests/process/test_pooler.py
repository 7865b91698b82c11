"""The KB through PgBouncer (Debian's package) in transaction mode, with four server
connections for many clients, so consecutive transactions of one client land on
different server connections: no session state may matter. (A running backfill pins
two: the transaction that holds its lock, and its writer blocked on the test's row lock.) KB_DB_POOLER=transaction
turns off statements kept prepared across transactions; locks are transaction-held."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from app.db import Database, with_database
from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, TrialCache, recommend
from tests.factories import run_row, trend_snapshot
from tests.process.faultkit import candidacy_workload, kb_argv, poll, run_kb, start_kb

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
pytestmark = pytest.mark.skipif(not Path(PGBOUNCER).exists(), reason="pgbouncer is not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bouncer(server_dsn: str) -> Iterator[str]:
    """A PgBouncer in transaction mode in front of the test server; yields its URL (no database)."""
    parts = urlsplit(server_dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    port = query.get("port", [str(parts.port or 5432)])[0]
    folder = Path(tempfile.mkdtemp(prefix="kbbouncer", dir="/tmp"))
    folder.chmod(0o777)
    (folder / "users.txt").write_text('"postgres" ""\n')
    listen = _free_port()
    (folder / "pgbouncer.ini").write_text(f"""[databases]
* = host={host} port={port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {folder / 'users.txt'}
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = {folder / 'pgbouncer.log'}
pidfile = {folder / 'pgbouncer.pid'}
""")
    for f in folder.iterdir():
        f.chmod(0o666)
    # It will not run as root: as root, run it as the user pgserver runs PostgreSQL as (its
    # socket lives in a directory only that user may enter).
    user = ["-u", "pgserver"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([PGBOUNCER, *user, str(folder / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", listen)) == 0:
                break
        if proc.poll() is not None:
            raise AssertionError(f"pgbouncer did not start: {(folder / 'pgbouncer.log').read_text()}")
        subprocess.run(["sleep", "0.05"], check=False)
    yield f"postgresql://postgres@127.0.0.1:{listen}/postgres"
    proc.terminate()
    proc.wait(30)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def pooled(bouncer: str, db_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, Database]]:
    """The test database through the pooler, as `kb` opens it (KB_DB_POOLER=transaction)."""
    monkeypatch.setenv("KB_DB_POOLER", "transaction")
    name = urlsplit(db_url).path.lstrip("/")
    direct = await asyncpg.connect(db_url)
    try:  # server connections in another zone than the app's: nothing may depend on it
        await direct.execute(f'ALTER DATABASE "{name}" SET timezone = \'America/New_York\'')
    finally:
        await direct.close()
    url = with_database(bouncer, name)
    db = await Database(url, max_size=8).open()
    yield url, db
    await db.close()


def _runs(ws: uuid.UUID, first: int, count: int) -> list[dict]:
    return [run_row(ws, i, strategy_name="s", kb_status="candidate", regime_oos=trend_snapshot(1, 0.002, i))
            for i in range(first, first + count)]


async def test_the_kb_works_through_a_transaction_pooler(pooled, db, make_workspace, insert_runs) -> None:
    _, through = pooled
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 30))
    # Many transactions from several clients over two server connections, at once.
    first = await asyncio.gather(*(ingest(through, ws) for _ in range(3)))
    assert sum(r.inserted for r in first) == 30
    await insert_runs(_runs(ws, 100, 5))
    assert (await ingest(through, ws)).inserted == 5
    answers = await asyncio.gather(*(recommend(through, RecommendQuery(ws, "s", tags=("uptrend",), top_k=5),
                                               TrialCache()) for _ in range(8)))
    assert {a.considered for a in answers} == {35}
    # Times travel in binary (UTC): whatever zone a server connection is in, they read back equal.
    moments = await asyncio.gather(*(through.fetchval("SELECT created_at FROM backtest_runs WHERE workspace_id = $1 "
                                                      "ORDER BY created_at LIMIT 1", ws) for _ in range(6)))
    assert set(moments) == {min(r["created_at"] for r in _runs(ws, 0, 1))}


async def test_upgrades_and_backfills_lock_through_the_pooler(pooled, db, make_workspace, insert_runs) -> None:
    url, through = pooled
    env_pooler = {"KB_DB_POOLER": "transaction"}
    code, _, err = await run_kb(url, "db", "upgrade", env=env_pooler)
    assert code == 0, err
    ws = await make_workspace()
    work = candidacy_workload(ws, n=400)
    await insert_runs(work.rows)
    held = work.rows[0]["id"] if work.rows[0]["id"] in work.expected else next(iter(work.expected))
    async with db.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM backtest_runs WHERE workspace_id = $1 AND id = $2 FOR UPDATE", ws, held)
        first = await start_kb(url, *kb_argv(work, ws), env=env_pooler)
        await poll(db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted", what="the lock",
                   proc=first)
        code, _, err = await run_kb(url, *kb_argv(work, ws), env=env_pooler)
        assert code == 1 and "is running on workspace" in err  # the lock holds across server connections
        await tx.rollback()
    out, err = await asyncio.wait_for(first.communicate(), 120)
    assert first.returncode == 0, err.decode()
    assert await db.fetchval("SELECT count(*) FROM backtest_runs WHERE workspace_id = $1 AND kb_status = 'candidate'",
                             ws) == len(work.expected)
    assert await db.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0  # nothing left behind
