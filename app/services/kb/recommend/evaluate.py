"""`kb evaluate`: the walk-forward evidence a researcher needs before trusting recommend.
The check is computed once per evidence matrix (one KB revision and scope) and shared by
every answer and evaluation of it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from app.db import Database
from app.db.trials import load_walkforward, save_walkforward
from app.db.workspaces import require_workspace
from app.services.kb.recommend.cache import DEFAULT_CACHE, TrialCache
from app.services.kb.recommend.decisions import Reuse, walk_forward
from app.services.kb.recommend.evidence import EvidenceMatrix
from app.services.kb.recommend.nested import Model, replay
from app.services.kb.recommend.query import Scope
from app.services.kb.recommend.report import summarize
from app.services.kb.recommend.walkforward import (
    DEFAULT_TUNING,
    TUNINGS,
    Outcome,
    global_stats,
    no_skill_prior,
    sums_of,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WalkForwardCheck:
    """The nested replay of one matrix (of strategy revision `revision`) and its report."""

    model: Model
    summary: dict[str, Any]
    revision: int = 0
    outcomes: tuple[Outcome, ...] = ()  # of a replay in this process (a stored check has none)
    reused: int = 0  # decisions lent by the check of the rows before an append
    replayed: bool = False  # computed in this process (not read from the database)


def evaluate_matrix(matrix: EvidenceMatrix) -> WalkForwardCheck:
    """The nested walk-forward replay of one strategy's evidence and its report; the
    decisions an append cannot have changed come from the check of the rows before it."""
    spread = float(np.std(matrix.cell_sharpe)) if len(matrix.cell_sharpe) > 1 else 1.0
    everything = global_stats(matrix, *sums_of(matrix, np.arange(matrix.n_windows)), TUNINGS[0].haircut)
    reuse: Reuse | None = matrix.memo.pop("reuse", None) or _kept(matrix)
    outcomes = walk_forward(matrix, TUNINGS, reuse)
    lent = {id(o) for o in reuse.outcomes} if reuse is not None else set()
    model = replay(outcomes, TUNINGS, DEFAULT_TUNING, matrix.end_ns, matrix.start_ns, spread,
                   no_skill_prior(everything))
    return WalkForwardCheck(model, summarize(matrix, model), matrix.revision, tuple(outcomes),
                            sum(id(o) in lent for o in outcomes), replayed=True)


def _kept(matrix: EvidenceMatrix) -> Reuse | None:
    """Decisions kept on disk beside the file the matrix was appended to (an aid only)."""
    load = matrix.memo.pop("reuse_kept", None)
    try:
        return None if load is None else load()
    except Exception:
        log.warning("could not read the kept walk-forward decisions", exc_info=True)
        return None


async def walk_forward_check(m: EvidenceMatrix) -> WalkForwardCheck:
    """The check of this matrix, computed once (in a worker thread) and then shared."""
    if "check" not in m.memo:
        # One replay shared by concurrent requests (not one per request).
        m.memo["check"] = asyncio.ensure_future(asyncio.to_thread(evaluate_matrix, m))
    result: WalkForwardCheck = await asyncio.shield(m.memo["check"])
    return result


async def stored_check(db: Database, workspace_id: uuid.UUID, strategy: str, scope: Scope,
                       m: EvidenceMatrix, stale_ok: bool = False) -> WalkForwardCheck:
    """The check of this matrix: from memory, else the one stored for its revision and
    scope (so a new `kb recommend` process replays nothing), else computed and stored.
    `stale_ok`: while that computation runs, the last finished check (of an earlier
    revision, from memory or the database) is returned instead of waiting for it."""
    if "check" not in m.memo and scope.as_of is None:
        found = await load_walkforward(db, workspace_id, strategy, scope.key())
        if found is not None and not Model.current(found[1]):
            found = None  # made by an earlier version's rules
        if found is not None and found[0] == m.revision:
            done: asyncio.Future[WalkForwardCheck] = asyncio.get_running_loop().create_future()
            done.set_result(_stored(found))
            m.memo.setdefault("check", done)
            m.memo.pop("reuse", None)  # nothing to replay: what it would lend is let go
            m.memo.pop("reuse_kept", None)
        else:
            if found is not None:
                m.memo.setdefault("previous_check", _stored(found))
            m.memo.setdefault("check", asyncio.ensure_future(_compute_and_store(db, workspace_id, strategy, scope, m)))
    elif "check" not in m.memo:  # a one-off look at the past (a backtest of the KB): kept in memory only
        return await walk_forward_check(m)
    task = m.memo["check"]
    if stale_ok and not task.done() and "previous_check" in m.memo:
        previous: WalkForwardCheck = m.memo["previous_check"]
        return previous
    result: WalkForwardCheck = await asyncio.shield(task)
    return result


def _stored(found: tuple[int, str, str]) -> WalkForwardCheck:
    return WalkForwardCheck(Model.from_json(found[1]), orjson.loads(found[2]), found[0])


async def _compute_and_store(db: Database, workspace_id: uuid.UUID, strategy: str, scope: Scope,
                             m: EvidenceMatrix) -> WalkForwardCheck:
    check = await asyncio.to_thread(evaluate_matrix, m)
    await save_walkforward(db, workspace_id, strategy, scope.key(), m.revision, check.model.to_json(),
                           orjson.dumps(check.summary).decode())
    keep = m.memo.get("keep_check")  # its decisions beside the matrix's file, for the next process
    if keep is not None and check.outcomes:
        try:
            await asyncio.to_thread(keep, check.outcomes)
        except Exception:  # an aid only: the check stands
            log.warning("could not keep the walk-forward decisions", exc_info=True)
    return check


@dataclass(frozen=True)
class Evaluation:
    workspace_id: uuid.UUID
    strategy_name: str
    scope: dict[str, Any]
    windows: int
    parameter_sets: int
    ex_ante_share: float | None
    report: dict[str, Any]  # the walk-forward summary
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"workspace_id": str(self.workspace_id), "strategy_name": self.strategy_name, "scope": self.scope,
                "windows": self.windows, "parameter_sets": self.parameter_sets,
                "ex_ante_share": self.ex_ante_share, **self.report, "elapsed_s": self.elapsed_s}


async def evaluate(db: Database, workspace_id: uuid.UUID, strategy: str, cache: TrialCache | None = None,
                   scope: Scope | None = None, reads: Database | None = None) -> Evaluation:
    """Replay the strategy's history walk-forward (nested: every choice from earlier
    decisions only); report uplift over the global best, the baselines and calibration."""
    started = time.monotonic()
    await require_workspace(db, workspace_id)
    scope = scope or Scope()
    matrix = await (cache or DEFAULT_CACHE).evidence.get(db, workspace_id, strategy, scope=scope, reads=reads)
    matrix.require_one_bar_size(strategy)
    check = await stored_check(db, workspace_id, strategy, scope, matrix)
    return Evaluation(workspace_id, strategy, scope.describe(matrix.n_windows), matrix.n_windows, matrix.n_sets,
                      round(float(matrix.ex_ante.mean()), 4) if matrix.n_windows else None, check.summary,
                      round(time.monotonic() - started, 3))
