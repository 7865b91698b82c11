"""One import, whatever the source: map, check in bulk, write, report."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from app.db import Database
from app.db.imports import writer
from app.db.retry import retrying
from app.services.kb.backfill.gil import short_switch_interval
from app.services.kb.importing.fields import FIELDS, Mapping, resolve_mapping
from app.services.kb.importing.rows import RUN_COLUMNS, Prepared, prepare, run_records
from app.services.kb.importing.sources import detect_format, read_table

ERRORS_LISTED = 1000
CHUNK_ROWS = 10_000


@dataclass(frozen=True)
class ImportReport:
    """One import: rows read, written, already present, refused (with row numbers and
    reasons), notes on kept rows, the mapping used, and how many attempts a lost
    connection cost."""

    workspace_id: uuid.UUID
    source: str
    dry_run: bool
    rows: int
    valid: int
    imported: int
    invalid_by_reason: dict[str, int]
    notes: dict[str, int]
    errors: list[tuple[int, str]]
    invalid: int
    mapping: dict[str, Any]
    retried: int = 0

    @property
    def already_present(self) -> int:
        return self.valid - self.imported

    def to_dict(self) -> dict[str, Any]:
        out = {"workspace_id": str(self.workspace_id), "source": self.source, "dry_run": self.dry_run,
               "rows": self.rows, "valid": self.valid, "imported": self.imported,
               "already_present": self.already_present, "invalid": self.invalid,
               "invalid_by_reason": self.invalid_by_reason, "notes": self.notes,
               "errors": [{"row": row, "reason": reason} for row, reason in self.errors[:ERRORS_LISTED]],
               "mapping": self.mapping}
        if self.retried:
            out["retried"] = self.retried
        return out


async def import_frame(db: Database, workspace_id: uuid.UUID, frame: pd.DataFrame, mapping: Mapping, *,
                       source: str, dry_run: bool, progress: Callable[[int, int], None] | None = None,
                       first_row: int = 1) -> ImportReport:
    """Import the rows of `frame` as mapped; bad rows are reported, the rest written, in
    one transaction. A lost connection imports again from the start: rows a lost COMMIT
    acknowledgement did write then count as already present (the report says so)."""
    async def attempt(n: int) -> ImportReport:
        report = await _import_once(db, workspace_id, frame, mapping, source=source, dry_run=dry_run,
                                    progress=progress, first_row=first_row)
        return replace(report, retried=n)

    return await retrying("importing runs", attempt)


async def _import_once(db: Database, workspace_id: uuid.UUID, frame: pd.DataFrame, mapping: Mapping, *,
                       source: str, dry_run: bool, progress: Callable[[int, int], None] | None,
                       first_row: int) -> ImportReport:
    """Chunks are checked in a worker thread while the database writes the previous one."""
    total = len(frame)
    # Chunk bounds stay at multiples of CHUNK_ROWS: a float param column is read as whole
    # numbers per chunk, and that decides content hashes of rows already imported.
    starts = list(range(0, total, CHUNK_ROWS)) or [0]
    ends = [start + CHUNK_ROWS for start in starts]
    imported_at = datetime.now(UTC)

    def check(i: int) -> Prepared:
        prepared = prepare(frame.iloc[starts[i] : ends[i]], mapping, first_row=first_row + starts[i])
        prepared.records = run_records(prepared.records, workspace_id, source, imported_at)
        return prepared

    errors: list[tuple[int, str]] = []
    notes: Counter[str] = Counter()
    valid = 0
    with short_switch_interval():
        async with writer(db, workspace_id, source, RUN_COLUMNS, dry_run=dry_run) as out:
            pending = asyncio.create_task(asyncio.to_thread(check, 0))
            for i in range(len(starts)):
                prepared = await pending
                if i + 1 < len(starts):
                    pending = asyncio.create_task(asyncio.to_thread(check, i + 1))
                await out.write(prepared.records)
                valid += len(prepared.records)
                errors += prepared.errors
                notes.update(prepared.notes)
                if progress is not None:
                    progress(min(ends[i], total), total)
            new = await out.new_rows()
    reasons = Counter(_reason_kind(reason) for _, reason in errors)
    return ImportReport(workspace_id, source, dry_run, total, valid, new, dict(reasons.most_common()), dict(notes),
                        errors, len(errors), mapping.describe())


def _reason_kind(reason: str) -> str:
    """The reason without the offending value: `sharpe is not a number: 'x'` -> `sharpe is not a number`."""
    return reason.split(":", 1)[0]


def load_file(path: Path, fmt: str | None, maps: dict[str, str], sets: dict[str, str]) -> tuple[pd.DataFrame, Mapping]:
    """Read the file and decide the mapping (once, from its headers); every problem here
    is bad input, before any write. CSV columns mapped to non-numeric fields are read as
    text, so ids keep their leading zeros."""
    decided: list[Mapping] = []

    def text_columns(headers: list[str]) -> list[str]:
        decided.append(resolve_mapping(headers, maps, sets))
        return [c for f, c in decided[0].columns.items() if FIELDS[f] not in ("int", "float")]

    frame = read_table(path, detect_format(path, fmt), text_columns)
    return frame, decided[0] if decided else resolve_mapping(list(frame.columns), maps, sets)
