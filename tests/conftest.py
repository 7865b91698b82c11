"""Real PostgreSQL for every test: a template database migrated once per session and
cloned per test, so code under test can commit freely."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.db import Database, with_database
from app.db.embedded import embedded_dsn
from app.db.migrate import upgrade
from app.db.runs import copy_runs
from tests.factories import API_TOKEN, RUN_COLUMNS

TEMPLATE_DB = f"kb_test_template_{os.getpid()}"
# Matrices kept between processes go to a directory of this session's, never the user's KB_HOME.
os.environ["KB_MATRIX_CACHE"] = tempfile.mkdtemp(prefix="kb-matrices-")


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return url
    # A private embedded server for the test session; never the user's own KB_HOME.
    return embedded_dsn(Path(tmp_path_factory.mktemp("pg")) / "pgdata")


@pytest.fixture(scope="session")
def template_dsn(server_dsn: str) -> Iterator[str]:
    async def create() -> None:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
            await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(with_database(server_dsn, TEMPLATE_DB))
        try:
            await upgrade(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    yield with_database(server_dsn, TEMPLATE_DB)
    asyncio.run(drop())


@pytest.fixture
async def db_url(server_dsn: str, template_dsn: str) -> AsyncIterator[str]:
    name = f"kb_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    yield with_database(server_dsn, name)
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, max_size=6)
    await database.open()
    yield database
    await database.close()


@pytest.fixture
def make_workspace(db: Database) -> Callable[..., Any]:
    async def make(name: str = "test workspace", workspace_id: uuid.UUID | None = None) -> uuid.UUID:
        wid = workspace_id or uuid.uuid4()
        await db.execute("INSERT INTO workspaces (id, name) VALUES ($1, $2)", wid, name)
        return wid

    return make



@pytest.fixture
def insert_runs(db: Database) -> Callable[..., Any]:
    """Insert run dicts (see `run_row`) with COPY; returns their ids."""

    async def insert(rows: list[dict[str, Any]]) -> list[uuid.UUID]:
        async with db.acquire() as conn:
            await copy_runs(conn, rows, RUN_COLUMNS)
        return [r["id"] for r in rows]

    return insert


@pytest.fixture
def cli(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    """Run the real `kb` command in-process against the test database: (exit, stdout, stderr)."""
    from app.cli.main import amain

    monkeypatch.setenv("DATABASE_URL", db_url)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await amain([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run




@pytest.fixture
async def api(db: Database, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API on the test database, token `API_TOKEN` required; no auth header set."""
    from app.api.app import create_app

    monkeypatch.setenv("KB_API_TOKEN", API_TOKEN)
    app = create_app(db)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
