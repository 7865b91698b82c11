"""One import, whatever the source: map, check in bulk, write, report."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field, replace
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
from app.services.kb.importing.sources import CHUNK_ROWS, Chunks, Table, detect_format, open_table, read_table

ERRORS_LISTED = 1000
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImportReport:
    """One import: rows read, written, already present, refused (the first ERRORS_LISTED
    with row numbers and reasons), notes on kept rows, the mapping used, and how many
    attempts a lost connection cost."""

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


@dataclass
class _Tally:
    """The counts of one import attempt, kept small however many rows it reads."""

    rows: int = 0
    valid: int = 0
    invalid: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def add(self, prepared: Prepared) -> None:
        self.valid += len(prepared.records)
        self.invalid += len(prepared.errors)
        self.errors += prepared.errors[: max(ERRORS_LISTED - len(self.errors), 0)]
        self.reasons.update(_reason_kind(reason) for _, reason in prepared.errors)
        self.notes.update(prepared.notes)


async def import_frame(db: Database, workspace_id: uuid.UUID, frame: pd.DataFrame, mapping: Mapping, *,
                       source: str, dry_run: bool, progress: Progress | None = None,
                       first_row: int = 1) -> ImportReport:
    """Import the rows of `frame` as mapped; bad rows are reported, the rest written, in
    one transaction. A lost connection imports again from the start: rows a lost COMMIT
    acknowledgement did write then count as already present (the report says so)."""
    def chunks() -> Chunks:
        for start in range(0, len(frame), CHUNK_ROWS):
            yield frame.iloc[start : start + CHUNK_ROWS], min(start + CHUNK_ROWS, len(frame))

    return await _import(db, workspace_id, chunks, len(frame), mapping, source=source, dry_run=dry_run,
                         progress=progress, first_row=first_row)


async def import_table(db: Database, workspace_id: uuid.UUID, table: Table, mapping: Mapping, *, source: str,
                       dry_run: bool, progress: Progress | None = None) -> ImportReport:
    """Import a file opened with `open_file`, read a chunk at a time (memory does not grow
    with the file), as `import_frame` imports a table; a lost connection reads the file
    again from its start. `progress` counts `table.progress_unit`."""
    return await _import(db, workspace_id, table.chunks, table.progress_total, mapping, source=source,
                         dry_run=dry_run, progress=progress, first_row=1)


async def _import(db: Database, workspace_id: uuid.UUID, chunks: Callable[[], Chunks], total: int,
                  mapping: Mapping, *, source: str, dry_run: bool, progress: Progress | None,
                  first_row: int) -> ImportReport:
    async def attempt(n: int) -> ImportReport:
        report = await _import_once(db, workspace_id, chunks(), total, mapping, source=source, dry_run=dry_run,
                                    progress=progress, first_row=first_row)
        return replace(report, retried=n)

    return await retrying("importing runs", attempt)


async def _import_once(db: Database, workspace_id: uuid.UUID, chunks: Chunks, total: int, mapping: Mapping, *,
                       source: str, dry_run: bool, progress: Progress | None, first_row: int) -> ImportReport:
    """Chunk i+1 is read and checked in a worker thread while the database writes chunk i."""
    imported_at = datetime.now(UTC)
    tally = _Tally()

    def check(rows_before: int) -> tuple[Prepared, int, int] | None:
        got = next(chunks, None)
        if got is None:
            return None
        frame, position = got
        # Chunk bounds stay at multiples of CHUNK_ROWS: a float param column is read as whole
        # numbers per chunk, and that decides content hashes of rows already imported.
        prepared = prepare(frame, mapping, first_row=first_row + rows_before)
        prepared.records = run_records(prepared.records, workspace_id, source, imported_at)
        return prepared, len(frame), position

    with closing(chunks), short_switch_interval():
        async with writer(db, workspace_id, source, RUN_COLUMNS, dry_run=dry_run) as out:
            pending = asyncio.create_task(asyncio.to_thread(check, 0))
            try:
                while (got := await pending) is not None:
                    prepared, rows, position = got
                    tally.rows += rows
                    pending = asyncio.create_task(asyncio.to_thread(check, tally.rows))
                    await out.write(prepared.records)
                    tally.add(prepared)
                    if progress is not None:
                        progress(position, total)
            finally:
                await _settled(pending)  # the file is closed only once no thread reads it
            new = await out.new_rows()
    return ImportReport(workspace_id, source, dry_run, tally.rows, tally.valid, new,
                        dict(tally.reasons.most_common()), dict(tally.notes), tally.errors, tally.invalid,
                        mapping.describe())


async def _settled(task: asyncio.Task[Any]) -> None:
    """Wait for a task to end, whatever its outcome (which the caller no longer needs)."""
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


def _reason_kind(reason: str) -> str:
    """The reason without the offending value: `sharpe is not a number: 'x'` -> `sharpe is not a number`."""
    return reason.split(":", 1)[0]


def _deciding(maps: dict[str, str], sets: dict[str, str],
              decided: list[Mapping]) -> Callable[[list[str]], tuple[list[str], list[str]]]:
    """Decides the mapping from the headers (kept in `decided`): CSV columns mapped to
    non-numeric fields are read as text, so ids keep their leading zeros; param columns
    and a `_strategy` column join a row's content as read."""
    def decide(headers: list[str]) -> tuple[list[str], list[str]]:
        mapping = resolve_mapping(headers, maps, sets)
        decided.append(mapping)
        text = [c for f, c in mapping.columns.items() if FIELDS[f] not in ("int", "float")]
        return text, [*mapping.param_columns.values(), *filter(None, [mapping.strategy_repr])]

    return decide


def open_file(path: Path, fmt: str | None, maps: dict[str, str], sets: dict[str, str]) -> tuple[Table, Mapping]:
    """Check the file and decide the mapping (once, from its headers), reading no more
    than that needs; every problem here is bad input, before any write."""
    decided: list[Mapping] = []
    table = open_table(path, detect_format(path, fmt), _deciding(maps, sets, decided))
    return table, decided[-1]


def load_file(path: Path, fmt: str | None, maps: dict[str, str], sets: dict[str, str]) -> tuple[pd.DataFrame, Mapping]:
    """The whole file in memory and its mapping, as `open_file` decides it (for callers
    that need the table itself; `kb import` reads with `open_file`)."""
    decided: list[Mapping] = []
    decide = _deciding(maps, sets, decided)
    frame = read_table(path, detect_format(path, fmt), lambda headers: decide(headers)[0])
    return frame, decided[-1] if decided else resolve_mapping(list(frame.columns), maps, sets)
