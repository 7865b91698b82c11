"""Writing checked import rows inside one transaction, COPYed straight into `backtest_runs`.

COPY has no ON CONFLICT, so the skipping is done before it: imports of one (workspace,
source) are serialised on a transaction advisory lock, the ids already stored are read
(only when the source has any rows in the workspace at all: the transaction sees its own
earlier chunks there too), and ids seen earlier in the same import are dropped, first
one kept, as the unique index would. A dry run takes the same path and counts instead
of writing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from app.db.connector import Conn, Database
from app.db.runs import copy_records
from app.db.sql import q
from app.db.workspaces import ensure_workspace

KEY_COLUMN = "import_source_id"


class SeenIds:
    """The ids written so far by one import, as 64-bit hashes (8 bytes an id, where a set
    of the ids themselves took about 93): sorted runs, merged while the newest is at
    least half the size of the one before and the result at most RUN_CAP hashes, so a
    lookup searches a few runs and a merge never copies much at once. A hash that matches
    may be another id's: the caller confirms matches against the table."""

    RUN_CAP = 1 << 20

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    @staticmethod
    def hashes(ids: Sequence[Any]) -> np.ndarray:
        return np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))

    def matches(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            found |= run[at] == hashes
        return found

    def add(self, hashes: np.ndarray) -> None:
        runs = self.runs
        runs.append(np.sort(hashes))
        while (len(runs) > 1 and 2 * len(runs[-1]) >= len(runs[-2])
               and len(runs[-1]) + len(runs[-2]) <= self.RUN_CAP):
            newest = runs.pop()
            merged = np.concatenate((runs[-1], newest))
            merged.sort(kind="stable")  # two sorted runs: merged in one pass
            runs[-1] = merged


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
        # Earlier chunks' ids: the table holds them (read with the stored ones) once the
        # source has rows; a first import keeps their hashes; a dry run, which writes
        # nothing, keeps the ids.
        self.seen_ids: set[Any] = set()
        self.seen_hashes = SeenIds()
        self.written = 0

    async def write(self, records: list[tuple[Any, ...]]) -> None:
        """Write rows (tuples in `columns` order) whose source id is new to the workspace
        and to this import; in a dry run only count them."""
        if not records:
            return
        key = self.key
        first: dict[Any, tuple[Any, ...]] = {}
        for record in records:  # the first of each id in the chunk
            first.setdefault(record[key], record)
        present = await self._present(list(first))
        fresh = [r for i, r in first.items() if i not in present]
        if fresh and not self.dry_run:
            await copy_records(self.conn, "backtest_runs", fresh, self.columns)
        self.written += len(fresh)

    async def _present(self, ids: list[Any]) -> set[Any]:
        """Of a chunk's distinct ids, those stored before the import or written earlier in it."""
        if self.dry_run:  # nothing written: earlier chunks are known by their ids only
            present = {i for i in ids if i in self.seen_ids}
            self.seen_ids.update(ids)
            if self.any_present:
                present.update(await self._stored([i for i in ids if i not in present]))
            return present
        if self.any_present:
            return set(await self._stored(ids))
        hashes = SeenIds.hashes(ids)
        matched = self.seen_hashes.matches(hashes)
        self.seen_hashes.add(hashes)
        if not matched.any():
            return set()
        return set(await self._stored([i for i, m in zip(ids, matched, strict=True) if m]))

    async def _stored(self, ids: list[Any]) -> list[Any]:
        return list(await self.conn.fetchval(q("import_present_ids"), self.workspace_id, self.source, ids))

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
