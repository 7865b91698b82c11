"""Writing checked import rows inside one transaction: each chunk is COPYed into a
staging table, then one INSERT moves it into `backtest_runs`, skipping rows already
imported from the same source. A dry run stages everything and counts instead."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from app.db.connector import Conn, Database
from app.db.sql import q
from app.db.workspaces import ensure_workspace


class Writer:
    def __init__(self, conn: Conn, workspace_id: uuid.UUID, source: str, columns: Sequence[str],
                 dry_run: bool) -> None:
        self.conn = conn
        self.columns = list(columns)
        self.workspace_id = workspace_id
        self.source = source
        self.dry_run = dry_run
        self.written = 0
        self.started = datetime.now(UTC)

    async def write(self, records: list[tuple[Any, ...]]) -> None:
        """Stage checked rows (tuples in `columns` order) and, unless a dry run, insert them."""
        if not records:
            return
        await self.conn.copy_records_to_table("kb_import_staging", records=records, columns=self.columns)
        if not self.dry_run:
            self.written += int(await self.conn.fetchval(q("import_insert"), self.workspace_id, self.source,
                                                         self.started))
            await self.conn.execute(q("import_staging_clear"))

    async def new_rows(self) -> int:
        """Runs written (or, in a dry run, that would be written)."""
        if self.dry_run:
            return int(await self.conn.fetchval(q("import_count_new"), self.workspace_id, self.source))
        return self.written


@asynccontextmanager
async def writer(db: Database, workspace_id: uuid.UUID, source: str, columns: Sequence[str], *,
                 dry_run: bool) -> AsyncIterator[Writer]:
    """One transaction for the whole import: a fault leaves nothing half-written."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(q("import_staging_create"))
        if not dry_run:
            await ensure_workspace(conn, workspace_id, "imported")
        yield Writer(conn, workspace_id, source, columns, dry_run)
