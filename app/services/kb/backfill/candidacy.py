"""backfill-candidacy: mark eligible historical test variants as KB candidates."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from app.db import Database
from app.db import backfill as runs
from app.db.connector import Conn
from app.db.trials import Record
from app.errors import NotFound
from app.far_time import INVALID_CREATED_AT, FarTime
from app.services.kb.backfill.engine import BackfillResult, EngineOptions, Outcome, run_backfill
from app.services.kb.runs.deflated import window_dsr
from app.services.kb.runs.gate import CandidacyConfig, GateCheck, explain_candidacy, is_candidate
from app.services.kb.runs.scan import Hooks, ScanOptions
from app.services.kb.runs.summary import extract_metrics

# Any non-None value tells the gate a regime snapshot is present; it never looks inside.
_REGIME_PRESENT = True


@dataclass(frozen=True)
class CandidacyOptions(ScanOptions):
    experiment_type: str = "sweep"
    gate: CandidacyConfig = field(default_factory=lambda: CandidacyConfig(require_regime=False))


class CandidacyJob:
    kind = "candidacy"

    def __init__(self, opts: CandidacyOptions) -> None:
        self.opts = opts
        self.dsr: dict[uuid.UUID, float] = {}  # of the page in hand, when the gate asks for it
        self.windows: WindowStats | None = None  # read once per backfill, when the gate asks for DSR

    def identity(self) -> dict[str, Any]:
        gate = self.opts.gate
        return {
            "workspace_id": str(self.opts.workspace_id),
            "since": self.opts.since.isoformat() if self.opts.since else None,
            "experiment_type": self.opts.experiment_type,
            "require_regime": gate.require_regime,
            "min_trades": gate.min_trades,
            "max_drawdown": gate.max_drawdown,
            "max_overfit_gap": gate.max_overfit_gap,
            "min_sharpe": gate.min_sharpe,
            **({"min_dsr": gate.min_dsr} if gate.min_dsr is not None else {}),
        }

    async def fetch_page(
        self, conn: Conn, after: tuple[datetime, uuid.UUID], size: int
    ) -> Sequence[Record]:
        page = await runs.candidacy_page(conn, self.opts.workspace_id, after, size)
        if self.opts.gate.min_dsr is not None and page:
            if self.windows is None:
                self.windows = await WindowStats.read(conn, self.opts.workspace_id)
            self.dsr = await self.windows.deflated(conn, self.opts.workspace_id, [r["id"] for r in page])
        return page

    def evaluate(self, rows: Sequence[Record]) -> list[Outcome]:
        default_type = self.opts.experiment_type
        gate = self.opts.gate
        outcomes = []
        for row in rows:
            extracted = extract_metrics(row["summary"], row["trade_count"])
            if isinstance(row["created_at"], FarTime):
                reason: str | None = INVALID_CREATED_AT
            elif extracted.metrics is None:
                reason = extracted.reason
            else:
                metrics = extracted.metrics
                if row["id"] in self.dsr:
                    metrics = replace(metrics, dsr=self.dsr[row["id"]])
                decision = is_candidate(
                    metrics,
                    _REGIME_PRESENT if row["has_regime"] else None,
                    row["experiment_type"] or default_type,  # the run's own type wins
                    gate,
                )
                reason = None if decision.eligible else decision.reason
            outcomes.append(Outcome(row["id"], row["created_at"], reason))
        return outcomes

    async def count_after(self, conn: Conn, after: tuple[datetime, uuid.UUID]) -> int:
        return await runs.count_candidacy_after(conn, self.opts.workspace_id, after)

    async def write(self, conn: Conn, passed: list[Outcome], backfill_run_id: uuid.UUID) -> int:
        return await runs.promote_candidates(conn, [o.run_id for o in passed], self.opts.workspace_id, backfill_run_id)


async def backfill_candidacy(db: Database, opts: CandidacyOptions, hooks: Hooks | None = None) -> BackfillResult:
    """Run (or resume) the candidacy backfill."""
    return await run_backfill(db, CandidacyJob(opts), EngineOptions(opts, hooks or Hooks()))


async def deflated_of(db: Database | Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, float]:
    """Deflated Sharpe ratios of these runs, from the other sets tried on each one's window."""
    rows = await runs.run_window_stats(db, workspace_id, run_ids)
    return _deflated((r["id"], r["sharpe"], r["n_bars"], r["timeframe"], r["n_sets"], r["sharpe_var"]) for r in rows)


def _deflated(rows: Iterable[tuple[uuid.UUID, Any, Any, Any, Any, Any]]) -> dict[uuid.UUID, float]:
    """(run, Sharpe, OOS bars, timeframe, sets tried, their Sharpe variance) as each run's
    DSR, where one can be computed."""
    out = {}
    for run_id, sharpe, n_bars, timeframe, n_sets, variance in rows:
        found = None if sharpe is None else window_dsr(float(sharpe), n_bars, timeframe, n_sets, float(variance))
        if found is not None:
            out[run_id] = round(found.dsr, 6)
    return out


@dataclass(frozen=True)
class WindowStats:
    """Every window's sets tried and Sharpe variance, read in one scan of the workspace:
    a backfill's pages then read only their own runs (a query per page over the whole
    workspace took over a minute at ten million runs). Candidacy changes none of the
    figures, so they hold for the whole backfill. Windows with one set are not kept."""

    by_key: dict[bytes, tuple[int, float]]

    @classmethod
    async def read(cls, conn: Conn, workspace_id: uuid.UUID) -> WindowStats:
        by_key = {}
        async for rows in runs.workspace_window_stats(conn, workspace_id):
            for r in rows:
                by_key[bytes(r["key"])] = (int(r["n_sets"]), float(r["sharpe_var"]))
        return cls(by_key)

    async def deflated(self, conn: Conn, workspace_id: uuid.UUID, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, float]:
        """As `deflated_of`, from the figures read."""
        rows = [r for r in await runs.run_window_keys(conn, workspace_id, run_ids) if r["key"] is not None]
        return _deflated((r["id"], r["sharpe"], r["n_bars"], r["timeframe"],
                          *self.by_key.get(bytes(r["key"]), (1, 0.0))) for r in rows)


@dataclass(frozen=True)
class Explanation:
    run_id: uuid.UUID
    selected: bool
    not_selected_because: list[str]
    experiment_type: str | None
    reason: str
    eligible: bool
    checks: tuple[GateCheck, ...]


async def explain_run(db: Database, run_id: uuid.UUID, opts: CandidacyOptions) -> Explanation:
    """Every gate for one run: value, threshold, pass or fail, and why the scan would
    (not) pick the run up at all."""
    row = await runs.candidacy_run(db, opts.workspace_id, run_id)
    if row is None or row["workspace_id"] != opts.workspace_id:
        raise NotFound(f"run {run_id} is not in workspace {opts.workspace_id}")
    not_selected = []
    if row["run_kind"] != "test_variant":
        not_selected.append(f"run_kind is {row['run_kind']}, not test_variant")
    if row["status"] not in ("completed", "success"):
        not_selected.append(f"status is {row['status']}, not completed")
    if row["kb_status"] != "excluded":
        not_selected.append(f"kb_status is already {row['kb_status']}")
    exp = row["experiment_type"] or opts.experiment_type
    extracted = extract_metrics(row["summary"], row["trade_count"])
    if extracted.metrics is None:
        return Explanation(run_id, not not_selected, not_selected, exp, str(extracted.reason), False, ())
    dsr = (await deflated_of(db, opts.workspace_id, [run_id])).get(run_id)
    metrics = extracted.metrics if dsr is None else replace(extracted.metrics, dsr=dsr)
    decision = explain_candidacy(metrics, _REGIME_PRESENT if row["has_regime"] else None, exp, opts.gate)
    return Explanation(run_id, not not_selected, not_selected, exp, decision.reason, decision.eligible,
                       decision.checks)
