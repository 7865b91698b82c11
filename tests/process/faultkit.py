"""Helpers for the fault tests: workloads for both backfills, a `kb` subprocess, and a
TCP proxy that can cut every connection and refuse new ones (a network outage)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from app.db import Database
from app.db.connector import application_name
from tests.factories import BASE_TIME, ohlcv_frame, run_row

KB = [sys.executable, "-m", "app.services.kb.cli"]
BATCH = 50
HOURS = 3000


@dataclass
class Workload:
    """Rows for one backfill kind, and how to tell which of them the backfill changed."""

    kind: str
    rows: list[dict[str, Any]]
    expected: set[uuid.UUID]  # the rows an uninterrupted run changes
    args: list[str] = field(default_factory=list)

    @property
    def command(self) -> str:
        return f"backfill-{self.kind}"

    def changed_sql(self) -> str:
        if self.kind == "candidacy":
            return "SELECT id FROM backtest_runs WHERE workspace_id = $1 AND kb_status = 'candidate'"
        return "SELECT id FROM backtest_runs WHERE workspace_id = $1 AND regime_oos IS NOT NULL"

    async def done(self, db: Database, ws: uuid.UUID) -> int:
        """Rows written so far (committed)."""
        if self.kind == "candidacy":
            return int(await db.fetchval("SELECT count(*) FROM kb_status_history WHERE workspace_id = $1", ws))
        return int(await db.fetchval(
            "SELECT count(*) FROM backtest_runs WHERE workspace_id = $1 AND regime_oos IS NOT NULL", ws))


def candidacy_workload(ws: uuid.UUID, n: int = 20_000) -> Workload:
    good = {"trades": 40, "sharpe": 1.2, "max_drawdown_pct": -12.0}
    rows = [run_row(ws, i, summary=good if i % 10 < 3 else {**good, "sharpe": -1}) for i in range(n)]
    return Workload("candidacy", rows, {r["id"] for i, r in enumerate(rows) if i % 10 < 3})


def ohlcv_csv(path: Path) -> Path:
    ohlcv_frame(BASE_TIME - timedelta(days=200), HOURS, seed=5).to_csv(path, index=False)
    return path


def regime_workload(ws: uuid.UUID, ohlcv: Path, n: int = 8_000) -> Workload:
    """Runs with many distinct OOS windows; every 10th has no dates (skipped). 8,000 runs are 160
    batches of 50: room for kills at any point, at a third of the time of the candidacy workload."""
    start = BASE_TIME - timedelta(days=200)
    rows, expected = [], set()
    for i in range(n):
        meta: dict[str, Any] = {"symbol": "AAPL", "timeframe": "1h"}
        if i % 10:
            lo = (i * 7) % (HOURS - 700)
            meta["oos_start"] = (start + timedelta(hours=lo)).isoformat()
            meta["oos_end"] = (start + timedelta(hours=lo + 200 + i % 400)).isoformat()
        row = run_row(ws, i, dataset_meta=meta)
        rows.append(row)
        if i % 10:
            expected.add(row["id"])
    args = ["--ohlcv-file", str(ohlcv), "--symbol", "AAPL", "--timeframe", "1h"]
    return Workload("regime", rows, expected, args)


def kb_argv(work: Workload, ws: uuid.UUID, *extra: str) -> list[str]:
    return [work.command, "--workspace-id", str(ws), "--limit", "100000", "--batch-size", str(BATCH),
            *work.args, *extra]


async def start_kb(url: str, *argv: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    env = {**os.environ, "DATABASE_URL": url, **(env or {})}
    return await asyncio.create_subprocess_exec(*KB, *argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)


async def run_kb(url: str, *argv: str, limit_s: float = 120, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await start_kb(url, *argv, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_for_progress(db: Database, work: Workload, ws: uuid.UUID, proc: asyncio.subprocess.Process,
                            at_least: int, limit_s: float = 60) -> int:
    """Poll until `at_least` rows are committed or the process has ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        done = await work.done(db, ws)
        if done >= at_least or proc.returncode is not None:
            return done
        await asyncio.sleep(0.005)
    raise AssertionError(f"no progress to {at_least} rows within {limit_s} s")


async def wait_on_row_lock(db: Database, proc: asyncio.subprocess.Process, what: str) -> None:
    """Until the `kb` process waits on a row lock another session holds."""
    for _ in range(3000):
        if await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                             "AND wait_event_type = 'Lock'", application_name(proc.pid)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} never reached the locked rows")


async def poll(db: Database, query: str, *args: Any, what: str,
               proc: asyncio.subprocess.Process | None = None, limit_s: float = 60) -> Any:
    """Until `query` returns a truthy value: that value. Only database state is polled;
    `limit_s` bounds a wait that never ends (a failure), it is no expectation of speed.
    With `proc`, a process that ends meanwhile fails at once, with its stderr."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        value = await db.fetchval(query, *args)
        if value:
            return value
        if proc is not None and proc.returncode is not None:
            err = (await proc.stderr.read()).decode() if proc.stderr is not None else ""
            raise AssertionError(f"{what}: the process ended first (exit {proc.returncode}): {err}")
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {limit_s} s")
        await asyncio.sleep(0.01)


async def wait_blocked_by(db: Database, proc: asyncio.subprocess.Process, blocker: int, what: str,
                          table: str | None = None, limit_s: float = 60) -> int:
    """Until a server connection of the `kb` process waits for a lock that backend
    `blocker` holds (or is queued for ahead of it), on `table` if given; returns the
    waiting backend's pid."""
    return int(await poll(
        db, "SELECT a.pid FROM pg_stat_activity a WHERE a.application_name = $1 "
            "AND $2 = ANY(pg_blocking_pids(a.pid)) AND ($3::text IS NULL OR EXISTS ("
            "SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted AND l.relation = to_regclass($3))) "
            "ORDER BY a.pid LIMIT 1",
        application_name(proc.pid), blocker, table, what=what, proc=proc, limit_s=limit_s))


async def blocking_pids(db: Database, pid: int) -> set[int]:
    """The backends that backend `pid` waits for."""
    return set(await db.fetchval("SELECT pg_blocking_pids($1)", pid))


async def waits_for(db: Database, pid: int) -> list[tuple[str | None, str]]:
    """The (table, mode) of each lock backend `pid` waits for; table None when it is no
    relation lock (a row's transaction, an advisory lock)."""
    return [(r["rel"], r["mode"]) for r in await db.fetch(
        "SELECT relation::regclass::text AS rel, mode FROM pg_locks WHERE pid = $1 AND NOT granted", pid)]


async def holds(db: Database, pid: int, table: str) -> list[str]:
    """The lock modes backend `pid` holds on `table`."""
    return sorted(r["mode"] for r in await db.fetch(
        "SELECT mode FROM pg_locks WHERE pid = $1 AND granted AND relation = to_regclass($2)", pid, table))


async def terminate_backends(db: Database, pid: int) -> int:
    """pg_terminate_backend every server connection of the `kb` process `pid`."""
    return int(await db.fetchval(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1", application_name(pid)))


async def assert_same_as_uninterrupted(db: Database, work: Workload, ws: uuid.UUID) -> None:
    """The final state an uninterrupted run leaves: exactly the expected rows changed,
    one history row each (candidacy), and a completed ledger that counts them."""
    got = {r["id"] for r in await db.fetch(work.changed_sql(), ws)}
    assert got == work.expected, (len(got), len(work.expected))
    if work.kind == "candidacy":
        assert await db.fetchval("SELECT count(*) FROM kb_status_history WHERE workspace_id = $1",
                                 ws) == len(work.expected)
        assert await db.fetchval("SELECT count(DISTINCT run_id) FROM kb_status_history WHERE workspace_id = $1",
                                 ws) == len(work.expected)
    ledger = await db.fetch("SELECT status, counts::json->>'updated' AS updated, counts::json->>'scanned' AS "
                            "scanned FROM kb_backfill_runs WHERE workspace_id = $1 AND NOT dry_run", ws)
    assert [r["status"] for r in ledger] == ["completed"]
    assert int(ledger[0]["updated"]) == len(work.expected)
    assert int(ledger[0]["scanned"]) == len(work.rows)


class OutageProxy:
    """Forwards TCP connections to the PostgreSQL server. `outage()` drops every open
    connection and turns new ones away until `restore()`."""

    def __init__(self, server_dsn: str) -> None:
        parts = urlsplit(server_dsn)
        query = parse_qs(parts.query)
        self._socket_dir = (query.get("host") or [parts.hostname or ""])[0]
        self._port = parts.port or 5432
        self._user = parts.username or "postgres"
        self._password = parts.password
        self._server: asyncio.Server | None = None
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.refusing = False
        self.port = 0

    async def __aenter__(self) -> OutageProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.outage()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, database: str) -> str:
        auth = self._user + (f":{self._password}" if self._password else "")
        return urlunsplit(("postgresql", f"{auth}@127.0.0.1:{self.port}", "/" + database, "", ""))

    def outage(self) -> None:
        self.refusing = True
        for a, b in self._links:
            for w in (a, b):
                w.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self.refusing = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        if self._socket_dir.startswith("/"):
            up_r, up_w = await asyncio.open_unix_connection(f"{self._socket_dir}/.s.PGSQL.{self._port}")
        else:
            up_r, up_w = await asyncio.open_connection(self._socket_dir, self._port)
        self._links.append((writer, up_w))
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()


_COMMIT = b"Q\x00\x00\x00\x0cCOMMIT;\x00"  # a simple-protocol COMMIT, as asyncpg sends it


class LostCommitProxy(OutageProxy):
    """Like `OutageProxy`, and once `arm()`ed, forwards the next COMMIT to the server but
    drops the connection before the server's answer reaches the client: the commit
    happened, the client cannot know."""

    def __init__(self, server_dsn: str) -> None:
        super().__init__(server_dsn)
        self.armed = False
        self.dropped = 0

    def arm(self) -> None:
        self.armed = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._socket_dir.startswith("/"):
            up_r, up_w = await asyncio.open_unix_connection(f"{self._socket_dir}/.s.PGSQL.{self._port}")
        else:
            up_r, up_w = await asyncio.open_connection(self._socket_dir, self._port)
        self._links.append((writer, up_w))
        held = asyncio.Event()
        await asyncio.gather(self._upstream(reader, up_w, held), self._downstream(up_r, writer, up_w, held))

    async def _upstream(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: asyncio.Event) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                if self.armed and _COMMIT in data:
                    self.armed = False
                    self.dropped += 1
                    held.set()  # the answer to this COMMIT is never delivered
                dst.write(data)
                await dst.drain()
        dst.transport.abort()

    @staticmethod
    async def _downstream(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: asyncio.StreamWriter,
                          held: asyncio.Event) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                if held.is_set():
                    await asyncio.sleep(0.2)  # let the server finish the commit, then cut both ways
                    break
                dst.write(data)
                await dst.drain()
        dst.transport.abort()
        upstream.transport.abort()
