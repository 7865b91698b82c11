"""`kb serve` as a real process: a clean stop on SIGTERM (the embedded PostgreSQL stops
too) and one-line failures at start-up."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import asyncpg
import httpx

from app.db import with_database
from tests.process.faultkit import KB, run_kb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KB_API_TOKEN", "KB_HOME")}
    return {**env, **extra}


async def test_sigterm_stops_serve_and_its_embedded_database(tmp_path) -> None:
    """On a fresh home (nothing migrated yet) `kb serve` migrates its own embedded database."""
    home = tmp_path / "home"
    env = _env(KB_HOME=str(home))
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(*KB, "serve", "--port", str(port), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("kb serve did not start")
    assert (home / "pgdata" / "postmaster.pid").exists()
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-500:]
    assert "Traceback" not in err.decode()
    assert not (home / "pgdata" / "postmaster.pid").exists()  # the embedded server stopped with it


async def test_an_external_database_behind_is_refused_not_migrated(server_dsn: str, tmp_path) -> None:
    """With DATABASE_URL, `kb serve` and `kb report` refuse a schema that is behind: a
    production database is migrated on purpose (`kb db upgrade`), never implicitly."""
    admin = await asyncpg.connect(server_dsn)
    await admin.execute('DROP DATABASE IF EXISTS "kb_test_behind"')
    await admin.execute('CREATE DATABASE "kb_test_behind"')
    try:
        url = with_database(server_dsn, "kb_test_behind")
        for argv in (("serve", "--port", str(_free_port())),
                     ("report", "--workspace-id", "7f1e8e7a-0000-4000-8000-000000000001", "--out",
                      str(tmp_path / "r.html"))):
            code, _, err = await run_kb(url, *argv)
            assert code == 1 and "kb db upgrade" in err, (argv, err)
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT to_regclass('backtest_runs')") is None  # nothing was migrated
        finally:
            await conn.close()
    finally:
        await admin.execute('DROP DATABASE IF EXISTS "kb_test_behind" WITH (FORCE)')
        await admin.close()


async def test_a_taken_port_is_one_line_and_exit_1(db_url) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run_kb(db_url, "serve", "--port", str(port))
    assert code == 1 and err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err


async def test_start_up_failures_are_one_line(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    cases = [
        (_env(KB_HOME=str(tmp_path / "file")), "set KB_HOME to a directory"),
        (_env(DATABASE_URL="postgresql://kb:pa@ss:w/rd@127.0.0.1:1/kb"), "not a valid connection URL"),
        (_env(DATABASE_URL="postgresql://kb:pa%40ss@127.0.0.1:1/kb"), "cannot connect"),
    ]
    for env, needle in cases:
        proc = await asyncio.create_subprocess_exec(*KB, "serve", "--port", str(_free_port()), env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, raw = await asyncio.wait_for(proc.communicate(), 60)
        err = raw.decode()
        assert proc.returncode == 1 and err.count("\n") == 1 and needle in err, err
        assert "ss:w/rd" not in err and "pa@" not in err and "pa%40" not in err


async def test_two_demos_at_once_on_a_fresh_home(tmp_path) -> None:
    """Both start the embedded server and migrate the same fresh database; the second
    waits for the first to finish building the workspace, then builds it again: both exit 0."""
    env = _env(KB_HOME=str(tmp_path / "home"))
    procs = [await asyncio.create_subprocess_exec(*KB, "demo", "--runs", "300", env=env,
                                                  stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
             for _ in range(2)]
    results = [await asyncio.wait_for(p.communicate(), 180) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], [r[1].decode()[-500:] for r in results]
    for _, err in results:
        assert "Traceback" not in err.decode() and "kb: error" not in err.decode()
