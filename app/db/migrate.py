"""Numbered plain-SQL migrations, applied in order under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from app.db.connector import Conn
from app.db.sql import q
from app.errors import KBError

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


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
    folder = resources.files("app.db.sql") / "migrations"
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


async def _applied(conn: Conn) -> dict[int, asyncpg.Record]:
    exists = await conn.fetchval(q("migrations_table_exists"))
    if not exists:
        return {}
    rows = await conn.fetch(q("applied_migrations"))
    return {r["version"]: r for r in rows}


async def upgrade(conn: Conn, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply pending migrations (the packaged ones unless given); returns those applied
    by this call.

    All pending migrations apply in one transaction, under a transaction-scoped advisory
    lock: concurrent upgrades wait for each other (the loser then finds nothing pending),
    a failure leaves the schema as it was, and the lock holds through a connection pooler
    in transaction mode (a session lock would stay on whichever server connection the
    pooler gave the statement that took it).
    """
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute(q("take_migration_lock"))
        await conn.execute(q("create_migrations_table"))
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
            await conn.execute(migration.sql)
            await conn.execute(q("record_migration"), migration.version, migration.name, migration.checksum)
            applied_now.append(migration)
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


async def dump_schema(conn: Conn) -> str:
    """A stable text description of the public schema (tables, columns, constraints,
    indexes, triggers), independent of server version formatting quirks in pg_dump."""
    lines: list[str] = []
    for r in await conn.fetch(q("dump_columns")):
        nullability = "NOT NULL" if r["attnotnull"] else "NULL"
        default = f" DEFAULT {r['default_expr']}" if r["default_expr"] else ""
        identity = " IDENTITY" if r["is_identity"] else ""
        lines.append(f"column {r['table_name']}.{r['attname']} {r['type']} {nullability}{default}{identity}")
    for r in await conn.fetch(q("dump_partitioning")):
        lines.append(f"partitioned {r['table_name']} {r['key']} into {r['partitions']}")
    for r in await conn.fetch(q("dump_constraints")):
        lines.append(f"constraint {r['table_name']}.{r['conname']} {r['def']}")
    for r in await conn.fetch(q("dump_indexes")):
        lines.append(f"index {r['tablename']}.{r['indexname']} {r['indexdef']}")
    for r in await conn.fetch(q("dump_triggers")):
        lines.append(f"trigger {r['table_name']}.{r['tgname']} {r['def']}")
    return "\n".join(lines) + "\n"
