"""Two `kb serve` processes on one database, as behind a load balancer: an ingest through
one is in the other's next answer (its caches check the strategy's revision), and a
backfill started through one holds the workspace lock against a backfill started through
the other. The first backfill is held at a known point: a row lock this test takes on
one of the runs it must write."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.db import Database
from app.db.connector import application_name
from tests.factories import API_TOKEN, run_row, trend_snapshot
from tests.process.faultkit import ohlcv_csv, poll, regime_workload

KB = [sys.executable, "-m", "app.services.kb.cli"]
HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(db_url: str) -> tuple[asyncio.subprocess.Process, httpx.AsyncClient]:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": db_url, "KB_API_TOKEN": API_TOKEN}
    proc = await asyncio.create_subprocess_exec(*KB, "serve", "--port", str(port), env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=120)
    for _ in range(1200):  # until it answers (a bound on a failure, not an expectation of speed)
        try:
            if (await client.get("/healthz")).status_code == 200:
                return proc, client
        except httpx.TransportError:
            pass
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError("kb serve did not start")


@pytest.fixture
async def servers(db_url: str) -> AsyncIterator[list[tuple[asyncio.subprocess.Process, httpx.AsyncClient]]]:
    both = [await _serve(db_url), await _serve(db_url)]
    yield both
    for proc, client in both:
        await client.aclose()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)


async def test_an_ingest_through_one_server_is_in_the_others_next_answer(db, make_workspace, insert_runs,
                                                                         servers) -> None:
    (_, a), (_, b) = servers
    ws = await make_workspace()
    rows = [run_row(ws, i, strategy_name="s", kb_status="candidate", regime_oos=trend_snapshot(1, 0.002, i))
            for i in range(12)]
    await insert_runs(rows)
    body = {"workspace_id": str(ws), "strategy_name": "s", "tags": ["uptrend"], "top_k": 5}
    assert (await a.post("/kb/trials/ingest", json={"workspace_id": str(ws)})).status_code == 200
    assert (await b.post("/kb/trials/recommend", json=body)).json()["considered"] == 12  # b caches 12
    await insert_runs([run_row(ws, 100 + i, strategy_name="s", kb_status="candidate",
                               regime_oos=trend_snapshot(1, 0.002, 100 + i)) for i in range(5)])
    assert (await a.post("/kb/trials/ingest", json={"workspace_id": str(ws)})).json()["inserted"] == 5
    assert (await b.post("/kb/trials/recommend", json=body)).json()["considered"] == 17
    assert (await a.post("/kb/trials/recommend", json=body)).json()["considered"] == 17
    cached = (await b.get("/kb/cache")).json()  # b took the 5 new trials by appending them
    trials = [e for e in cached["trials"] if e["workspace_id"] == str(ws)]
    assert cached["appends"] >= 1 and [e["rows"] for e in trials] == [17]
    assert 0 < trials[0]["bytes_per_row"] < 1000


async def test_a_backfill_through_each_server_takes_the_lock_once(db: Database, make_workspace, insert_runs,
                                                                   servers, tmp_path: Path) -> None:
    (proc_a, a), (_, b) = servers
    ws = await make_workspace()
    work = regime_workload(ws, ohlcv_csv(tmp_path / "AAPL.csv"), n=200)  # sync reads the symbol from the name
    await insert_runs(work.rows)
    body = {"workspace_id": str(ws), "ohlcv": [str(tmp_path / "AAPL.csv")], "batch_size": 50}
    first_row = work.rows[1]["id"]  # every 10th run has no dates; this one is written in the first batch
    async with db.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM backtest_runs WHERE workspace_id = $1 AND id = $2 FOR UPDATE", ws,
                             first_row)
        through_a = asyncio.create_task(a.post("/kb/sync", json=body))
        # A's backfill holds the workspace lock and waits on the row this test holds.
        await poll(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND "
                       "wait_event_type = 'Lock'", application_name(proc_a.pid), what="a's backfill to block")
        refused = await b.post("/kb/sync", json=body)
        assert refused.status_code == 409 and "is running on workspace" in refused.json()["detail"]
        await tx.rollback()
    done = await through_a
    assert done.status_code == 200, done.text
    # The lock is free again: a sync through the other server finishes the work.
    assert (await b.post("/kb/sync", json=body)).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM backtest_runs WHERE workspace_id = $1 AND regime_oos IS NOT NULL",
                             ws) == len(work.expected)
    assert uuid.UUID(str(first_row)) in work.expected
