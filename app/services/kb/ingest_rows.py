"""The rows ingest writes: a run as a KB trial and as performance evidence, each built in
the order of the database's unnest columns, with a content hash so a rerun skips what
did not change; and each trial's deflated Sharpe ratio, written once its window's
evidence is in."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from app.db import trials
from app.db.connector import Conn
from app.db.trials import EVIDENCE_COLUMNS, TRIAL_COLUMNS, Record
from app.services.kb.runs.deflated import window_dsr
from app.services.kb.runs.fields import ParsedRun
from app.services.kb.runs.windows import BadTimestamp, extract_windows, timestamp

ELIGIBLE = ("candidate", "promoted")


class TrialRow(NamedTuple):
    """One KB trial as written, its fields in the order of the database's unnest columns."""

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
    ts_end: datetime | None
    kb_status: str
    content_hash: str
    pre_features: str | None
    pre_tags: str
    dsr_inputs: str | None  # stored by an insert only: see `trial_from_row`

    def row(self) -> tuple[Any, ...]:
        return self


class EvidenceRow(NamedTuple):
    """One completed test variant with a regime as performance evidence (unnest order)."""

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
    content_hash: str

    def row(self) -> tuple[Any, ...]:
        return self


# The tuples are the rows the SQL unnests: their field order is the SQL's column order.
for _built, _sql in ((TrialRow, TRIAL_COLUMNS), (EvidenceRow, EVIDENCE_COLUMNS)):
    if _built._fields != _sql:
        raise RuntimeError(f"{_built.__name__} fields differ from the SQL unnest columns {_sql}")


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
    # The hash covers every written value but the id and the hash itself, in column order.
    values = (row["strategy_name"], run.symbol, run.timeframe, run.params_key, sharpe, m.n_trades_oos,
              window.start if window else None, window.end if window else None, run.pre_features,
              run.features, run.pre_tags_literal, run.tags_literal, row["kb_status"] in ELIGIBLE)
    return EvidenceRow(row["id"], *values, hashlib.sha256(orjson.dumps(values, default=str)).hexdigest()[:32])


def _fraction(value: float | None) -> float | None:
    # win rates arrive as 0.55 or 55; store fractions
    if value is None:
        return None
    return value / 100.0 if value > 1.0 else value


def trial_from_row(row: Record, run: ParsedRun,
                   dsr_inputs: str | None = None) -> tuple[TrialRow | None, str | None]:
    """The run as a trial, or why it cannot be one; `dsr_inputs`: what a new trial stores
    as its DSR inputs (its DSR settled already), else None (computed after the pass)."""
    extracted = run.extracted
    if extracted.metrics is None:
        return None, str(extracted.reason)
    if not row["strategy_name"]:
        return None, "missing_strategy"
    regime = run.regime
    ts_end = None
    if regime.get("ts_end"):
        try:
            ts_end = timestamp(regime["ts_end"])
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
        kb_status=row["kb_status"], content_hash=hashlib.sha256(content).hexdigest()[:32], dsr_inputs=dsr_inputs,
    ), None


_NO_DSR = {"unavailable": "bars of the OOS window, bar size or Sharpe unknown"}
NO_DSR_TEXT = orjson.dumps({"unavailable": "no evidence window (the run has no regime)"}).decode()


async def deflate_windows(conn: Conn, workspace_id: uuid.UUID, touched: list[uuid.UUID] | None) -> int:
    """Each active trial's deflated Sharpe ratio, from its window's sets and their spread
    (after the evidence of this ingest is in), in the windows of the runs touched (None:
    everywhere); only changed values are written. A trial with no window (no evidence)
    is marked evaluated with the reason."""
    written = 0
    async for rows in trials.trial_window_stats(conn, workspace_id, touched):
        changed = []
        for r in rows:
            found = window_dsr(r["sharpe"], r["n_bars"], r["timeframe"], r["n_sets"], float(r["sharpe_var"]))
            value = None if found is None else round(found.dsr, 6)
            if value != r["dsr"] or not r["evaluated"]:
                # A trial whose DSR cannot be computed is marked evaluated all the same.
                inputs = orjson.dumps(found.to_dict() if found is not None else _NO_DSR).decode()
                changed.append((r["id"], value, inputs))
        written += await trials.update_trial_dsr(conn, workspace_id, changed)
    return written + await trials.mark_trials_without_dsr(conn, workspace_id, NO_DSR_TEXT, touched)
