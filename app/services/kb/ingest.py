"""Ingest: candidate and promoted runs become KB trials; runs that left the KB are archived.

Idempotent: each trial carries a hash of its content, so a rerun inserts what is new,
updates what changed and skips the rest. Runs are read in keyset pages and written in
set-based batches, one transaction each.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

import orjson

from app.db import Database, trials
from app.db.connector import Conn
from app.db.retry import retrying
from app.db.trials import EVIDENCE_COLUMNS, TRIAL_COLUMNS, Record
from app.db.workspaces import require_workspace
from app.far_time import INVALID_CREATED_AT, FarTime
from app.services.kb.runs.deflated import window_dsr
from app.services.kb.runs.fields import ParsedRun, parse_run
from app.services.kb.runs.scan import keyset_start
from app.services.kb.runs.windows import BadTimestamp, extract_windows, parse_timestamp

INVALID_PARAMS = "invalid_params"
ELIGIBLE = ("candidate", "promoted")


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
    # Pages written again after a lost connection: their rows may count as unchanged the second time.
    retried_pages: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class TrialRow:
    """One KB trial as written; `row()` orders it as the database's unnest columns."""

    run_id: uuid.UUID
    strategy: str
    symbol: str | None
    timeframe: str | None
    experiment_type: str | None
    params: str
    sharpe: float | None
    return_frac: float | None
    max_dd_frac: float | None
    win_rate: float | None
    profit_factor: float | None
    n_trades: int
    features: str | None
    tags: str
    pre_features: str | None
    pre_tags: str
    ts_end: datetime | None
    kb_status: str
    content_hash: str

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in TRIAL_COLUMNS)


@dataclass(frozen=True)
class EvidenceRow:
    """One completed test variant with a regime as performance evidence."""

    run_id: uuid.UUID
    strategy: str
    symbol: str | None
    timeframe: str | None
    params: str
    sharpe: float
    n_trades: int
    oos_start: datetime | None
    oos_end: datetime | None
    pre_features: str | None
    oos_features: str
    pre_tags: str
    oos_tags: str
    eligible: bool
    content_hash: str = ""

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in EVIDENCE_COLUMNS)


NO_TRADES = "no_trades_sharpe_0"


def evidence_skip_reason(row: Record, run: ParsedRun) -> str | None:
    """Why a completed test variant is not evidence (None: it is). A run that made no
    trade and has no Sharpe counts, with Sharpe 0: it stayed flat in that window."""
    m = run.extracted.metrics
    if row["run_kind"] != "test_variant":
        return "not_test_variant"
    if m is None:
        return str(run.extracted.reason)
    if not row["strategy_name"]:
        return "missing_strategy"
    if run.features is None:
        return "no_regime"
    if m.sharpe_oos is None and m.n_trades_oos > 0:
        return "no_sharpe"
    return None


def evidence_row(row: Record, run: ParsedRun) -> EvidenceRow:
    """A completed test variant as an evidence row (the caller checked `evidence_skip_reason`)."""
    m = run.extracted.metrics
    assert m is not None and run.features is not None
    sharpe = 0.0 if m.sharpe_oos is None else float(m.sharpe_oos)
    window = extract_windows(run.meta, run.params).oos
    ev = EvidenceRow(row["id"], row["strategy_name"], run.symbol, run.timeframe, run.params_key, sharpe, m.n_trades_oos,
                     window.start if window else None, window.end if window else None, run.pre_features,
                     run.features, run.pre_tags_literal, run.tags_literal, row["kb_status"] in ELIGIBLE)
    # The hash covers the values as before (everything but the id and the hash itself).
    values = ev.row()[1:-1]
    return replace(ev, content_hash=hashlib.sha256(orjson.dumps(values, default=str)).hexdigest()[:32])


def _fraction(value: float | None) -> float | None:
    # win rates arrive as 0.55 or 55; store fractions
    if value is None:
        return None
    return value / 100.0 if value > 1.0 else value


def trial_from_row(row: Record, run: ParsedRun) -> tuple[TrialRow | None, str | None]:
    extracted = run.extracted
    if extracted.metrics is None:
        return None, str(extracted.reason)
    if not row["strategy_name"]:
        return None, "missing_strategy"
    regime = run.regime
    ts_end = None
    if regime.get("ts_end"):
        try:
            ts_end = parse_timestamp(regime["ts_end"])
        except BadTimestamp:
            ts_end = None
    m = extracted.metrics
    content = orjson.dumps(
        [row["strategy_name"], run.symbol, run.timeframe, row["experiment_type"], run.params_key, m.sharpe_oos,
         extracted.return_frac, m.max_dd_frac_oos, extracted.win_rate, extracted.profit_factor,
         m.n_trades_oos, run.features, run.tags, run.pre_features, run.pre_tags, regime.get("ts_end"),
         row["kb_status"]]
    )
    return TrialRow(
        run_id=row["id"], strategy=row["strategy_name"],
        symbol=run.symbol, timeframe=run.timeframe,
        experiment_type=row["experiment_type"], params=run.params_key, sharpe=m.sharpe_oos,
        return_frac=extracted.return_frac, max_dd_frac=m.max_dd_frac_oos,
        win_rate=_fraction(extracted.win_rate), profit_factor=extracted.profit_factor,
        n_trades=m.n_trades_oos, features=run.features, tags=run.tags_literal, pre_features=run.pre_features,
        pre_tags=run.pre_tags_literal, ts_end=ts_end,
        kb_status=row["kb_status"], content_hash=hashlib.sha256(content).hexdigest()[:32],
    ), None


async def _write(conn: Conn, workspace_id: uuid.UUID, found: list[TrialRow]) -> tuple[int, int]:
    rows = await trials.upsert_trials(conn, workspace_id, [t.row() for t in found])
    inserted = sum(1 for r in rows if r["inserted"])
    return inserted, len(rows) - inserted


async def _preview(conn: Conn, workspace_id: uuid.UUID, found: list[TrialRow]) -> tuple[int, int]:
    existing = await trials.existing_trial_hashes(conn, workspace_id, [t.run_id for t in found])
    inserted = sum(1 for t in found if t.run_id not in existing)
    updated = sum(1 for t in found if t.run_id in existing and (
        existing[t.run_id]["content_hash"] != t.content_hash or existing[t.run_id]["archived"]))
    return inserted, updated


async def ingest(
    db: Database,
    workspace_id: uuid.UUID,
    *,
    since: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    started = time.monotonic()
    await require_workspace(db, workspace_id)
    result = IngestResult(workspace_id, dry_run)
    cursor = keyset_start(since)
    while True:
        page = await retrying("reading runs to ingest", partial(_read_page, db, workspace_id, cursor, batch_size))
        if not page:
            break
        cursor = (page[-1]["created_at"], page[-1]["id"])
        found, evidence = _classify(page, result)

        async def write(attempt: int, found: list[TrialRow] = found, evidence: list[EvidenceRow] = evidence
                        ) -> tuple[int, int, int]:
            # A page is idempotent (content hashes): after a lost connection it is simply written again.
            result.retried_pages += int(attempt > 0)
            async with db.acquire() as conn:
                return await _write_page(conn, workspace_id, found, evidence, dry_run)

        inserted, updated, changed = await retrying("writing trials", write)
        result.evidence += changed
        result.inserted += inserted
        result.updated += updated
        result.skipped += len(found) - inserted - updated
        if progress is not None:
            progress(result.scanned, result.scanned)
    written = result.inserted + result.updated + result.evidence
    archived, stale, deflated = await retrying("archiving trials",
                                               lambda _: _finish(db, workspace_id, dry_run, written))
    result.archived, result.dsr_updated = archived, deflated
    result.evidence += stale
    result.elapsed_s = time.monotonic() - started
    return result


async def _read_page(db: Database, workspace_id: uuid.UUID, cursor: tuple[datetime, uuid.UUID],
                     size: int, _attempt: int) -> list[Record]:
    async with db.acquire() as conn:
        return await trials.ingest_page(conn, workspace_id, cursor, size)


async def _write_page(conn: Conn, workspace_id: uuid.UUID, found: list[TrialRow], evidence: list[EvidenceRow],
                      dry_run: bool) -> tuple[int, int, int]:
    """Trials inserted and updated, evidence rows changed (a dry run counts trials only)."""
    if dry_run:
        return (*(await _preview(conn, workspace_id, found)), 0) if found else (0, 0, 0)
    if not (found or evidence):
        return 0, 0, 0
    async with conn.transaction():
        inserted, updated = await _write(conn, workspace_id, found) if found else (0, 0)
        changed = await trials.upsert_evidence(conn, workspace_id, [e.row() for e in evidence])
        if inserted or updated or changed:
            await trials.bump_revision(conn, workspace_id)
    return inserted, updated, changed


# After this many rows written, statistics are refreshed before the queries that follow
# (a bulk load into a fresh table would otherwise be planned as if the table were empty).
ANALYZE_AFTER_ROWS = 1000


async def _finish(db: Database, workspace_id: uuid.UUID, dry_run: bool, written: int) -> tuple[int, int, int]:
    """Trials archived, stale evidence removed and DSR values written, in one transaction."""
    async with db.acquire() as conn:
        if dry_run:
            return await trials.count_stale_trials(conn, workspace_id), 0, 0
        if written >= ANALYZE_AFTER_ROWS:
            await trials.analyze_kb_tables(conn)
        async with conn.transaction():
            archived = await trials.archive_stale_trials(conn, workspace_id)
            stale = await trials.delete_stale_evidence(conn, workspace_id)
            # DSR depends only on trials and evidence: recomputed when they changed, or when
            # some trial was never evaluated (a workspace ingested before DSR existed).
            stale_dsr = written or archived or stale or await trials.trials_awaiting_dsr(conn, workspace_id)
            deflated = await _deflate(conn, workspace_id) if stale_dsr else 0
            if archived or stale or deflated:
                await trials.bump_revision(conn, workspace_id)
    return archived, stale, deflated


def _classify(page: list[Record], result: IngestResult) -> tuple[list[TrialRow], list[EvidenceRow]]:
    """A page of runs as trials (candidate and promoted runs) and evidence (every completed
    test variant with a regime); runs that cannot be read are counted with their reason."""
    found: list[TrialRow] = []
    evidence: list[EvidenceRow] = []
    for row in page:
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
        if why is None:
            ev = evidence_row(row, run)
            evidence.append(ev)
            if ev.n_trades == 0 and run.extracted.metrics is not None and run.extracted.metrics.sharpe_oos is None:
                result.evidence_notes[NO_TRADES] = result.evidence_notes.get(NO_TRADES, 0) + 1
        elif row["run_kind"] == "test_variant":
            result.evidence_skipped[why] = result.evidence_skipped.get(why, 0) + 1
        if row["kb_status"] not in ELIGIBLE:
            continue  # evidence only
        result.scanned += 1
        trial, reason = trial_from_row(row, run)
        if trial is None:
            _count_error(result, str(reason), row["id"])
        else:
            found.append(trial)
    return found, evidence


_NO_DSR = {"unavailable": "bars of the OOS window, bar size or Sharpe unknown"}


async def _deflate(conn: Conn, workspace_id: uuid.UUID) -> int:
    """Each active trial's deflated Sharpe ratio, from its window's sets and their spread
    (after the evidence of this ingest is in); only changed values are written."""
    changed = []
    for r in await trials.trial_window_stats(conn, workspace_id):
        found = window_dsr(r["sharpe"], r["n_bars"], r["timeframe"], r["n_sets"], float(r["sharpe_var"]))
        value = None if found is None else round(found.dsr, 6)
        if value != r["dsr"] or not r["evaluated"]:
            # A trial whose DSR cannot be computed is marked evaluated all the same.
            inputs = orjson.dumps(found.to_dict() if found is not None else _NO_DSR).decode()
            changed.append((r["id"], value, inputs))
    return await trials.update_trial_dsr(conn, workspace_id, changed)


def _count_error(result: IngestResult, reason: str, run_id: uuid.UUID) -> None:
    result.errors += 1
    shown = result.error_examples.setdefault(reason, [])
    if len(shown) < 3:
        shown.append(str(run_id))
