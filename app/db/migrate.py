"""Numbered plain-SQL migrations, applied in order under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from app.db.connector import Conn
from app.errors import KBError

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed number works; it only has to differ from the backfill locks.
MIGRATION_LOCK_KEY = 7_302_118_001


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    version: int
    name: str
    applied: bool
    applied_at: str | None


def load_migrations() -> list[Migration]:
    folder = resources.files("app.db") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise KBError("two migration files share a version number")
    return found


_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def _applied(conn: Conn) -> dict[int, asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations")
    return {r["version"]: r for r in rows}


async def upgrade(conn: Conn, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply pending migrations (the packaged ones unless given); returns those applied
    by this call.

    The advisory lock makes concurrent upgrades wait for each other; the loser then
    finds nothing pending.
    """
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_LEDGER)
        applied = await _applied(conn)
        for migration in migrations:
            done = applied.get(migration.version)
            if done is not None:
                if done["checksum"] != migration.checksum:
                    raise KBError(
                        f"migration {migration.version:04d}_{migration.name} was changed after it was "
                        "applied; add a new migration instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied_now.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def status(conn: Conn) -> list[MigrationState]:
    applied = await _applied(conn)
    states = []
    for migration in load_migrations():
        row = applied.get(migration.version)
        states.append(
            MigrationState(
                migration.version,
                migration.name,
                row is not None,
                row["applied_at"].isoformat() if row is not None else None,
            )
        )
    return states


async def pending_count(conn: Conn) -> int:
    return sum(1 for s in await status(conn) if not s.applied)


_DUMP_COLUMNS = """
SELECT c.relname AS table_name, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS default_expr,
       (a.attidentity <> '') AS is_identity
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""
_DUMP_CONSTRAINTS = """
SELECT c.relname AS table_name, con.conname, pg_get_constraintdef(con.oid) AS def
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public'
ORDER BY c.relname, con.conname
"""
_DUMP_INDEXES = """
SELECT tablename, indexname, indexdef FROM pg_indexes
WHERE schemaname = 'public' ORDER BY tablename, indexname
"""
_DUMP_TRIGGERS = """
SELECT c.relname AS table_name, t.tgname, pg_get_triggerdef(t.oid) AS def
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT t.tgisinternal
ORDER BY c.relname, t.tgname
"""


async def dump_schema(conn: Conn) -> str:
    """A stable text description of the public schema (tables, columns, constraints,
    indexes, triggers), independent of server version formatting quirks in pg_dump."""
    lines: list[str] = []
    for r in await conn.fetch(_DUMP_COLUMNS):
        nullability = "NOT NULL" if r["attnotnull"] else "NULL"
        default = f" DEFAULT {r['default_expr']}" if r["default_expr"] else ""
        identity = " IDENTITY" if r["is_identity"] else ""
        lines.append(f"column {r['table_name']}.{r['attname']} {r['type']} {nullability}{default}{identity}")
    for r in await conn.fetch(_DUMP_CONSTRAINTS):
        lines.append(f"constraint {r['table_name']}.{r['conname']} {r['def']}")
    for r in await conn.fetch(_DUMP_INDEXES):
        lines.append(f"index {r['tablename']}.{r['indexname']} {r['indexdef']}")
    for r in await conn.fetch(_DUMP_TRIGGERS):
        lines.append(f"trigger {r['table_name']}.{r['tgname']} {r['def']}")
    return "\n".join(lines) + "\n"
