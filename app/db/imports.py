"""Writing checked import rows inside one transaction, COPYed straight into `backtest_runs`.

COPY has no ON CONFLICT, so the skipping is done before it: imports of one (workspace,
source) are serialised on a transaction advisory lock, the ids already stored are read
(only when the source has any rows in the workspace at all), and ids seen earlier in
the same import are dropped, first one kept, as the unique index would. A dry run takes
the same path and counts instead of writing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from app.db.connector import Conn, Database
from app.db.sql import q
from app.db.workspaces import ensure_workspace

KEY_COLUMN = "import_source_id"


class Writer:
    def __init__(self, conn: Conn, workspace_id: uuid.UUID, source: str, columns: Sequence[str],
                 dry_run: bool, any_present: bool) -> None:
        self.conn = conn
        self.columns = list(columns)
        self.key = self.columns.index(KEY_COLUMN)
        self.workspace_id = workspace_id
        self.source = source
        self.dry_run = dry_run
        self.any_present = any_present
        self.seen: set[Any] = set()
        self.written = 0

    async def write(self, records: list[tuple[Any, ...]]) -> None:
        """Write rows (tuples in `columns` order) whose source id is new to the workspace
        and to this import; in a dry run only count them."""
        if not records:
            return
        key, seen = self.key, self.seen
        present: set[Any] = set()
        if self.any_present:
            found = await self.conn.fetchval(q("import_present_ids"), self.workspace_id, self.source,
                                             [r[key] for r in records])
            present = set(found)
        fresh = []
        for record in records:
            source_id = record[key]
            if source_id not in seen and source_id not in present:
                seen.add(source_id)
                fresh.append(record)
        if fresh and not self.dry_run:
            await self.conn.copy_records_to_table("backtest_runs", records=fresh, columns=self.columns)
        self.written += len(fresh)

    async def new_rows(self) -> int:
        """Runs written (or, in a dry run, that would be written)."""
        return self.written


@asynccontextmanager
async def writer(db: Database, workspace_id: uuid.UUID, source: str, columns: Sequence[str], *,
                 dry_run: bool) -> AsyncIterator[Writer]:
    """One transaction for the whole import: a fault leaves nothing half-written."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(q("import_lock_source"), str(workspace_id), source)
        if not dry_run:
            await ensure_workspace(conn, workspace_id, "imported")
        any_present = bool(await conn.fetchval(q("import_source_present"), workspace_id, source))
        yield Writer(conn, workspace_id, source, columns, dry_run, any_present)
