"""`kb db upgrade|status|dump-schema`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from app.cli.console import echo
from app.db import Database
from app.db.migrate import dump_schema, status


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema: upgrade, status, dump-schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=type(db))
    db_sub.add_parser("upgrade", help="apply pending migrations (safe to run concurrently)").set_defaults(
        handler=cmd_db_upgrade, database="migrate")
    db_sub.add_parser("status", help="list applied and pending migrations").set_defaults(
        handler=cmd_db_status, database="open")
    db_sub.add_parser("dump-schema", help="print the schema description the tests compare against").set_defaults(
        handler=cmd_db_dump_schema)


async def cmd_db_upgrade(db: Database, args: argparse.Namespace) -> int:
    async with db.acquire() as conn:
        states = await status(conn)
    echo(f"schema up to date: {len(states)} migration(s) applied")
    return 0


async def cmd_db_status(db: Database, args: argparse.Namespace) -> int:
    async with db.acquire() as conn:
        states = await status(conn)
    for s in states:
        mark = f"applied {s.applied_at}" if s.applied else "pending"
        echo(f"{s.version:04d}_{s.name}  {mark}")
    pending = sum(not s.applied for s in states)
    if pending:
        echo(f"{pending} pending: run `kb db upgrade`")
    return 0


async def cmd_db_dump_schema(db: Database, args: argparse.Namespace) -> int:
    async with db.acquire() as conn:
        sys.stdout.write(await dump_schema(conn))
    return 0
