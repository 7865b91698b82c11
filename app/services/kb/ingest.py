"""Ingest: candidate and promoted runs become KB trials; runs that left the KB are archived.

Idempotent: each trial carries a hash of its content, so a rerun inserts what is new,
updates what changed and skips the rest. Incremental: after the first pass, an ingest
reads only the runs written since the last one read (by transaction, so a run written
during an ingest is read by the next). Runs are read in keyset pages and written in
set-based batches, one transaction each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from app.db import Database, trials
from app.db.connector import Conn
from app.db.retry import retrying
from app.db.trials import Record
from app.db.workspaces import require_workspace
from app.far_time import INVALID_CREATED_AT, FarTime
from app.services.kb.ingest_rows import (
    ELIGIBLE,
    NO_DSR_TEXT,
    NO_TRADES,
    EvidenceRow,
    TrialRow,
    deflate_windows,
    evidence_row,
    evidence_skip_reason,
    trial_from_row,
)
from app.services.kb.runs.fields import parse_run
from app.services.kb.runs.scan import keyset_start

INVALID_PARAMS = "invalid_params"


@dataclass
class IngestResult:
    workspace_id: uuid.UUID
    dry_run: bool
    scanned: int = 0
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    archived: int = 0
    evidence: int = 0
    errors: int = 0
    error_examples: dict[str, list[str]] = field(default_factory=dict)
    # Completed test variants read: kept as evidence with a note, or left out, by reason.
    evidence_notes: dict[str, int] = field(default_factory=dict)
    evidence_skipped: dict[str, int] = field(default_factory=dict)
    dsr_updated: int = 0
    mode: str = "full"  # or "incremental": only the runs changed since the last ingest were read
    # Pages written again after a lost connection: their rows may count as unchanged the second time.
    retried_pages: int = 0
    deleted_meanwhile: int = 0  # runs deleted after their page was read: left out (and out of `scanned`)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in self.__dict__.items()}


async def _preview(conn: Conn, workspace_id: uuid.UUID, found: list[TrialRow]) -> tuple[int, int]:
    existing = await trials.existing_trial_hashes(conn, workspace_id, [t.run_id for t in found])
    inserted = sum(1 for t in found if t.run_id not in existing)
    updated = sum(1 for t in found if t.run_id in existing and (
        existing[t.run_id]["content_hash"] != t.content_hash or existing[t.run_id]["archived"]))
    return inserted, updated


@dataclass(frozen=True)
class Pass:
    """Which runs an ingest reads: every selected run (`full`, keyset on created_at), or
    the runs changed since the workspace's last ingest (keyset on their transaction id)."""

    workspace_id: uuid.UUID
    snapshot: str  # taken before the first read: what the next ingest starts from
    previous: str | None  # the last ingest's snapshot (None: a full pass)
    size: int

    @property
    def mode(self) -> str:
        return "full" if self.previous is None else "incremental"

    def start(self, since: datetime | None) -> tuple[Any, uuid.UUID]:
        if self.previous is None:
            return keyset_start(since)
        # From the oldest transaction the snapshot did not see: its xmin (text "xmin:xmax:xips").
        return (self.previous.split(":", 1)[0], uuid.UUID(int=0))

    async def read(self, db: Database, cursor: tuple[Any, uuid.UUID], _attempt: int) -> list[Record]:
        async with db.acquire() as conn:
            if self.previous is None:
                return await trials.ingest_page(conn, self.workspace_id, cursor, self.size)
            return await trials.changed_runs_page(conn, self.workspace_id, self.previous, cursor, self.size)

    def after(self, page: list[Record]) -> tuple[Any, uuid.UUID]:
        last = page[-1]
        return (last["created_at"], last["id"]) if self.previous is None else (last["kb_xid"], last["id"])


async def ingest(
    db: Database,
    workspace_id: uuid.UUID,
    *,
    since: datetime | None = None,
    dry_run: bool = False,
    full: bool = False,
    batch_size: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Ingest the runs changed since the workspace's last ingest (all of them the first
    time, with `full`, or from `since`)."""
    started = time.monotonic()
    await require_workspace(db, workspace_id)
    result = IngestResult(workspace_id, dry_run)
    snapshot = await trials.current_snapshot(db)
    previous = None if full or since is not None else await trials.ingest_snapshot(db, workspace_id)
    scan = Pass(workspace_id, snapshot, previous, batch_size)
    result.mode = scan.mode
    touched = await _pages(db, scan, scan.start(since), result, progress)
    written = result.inserted + result.updated + result.evidence + result.archived
    keep = None if dry_run or since is not None else snapshot
    archived, stale, deflated = await retrying(
        "archiving trials", lambda _: _finish(db, scan, dry_run, written, _windows_of(previous, touched), keep))
    result.archived += archived
    result.dsr_updated += deflated
    result.evidence += stale
    result.elapsed_s = time.monotonic() - started
    return result


async def _pages(db: Database, scan: Pass, cursor: tuple[Any, uuid.UUID], result: IngestResult,
                 progress: Callable[[int, int], None] | None) -> list[uuid.UUID]:
    """Every page of the pass read, classified and written; returns the runs read. While
    a page is classified the next one is read and the one before it written, so the
    database and Python work at the same time; writes stay one at a time, in page order."""
    incremental = scan.previous is not None
    touched: list[uuid.UUID] = []
    reading: asyncio.Future[list[Record]] = asyncio.ensure_future(_read(db, scan, cursor))
    writing: asyncio.Future[None] | None = None
    try:
        while page := await reading:
            reading = asyncio.ensure_future(_read(db, scan, scan.after(page)))
            found, evidence = await _classify_page(page, result, incremental)
            gone = [r["id"] for r in page] if incremental else []
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(_write(db, scan.workspace_id, result, found, evidence, gone))
            if incremental and len(touched) <= TOUCHED_AT_MOST:
                touched.extend(r["id"] for r in page)
            if progress is not None:
                progress(result.scanned, result.scanned)
        if writing is not None:
            await writing
    except BaseException as exc:
        # After a failure the page being written is let finish (its commit stands, as when
        # pages were written one after another); a cancelled ingest stops it as well.
        cancelled = isinstance(exc, asyncio.CancelledError)
        await _settle(stop=[reading, writing] if cancelled else [reading], finish=[] if cancelled else [writing])
        raise
    return touched


async def _settle(stop: list[asyncio.Future[Any] | None], finish: list[asyncio.Future[Any] | None]) -> None:
    """Tasks the loop above left behind, stopped or let finish, and waited for with their
    errors taken (the one raised is the loop's own): nothing outlives the ingest."""
    tasks = [t for t in (*stop, *finish) if t is not None]
    for task in stop:
        if task is not None and not task.done():
            task.cancel()
    pending = [t for t in tasks if not t.done()]
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled():
            task.exception()


async def _read(db: Database, scan: Pass, cursor: tuple[Any, uuid.UUID]) -> list[Record]:
    return await retrying("reading runs to ingest", partial(scan.read, db, cursor))


async def _write(db: Database, workspace_id: uuid.UUID, result: IngestResult, found: list[TrialRow],
                 evidence: list[EvidenceRow], gone: list[uuid.UUID]) -> None:
    """One page written (again after a lost connection: a page is idempotent, by content
    hashes), its counts added to the result."""

    async def write(attempt: int) -> Written:
        result.retried_pages += int(attempt > 0)
        async with db.acquire() as conn:
            return await _write_page(conn, workspace_id, found, evidence, gone, result.dry_run)

    while True:
        try:
            done = await retrying("writing trials", write)
            break
        except trials.RUN_DELETED:
            # A run deleted after its page was read: the page again without it, counted.
            read = {t.run_id for t in found} | {e.run_id for e in evidence}
            there = await retrying("checking the runs of a page", partial(_still_there, db, workspace_id, read))
            if there == read:
                raise
            result.deleted_meanwhile += len(read - there)
            result.scanned -= sum(1 for t in found if t.run_id not in there)  # as if never read
            found, evidence = [t for t in found if t.run_id in there], [e for e in evidence if e.run_id in there]
    result.evidence += done.evidence + done.evidence_removed
    result.inserted += done.inserted
    result.updated += done.updated
    result.archived += done.archived
    result.skipped += len(found) - done.inserted - done.updated
    result.dsr_updated += done.evaluated


async def _still_there(db: Database, workspace_id: uuid.UUID, runs: set[uuid.UUID], _attempt: int) -> set[uuid.UUID]:
    async with db.acquire() as conn:
        return await trials.runs_still_there(conn, workspace_id, sorted(runs))


@dataclass(frozen=True)
class Written:
    inserted: int = 0
    updated: int = 0
    evidence: int = 0  # evidence rows inserted or changed
    archived: int = 0
    evidence_removed: int = 0
    evaluated: int = 0  # trials inserted with their DSR already settled (no evidence window)


async def _write_page(conn: Conn, workspace_id: uuid.UUID, found: list[TrialRow], evidence: list[EvidenceRow],
                      gone: list[uuid.UUID], dry_run: bool) -> Written:
    """One page in one transaction: trials and evidence upserted, and (incremental) the
    trials and evidence of the page's runs that left the KB archived and removed. The
    strategies changed move to this write's revision (a dry run counts trials only)."""
    if dry_run:
        return Written(*(await _preview(conn, workspace_id, found))) if found else Written()
    if not (found or evidence or gone):
        return Written()
    async with conn.transaction():
        revision = await trials.begin_write(conn, workspace_id)
        rows = await trials.upsert_trials(conn, workspace_id, [t.row() for t in found], revision) if found else []
        changed = await trials.upsert_evidence(conn, workspace_id, [e.row() for e in evidence], revision)
        archived = await trials.archive_stale_trials(conn, workspace_id, gone) if gone else []
        removed = await trials.delete_stale_evidence(conn, workspace_id, gone) if gone else 0
        strategies = {r["strategy_name"] for r in (*rows, *changed)}
        reset = {s for r in (*rows, *changed) if not r["inserted"] for s in (r["strategy_name"], r["old_strategy"])
                 if s is not None} | set(archived)
        if strategies or reset:
            await trials.bump_revision(conn, workspace_id, revision, strategies, reset)
    inserted = sum(1 for r in rows if r["inserted"])
    evaluated = sum(1 for r in rows if r["inserted"] and r["evaluated"])
    return Written(inserted, len(rows) - inserted, len(changed), len(archived), removed, evaluated)


# An incremental pass that read more runs than this finishes like a full one (the DSR of
# every window): a list of the runs read stays bounded in memory and in its query.
TOUCHED_AT_MOST = 100_000


def _windows_of(previous: str | None, touched: list[uuid.UUID]) -> list[uuid.UUID] | None:
    """The runs whose windows the pass touched (None: every window)."""
    return None if previous is None or len(touched) > TOUCHED_AT_MOST else touched


# After this many rows written, and a tenth of what the planner thinks the tables hold,
# statistics are refreshed before the queries that follow (a bulk load into a fresh table
# would otherwise be planned as if the table were empty); smaller changes are autovacuum's.
ANALYZE_AFTER_ROWS = 1000
ANALYZE_SHARE = 0.1


async def _finish(db: Database, scan: Pass, dry_run: bool, written: int, touched: list[uuid.UUID] | None,
                  keep: str | None) -> tuple[int, int, int]:
    """A full pass's archive of trials and removal of stale evidence, then the DSR of the
    windows touched (every window after a full pass), in one transaction; the snapshot the
    next ingest starts from is stored with them."""
    workspace_id = scan.workspace_id
    async with db.acquire() as conn:
        if dry_run:
            return await trials.count_stale_trials(conn, workspace_id), 0, 0
        if written >= max(ANALYZE_AFTER_ROWS, ANALYZE_SHARE * await trials.kb_estimated_rows(conn)):
            await trials.analyze_kb_tables(conn)
        async with conn.transaction():
            revision = await trials.begin_write(conn, workspace_id)
            archived = await trials.archive_stale_trials(conn, workspace_id, None) if touched is None else []
            stale = await trials.delete_stale_evidence(conn, workspace_id, None) if touched is None else 0
            # DSR depends only on trials and evidence: recomputed in the windows they changed
            # in, then everywhere if some trial is still unevaluated (a workspace ingested
            # before DSR existed).
            deflated = await deflate_windows(conn, workspace_id, touched) if written or archived or stale else 0
            if (touched is not None or not deflated) and await trials.trials_awaiting_dsr(conn, workspace_id):
                deflated += await deflate_windows(conn, workspace_id, None)
            if archived:
                await trials.bump_revision(conn, workspace_id, revision, archived, archived)
            elif stale or deflated:
                await trials.bump_revision(conn, workspace_id, revision)
            if keep is not None:
                await trials.save_ingest_snapshot(conn, workspace_id, keep)
    return len(archived), stale, deflated


def _selected(row: Record) -> bool:
    """A run a full pass reads: completed, and eligible or a test variant with a regime."""
    return row["status"] in ("completed", "success") and (
        row["kb_status"] in ELIGIBLE or (row["run_kind"] == "test_variant" and row["regime_oos"] is not None))


# Runs classified between two turns of the event loop: short enough that the page being
# written sends each statement soon after the one before it returns (the database waits
# for Python less: 64 left it idle about a tenth of an ingest).
CLASSIFY_CHUNK = 16


async def _classify_page(page: list[Record], result: IngestResult,
                         incremental: bool) -> tuple[list[TrialRow], list[EvidenceRow]]:
    found: list[TrialRow] = []
    evidence: list[EvidenceRow] = []
    for start in range(0, len(page), CLASSIFY_CHUNK):
        some, more = _classify(page[start:start + CLASSIFY_CHUNK], result, incremental)
        found += some
        evidence += more
        await asyncio.sleep(0)
    return found, evidence


def _classify(page: list[Record], result: IngestResult,
              incremental: bool = False) -> tuple[list[TrialRow], list[EvidenceRow]]:
    """A page of runs as trials (candidate and promoted runs) and evidence (every completed
    test variant with a regime); runs that cannot be read are counted with their reason.
    An incremental page also holds runs a full pass does not read: they are left out here."""
    found: list[TrialRow] = []
    evidence: list[EvidenceRow] = []
    for row in page:
        if incremental and not _selected(row):
            continue
        if isinstance(row["created_at"], FarTime):
            if row["kb_status"] in ELIGIBLE:
                result.scanned += 1
                _count_error(result, INVALID_CREATED_AT, row["id"])
            continue
        try:
            run = parse_run(row)
        except (TypeError, ValueError):  # params JSON that cannot be keyed (an integer beyond 64 bits)
            if row["kb_status"] in ELIGIBLE:
                result.scanned += 1
                _count_error(result, INVALID_PARAMS, row["id"])
            continue
        why = evidence_skip_reason(row, run)
        window = None
        if why is None:
            ev = evidence_row(row, run)
            evidence.append(ev)
            window = ev.oos_start
            if ev.n_trades == 0 and run.extracted.metrics is not None and run.extracted.metrics.sharpe_oos is None:
                result.evidence_notes[NO_TRADES] = result.evidence_notes.get(NO_TRADES, 0) + 1
        elif row["run_kind"] == "test_variant":
            result.evidence_skipped[why] = result.evidence_skipped.get(why, 0) + 1
        if row["kb_status"] not in ELIGIBLE:
            continue  # evidence only
        result.scanned += 1
        # A trial whose run has no evidence window has no DSR: a new one is stored evaluated
        # with the reason at once (one write instead of an insert and then an update).
        trial, reason = trial_from_row(row, run, NO_DSR_TEXT if window is None else None)
        if trial is None:
            _count_error(result, str(reason), row["id"])
        else:
            found.append(trial)
    return found, evidence


def _count_error(result: IngestResult, reason: str, run_id: uuid.UUID) -> None:
    result.errors += 1
    shown = result.error_examples.setdefault(reason, [])
    if len(shown) < 3:
        shown.append(str(run_id))
