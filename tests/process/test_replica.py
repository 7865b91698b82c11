"""Reads from a real streaming replica (KB_READ_DATABASE_URL): a standby made with
pg_basebackup from pgserver's own binaries, on its own socket. Fresh, lagging (replay
paused on the standby: it will not catch up, whatever the timing) and down (stopped)."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.api.app import create_app
from app.db import Database, with_database
from app.db.migrate import upgrade
from app.db.replica import BEHIND, DOWN, READ_FROM_REPLICA, Replica
from app.db.runs import copy_runs
from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, TrialCache, recommend
from tests.factories import API_TOKEN, RUN_COLUMNS, run_row, trend_snapshot

pgserver = pytest.importorskip("pgserver")
from pgserver import _commands as pg  # noqa: E402


@dataclass
class Pair:
    primary_url: str
    replica_url: str
    standby: Path
    socket: Path
    user: str | None

    def ctl(self, *args: str) -> None:
        pg.pg_ctl(list(args), pgdata=self.standby, user=self.user, timeout=60)

    def start(self) -> None:
        self.ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket}", "-l", str(self.standby / "log"), "start")

    def stop(self) -> None:
        self.ctl("-w", "-m", "fast", "stop")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = Path(tempfile.mkdtemp(prefix="kbrepl", dir="/tmp"))
    server = pgserver.get_server(base / "primary", cleanup_mode="stop")
    user = "pgserver" if os.geteuid() == 0 else None
    standby, sock = base / "standby", base / "sock"
    sock.mkdir(mode=0o777)
    sock.chmod(0o777)
    if user is not None:
        import pwd

        base.chmod(0o777)
        os.chown(sock, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    primary = server.get_uri()
    host = primary.split("host=")[1].split("&")[0]

    async def make_db() -> None:
        admin = await asyncpg.connect(primary)
        await admin.execute("CREATE DATABASE kb_replica_test")
        await admin.close()
        conn = await asyncpg.connect(with_database(primary, "kb_replica_test"))
        await upgrade(conn)
        await conn.close()

    asyncio.run(make_db())
    pg.pg_basebackup(["-D", str(standby), "-R", "-X", "stream", "-c", "fast", "-h", host, "-U", "postgres"],
                     user=user, timeout=120)
    p = Pair(with_database(primary, "kb_replica_test"), f"postgresql://postgres@/kb_replica_test?host={sock}",
             standby, sock, user)
    p.start()
    yield p
    try:
        p.stop()
    finally:
        server.cleanup()


@pytest.fixture
async def primary(pair: Pair) -> AsyncIterator[Database]:
    db = await Database(pair.primary_url, max_size=4).open()
    yield db
    await db.close()


async def _seed(db: Database, runs: int = 12) -> uuid.UUID:
    ws = uuid.uuid4()
    await db.execute("INSERT INTO workspaces (id, name) VALUES ($1, $2)", ws, f"replica {ws}")
    rows = [run_row(ws, i, strategy_name="s", kb_status="candidate", regime_oos=trend_snapshot(1, 0.002, i))
            for i in range(runs)]
    await _copy(db, rows)
    await ingest(db, ws)
    return ws


async def _copy(db: Database, rows: list[dict]) -> None:
    async with db.acquire() as conn:
        await copy_runs(conn, rows, RUN_COLUMNS)


async def _paused(pair: Pair, paused: bool) -> None:
    conn = await asyncpg.connect(pair.replica_url)
    try:
        await conn.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")
    finally:
        await conn.close()


async def test_a_fresh_replica_serves_reads_that_include_the_callers_writes(pair: Pair, primary: Database) -> None:
    ws = await _seed(primary)
    replica = Replica(primary, pair.replica_url, max_wait=60)  # waits for replay, whatever the load
    try:
        reader = await replica.reader()  # written just before: the replica waits to replay it
        assert reader is not primary and replica.reads[READ_FROM_REPLICA] == 1
        assert await reader.fetchval("SELECT count(*) FROM kb_trials WHERE workspace_id = $1", ws) == 12
        cache = TrialCache()
        answer = await recommend(primary, RecommendQuery(ws, "s", tags=("uptrend",), top_k=5), cache, replica=replica)
        assert answer.considered == 12 and cache.lagged == 0
    finally:
        await replica.close()


async def test_a_lagging_replica_is_passed_over(pair: Pair, primary: Database, caplog) -> None:
    ws = await _seed(primary)
    replica = Replica(primary, pair.replica_url, max_wait=0.05)
    cache = TrialCache()
    query = RecommendQuery(ws, "s", tags=("uptrend",), top_k=5)
    try:
        await replica.reader()
        await _paused(pair, True)
        # Written after replay stopped: only the primary has these.
        rows = [run_row(ws, 100 + i, strategy_name="s", kb_status="candidate",
                        regime_oos=trend_snapshot(1, 0.002, 100 + i)) for i in range(3)]
        await _copy(primary, rows)
        await ingest(primary, ws)
        with caplog.at_level(logging.INFO, logger="app.db.replica"):
            assert await replica.reader() is primary and await replica.reader() is primary
            answer = await recommend(primary, query, cache, replica=replica)
        assert answer.considered == 15  # the caller's own ingest, never an older answer
        assert (cache.lagged, cache.evidence.lagged, replica.reads[BEHIND]) == (1, 1, 3)
        assert sum("is behind the primary" in r.message for r in caplog.records) == 1  # said once
    finally:
        await _paused(pair, False)
        await replica.close()


async def test_a_replica_that_is_down_sends_reads_to_the_primary(pair: Pair, primary: Database, caplog) -> None:
    ws = await _seed(primary)
    pair.stop()
    replica = Replica(primary, pair.replica_url, max_wait=0.05)
    try:
        with caplog.at_level(logging.INFO, logger="app.db.replica"):
            assert await replica.reader() is primary
            answer = await recommend(primary, RecommendQuery(ws, "s", tags=("uptrend",), top_k=5), TrialCache(),
                                     replica=replica)
            assert await replica.reader() is primary
        assert answer.considered == 12 and replica.reads[DOWN] == 3  # two views and one answer's matrices
        assert sum("cannot be reached" in r.message for r in caplog.records) == 1
    finally:
        await replica.close()
        pair.start()


async def test_the_api_reads_views_from_the_replica(pair: Pair, primary: Database, monkeypatch) -> None:
    ws = await _seed(primary)
    monkeypatch.setenv("KB_READ_DATABASE_URL", pair.replica_url)
    monkeypatch.setenv("KB_READ_MAX_WAIT", "60")
    monkeypatch.setenv("KB_API_TOKEN", API_TOKEN)
    app = create_app(primary)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {API_TOKEN}"}) as api:
        status = (await api.get("/kb/status", params={"workspace_id": str(ws)})).json()
        answer = (await api.post("/kb/trials/recommend", json={"workspace_id": str(ws), "strategy_name": "s",
                                                                "tags": ["uptrend"]})).json()
        replica = app.state.replica
    assert status["active_trials"] == 12 and answer["considered"] == 12
    assert replica is not None and replica.reads[READ_FROM_REPLICA] >= 2 and replica.reads[DOWN] == 0
