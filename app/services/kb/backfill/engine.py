"""The engine both backfills share.

One run of a backfill: take the per-workspace advisory lock, open (or resume) a ledger
row, read the selection in keyset pages of (created_at, id), let the job judge each row,
and write the passing rows in transactions of `batch_size`. Each transaction also moves
the ledger cursor and counts, so after any crash the ledger says exactly which rows are
done and `--resume` continues from there. A dry run takes the same path and only skips
the job's write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import orjson

from app.db import Database, ledger
from app.db.connector import Conn, is_gone
from app.db.retry import hold_connection, release_quietly, retrying
from app.db.trials import Record
from app.db.workspaces import require_workspace
from app.errors import NothingToResume
from app.services.kb.backfill.counters import Counters
from app.services.kb.backfill.gil import short_switch_interval
from app.services.kb.runs.scan import Hooks, ScanOptions, keyset_start

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """The verdict on one scanned row; `reason` None means it passed."""

    run_id: uuid.UUID
    created_at: datetime
    reason: str | None
    payload: Any = None
    note: str | None = None  # on a passing row: something the report should count (see BackfillResult.notes)


class BackfillJob(Protocol):
    kind: str

    def identity(self) -> dict[str, Any]:
        """Configuration that defines "the same run" for resume (not limit or batch size)."""
        ...

    async def fetch_page(
        self, conn: Conn, after: tuple[datetime, uuid.UUID], size: int
    ) -> Sequence[Record]: ...

    def evaluate(self, rows: Sequence[Record]) -> list[Outcome]: ...

    async def write(self, conn: Conn, passed: list[Outcome], backfill_run_id: uuid.UUID) -> int:
        """Write the passing rows with guards; return how many rows were changed."""
        ...

    async def count_after(self, conn: Conn, after: tuple[datetime, uuid.UUID]) -> int:
        """How many runs the scan would still read after `after`."""
        ...


@dataclass(frozen=True)
class EngineOptions:
    """A scan's settings plus its hooks and read page size."""

    scan: ScanOptions
    hooks: Hooks = field(default_factory=Hooks)

    @property
    def page_size(self) -> int:
        return max(2000, self.scan.batch_size)


@dataclass
class BackfillResult:
    run_id: uuid.UUID
    kind: str
    status: str
    dry_run: bool
    counters: Counters
    totals: Counters
    resumed: bool
    elapsed_s: float
    interrupted_runs_found: list[uuid.UUID] = field(default_factory=list)
    error: str | None = None
    # Per-invocation notes on rows that were written (e.g. no ex-ante snapshot possible).
    notes: dict[str, int] = field(default_factory=dict)
    remaining: int | None = None  # runs left to scan when the limit was reached


def config_key(kind: str, identity: dict[str, Any]) -> str:
    blob = orjson.dumps({"kind": kind, **identity}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()[:32]


class _Run:
    """State of one invocation; keeps the loop in `run_backfill` readable."""

    def __init__(self, db: Database, job: BackfillJob, opts: EngineOptions, run_id: uuid.UUID,
                 base: Counters, lock_conn: Conn, owner: uuid.UUID) -> None:
        self.db = db
        self.owner = owner
        self.job = job
        self.opts = opts
        self.run_id = run_id
        self.base = base
        self.session = Counters()
        self.lock_conn = lock_conn
        self.pending: list[Outcome] = []
        self.notes: Counter[str] = Counter()
        self.batches = 0
        self.last_heartbeat = time.monotonic()
        self.writer: Conn | None = None
        # Set once the lock is known lost to another process: this run never writes the ledger again.
        self.lost = False
        self.inflight: asyncio.Task[None] | None = None

    async def _writer(self) -> Conn:
        if self.writer is None or is_gone(self.writer):
            self.writer = await hold_connection(self.db)
        return self.writer

    async def release(self) -> None:
        if self.inflight is not None and not self.inflight.done():
            self.inflight.cancel()
            with contextlib.suppress(BaseException):
                await self.inflight
        self.inflight = None
        await self.drop_writer()

    async def drop_writer(self) -> None:
        if self.writer is not None:
            await release_quietly(self.db, self.writer)
            self.writer = None

    async def flush(self, cursor: tuple[datetime, uuid.UUID]) -> None:
        """Hand the pending rows to a background commit; judging the next rows goes on
        meanwhile. At most one commit is in flight, so checkpoints stay in order."""
        batch, self.pending = self.pending, []
        # The tallies as of `cursor`: the ledger must describe exactly the rows up to it.
        seen = Counters(self.session.scanned, self.session.passed, self.session.rejected, 0, 0,
                        self.session.reasons.copy(), {k: list(v) for k, v in self.session.examples.items()})
        await self.drain()
        self.inflight = asyncio.create_task(self._commit(batch, cursor, seen))

    async def drain(self) -> None:
        """Wait for the commit in flight; its failure surfaces here."""
        if self.inflight is not None:
            task, self.inflight = self.inflight, None
            await task

    async def _commit(self, batch: list[Outcome], cursor: tuple[datetime, uuid.UUID], seen: Counters) -> None:
        """Write one batch and the ledger checkpoint in one transaction, with retries."""

        async def attempt_write(attempt: int) -> tuple[bool, int]:
            await self.ensure_lock()
            conn = await self._writer()
            async with conn.transaction():
                if attempt and await ledger.batch_committed(conn, self.opts.scan.workspace_id, self.run_id, cursor):
                    # A retry after a lost acknowledgement: the batch had committed. Its
                    # tallies are the ledger's, read back, never assumed.
                    ws = self.opts.scan.workspace_id
                    committed = Counters.from_json(await ledger.committed_counts(conn, ws, self.run_id))
                    self.session.updated = committed.updated - self.base.updated
                    self.session.changed_concurrently = (committed.changed_concurrently
                                                         - self.base.changed_concurrently)
                    return True, 0
                updated = 0
                if batch and not self.opts.scan.dry_run:
                    updated = await self.job.write(conn, batch, self.run_id)
                # Built afresh in each attempt: a failed attempt must not count its rows twice.
                counts = self.base.plus(seen)
                counts.updated += self.session.updated + updated
                counts.changed_concurrently += self.session.changed_concurrently + (
                    0 if self.opts.scan.dry_run else len(batch) - updated)
                await ledger.checkpoint(conn, self.opts.scan.workspace_id, self.run_id, self.owner, cursor,
                                        counts.to_json())
                return False, updated

        # On failure only the writer is dropped, not release(): this runs inside the in-flight task.
        done, updated = await retrying("writing a batch", attempt_write, on_error=self.drop_writer)
        if not done:
            self.session.updated += updated
            if not self.opts.scan.dry_run:
                self.session.changed_concurrently += len(batch) - updated
        self.batches += 1
        if self.opts.hooks.after_batch is not None:
            self.opts.hooks.after_batch(self.batches)
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self.last_heartbeat >= 2.0:
            ws = self.opts.scan.workspace_id
            await self.on_lock_conn(lambda conn: ledger.heartbeat(conn, ws, self.run_id, self.owner))
            self.last_heartbeat = now

    async def on_lock_conn(self, op: Callable[[Conn], Awaitable[T]]) -> T:
        """A ledger operation under the lock (re-taken if its connection was dropped), on a pool
        connection: the lock's own transaction runs nothing else, so others see the ledger at once."""
        async def attempt(_: int) -> T:
            await self.ensure_lock()
            async with self.db.acquire() as conn:
                return await op(conn)

        return await retrying("updating the ledger", attempt)

    async def ensure_lock(self) -> None:
        """The advisory lock lives as long as its connection. If the server terminated
        that connection, take the lock again on a new one, unless another process took
        it (or took over this run) meanwhile: then stop rather than race it."""
        if not is_gone(self.lock_conn):
            return
        conn: Conn = await hold_connection(self.db)
        try:
            got = await ledger.try_lock(conn, self.job.kind, self.opts.scan.workspace_id)
            mine = await ledger.owns_running(conn, self.opts.scan.workspace_id, self.run_id, self.owner)
            if got and not mine:
                await ledger.release_lock(conn, self.job.kind, self.opts.scan.workspace_id)
        except BaseException:
            await release_quietly(self.db, conn)
            raise
        if not got or not mine:
            await release_quietly(self.db, conn)
            self.lost = True
            raise ledger.TakenOver(
                f"the connection holding the backfill lock was closed and another process took over "
                f"backfill-{self.job.kind} on workspace {self.opts.scan.workspace_id}; committed batches are kept"
            )
        old, self.lock_conn = self.lock_conn, conn
        await release_quietly(self.db, old)
        log.info("re-took the backfill lock on a new connection")


async def _fetch_with_retry(db: Database, job: BackfillJob, after: tuple[datetime, uuid.UUID],
                            size: int) -> Sequence[Record]:
    async def attempt(_: int) -> Sequence[Record]:
        async with db.acquire() as conn:
            return await job.fetch_page(conn, after, size)

    return await retrying("reading runs", attempt)


async def _read_and_judge(db: Database, job: BackfillJob, after: tuple[datetime, uuid.UUID],
                          size: int) -> tuple[Sequence[Record], list[Outcome]]:
    """One page read and judged, in a worker thread: the event loop drives the commit in flight meanwhile."""
    page = await _fetch_with_retry(db, job, after, size)
    return page, await asyncio.to_thread(job.evaluate, page)


async def run_backfill(db: Database, job: BackfillJob, opts: EngineOptions) -> BackfillResult:
    """Run (or resume) one backfill. Raises `BackfillLocked`, `NothingToResume`, `NotFound`."""
    started = time.monotonic()
    identity = job.identity()
    await require_workspace(db, opts.scan.workspace_id)
    owner = uuid.uuid4()
    lock_conn: Conn = await hold_connection(db)
    run: _Run | None = None
    try:
        await ledger.acquire_lock(lock_conn, job.kind, opts.scan.workspace_id)
        try:
            async with db.acquire() as conn:  # the ledger, seen at once (not in the lock's transaction)
                dead = await ledger.mark_dead_runs_interrupted(conn, opts.scan.workspace_id, job.kind)
                run_id, cursor, base = await _open_or_resume(conn, job, opts, identity, owner)
            run = _Run(db, job, opts, run_id, base, lock_conn, owner)
            try:
                with short_switch_interval():
                    status, error, last = await _loop(run, cursor)
                ws = opts.scan.workspace_id
                await run.on_lock_conn(lambda conn: ledger.close_run(conn, ws, run_id, owner, status, error))
                remaining = None
                if status == "limit_reached":
                    remaining = await run.on_lock_conn(lambda conn: job.count_after(conn, last))
            except BaseException as exc:
                await _mark_failed(run, exc)
                raise
        finally:
            if run is not None:
                lock_conn = run.lock_conn
            await ledger.release_lock(lock_conn, job.kind, opts.scan.workspace_id)
    finally:
        if run is not None:
            await run.release()
        await release_quietly(db, lock_conn)
    return BackfillResult(
        run_id=run.run_id,
        kind=job.kind,
        status=status,
        dry_run=opts.scan.dry_run,
        counters=run.session,
        totals=run.base.plus(run.session),
        resumed=opts.scan.resume,
        elapsed_s=time.monotonic() - started,
        interrupted_runs_found=dead,
        error=error,
        notes=dict(run.notes),
        remaining=remaining,
    )


async def _open_or_resume(conn: Conn, job: BackfillJob, opts: EngineOptions, identity: dict[str, Any],
                          owner: uuid.UUID) -> tuple[uuid.UUID, tuple[datetime, uuid.UUID], Counters]:
    """The ledger row this invocation works under (new or resumed), its cursor and committed counts."""
    key = config_key(job.kind, identity)
    start = keyset_start(opts.scan.since)
    if opts.scan.resume:
        row = await ledger.find_resumable(conn, opts.scan.workspace_id, job.kind, key, opts.scan.dry_run)
        if row is None or row["status"] not in ledger.RESUMABLE:
            what = "dry-run " if opts.scan.dry_run else ""
            found = f" (the last one, {row['id']}, is {row['status']})" if row is not None else ""
            raise NothingToResume(
                f"no interrupted {what}backfill-{job.kind} run with this configuration to resume"
                f"{found}; run without --resume to start a new one"
            )
        await ledger.reopen_run(conn, opts.scan.workspace_id, row["id"], owner)
        cursor = (row["cursor_created_at"] or start[0], row["cursor_id"] or start[1])
        return row["id"], cursor, Counters.from_json(row["counts"])
    config = {**identity, "limit": opts.scan.limit, "batch_size": opts.scan.batch_size}
    run_id = await ledger.open_run(conn, opts.scan.workspace_id, job.kind, config, key, opts.scan.dry_run,
                                   start, owner)
    return run_id, start, Counters()


async def _mark_failed(run: _Run, exc: BaseException) -> None:
    """Best effort, only while this process still owns the run (the query's guard). If it fails the
    row stays 'running', and the next run sees it as interrupted because the lock is free."""
    if run.lost or isinstance(exc, ledger.TakenOver):
        return
    status = "interrupted" if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError) else "failed"
    message = (str(exc) or type(exc).__name__)[:500]
    try:
        async with run.db.acquire() as conn:
            await ledger.close_run(conn, run.opts.scan.workspace_id, run.run_id, run.owner, status, message)
    except Exception:
        log.debug("could not record the failure of backfill run %s", run.run_id, exc_info=True)


async def _loop(run: _Run, cursor: tuple[datetime, uuid.UUID]) -> tuple[str, str | None, tuple[datetime, uuid.UUID]]:
    """Scan and write until done, the limit or a stop; returns the status, an error and the cursor."""
    opts, job = run.opts, run.job
    session = run.session
    fetched = 0
    requested = min(opts.page_size, opts.scan.limit)
    next_page: asyncio.Task[tuple[Sequence[Record], list[Outcome]]] | None = None
    if requested > 0:
        next_page = asyncio.create_task(_read_and_judge(run.db, job, cursor, requested))
    try:
        while next_page is not None:
            page, outcomes = await next_page
            next_page = None
            fetched += len(page)
            if len(page) == requested and fetched < opts.scan.limit and not opts.hooks.should_stop():
                last = page[-1]
                requested = min(opts.page_size, opts.scan.limit - fetched)
                next_page = asyncio.create_task(
                    _read_and_judge(run.db, job, (last["created_at"], last["id"]), requested))
            for outcome in outcomes:
                session.scanned += 1
                if outcome.reason is None:
                    session.passed += 1
                    run.pending.append(outcome)
                    if outcome.note is not None:
                        run.notes[outcome.note] += 1
                else:
                    session.reject(outcome.reason, outcome.run_id)
                cursor = (outcome.created_at, outcome.run_id)
                if len(run.pending) >= opts.scan.batch_size:
                    await run.flush(cursor)
            if not run.pending and page:
                await run.flush(cursor)  # checkpoint a page of rejections: cheap, keeps resume exact
            if opts.hooks.progress is not None:
                opts.hooks.progress(session.scanned, opts.scan.limit)
            if opts.hooks.should_stop():
                if next_page is not None:
                    next_page.cancel()
                    next_page = None
                if run.pending:
                    await run.flush(cursor)
                await run.drain()
                return "interrupted", "stopped by the user", cursor
        if run.pending:
            await run.flush(cursor)
        await run.drain()
    finally:
        if next_page is not None:
            next_page.cancel()
    return ("limit_reached" if fetched >= opts.scan.limit else "completed"), None, cursor
