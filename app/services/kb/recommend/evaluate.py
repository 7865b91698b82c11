"""`kb evaluate`: the walk-forward evidence a researcher needs before trusting recommend.
The check is computed once per evidence matrix (one KB revision) and shared by every
answer and evaluation of that revision."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from app.db import Database
from app.db.workspaces import require_workspace
from app.services.kb.recommend.cache import DEFAULT_CACHE, TrialCache
from app.services.kb.recommend.evidence import EvidenceMatrix
from app.services.kb.recommend.walkforward import WalkForward, summarize, tune


@dataclass(frozen=True)
class WalkForwardCheck:
    """The tuned replay of one matrix and its summary."""

    walk_forward: WalkForward
    summary: dict[str, Any]


def evaluate_matrix(matrix: EvidenceMatrix) -> WalkForwardCheck:
    """The tuned walk-forward replay of one strategy's evidence and its report."""
    best, tried = tune(matrix)
    return WalkForwardCheck(best, {**summarize(matrix, best), "tried": tried})


async def walk_forward_check(m: EvidenceMatrix) -> WalkForwardCheck:
    """The check of this matrix, computed once (in a worker thread) and then shared."""
    if "check" not in m.memo:
        # One replay shared by concurrent requests (not one per request).
        m.memo["check"] = asyncio.ensure_future(asyncio.to_thread(evaluate_matrix, m))
    result: WalkForwardCheck = await asyncio.shield(m.memo["check"])
    return result


@dataclass(frozen=True)
class Evaluation:
    workspace_id: uuid.UUID
    strategy_name: str
    windows: int
    parameter_sets: int
    ex_ante_share: float | None
    report: dict[str, Any]  # the walk-forward summary
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"workspace_id": str(self.workspace_id), "strategy_name": self.strategy_name,
                "windows": self.windows, "parameter_sets": self.parameter_sets,
                "ex_ante_share": self.ex_ante_share, **self.report, "elapsed_s": self.elapsed_s}


async def evaluate(db: Database, workspace_id: uuid.UUID, strategy: str,
                   cache: TrialCache | None = None) -> Evaluation:
    """Replay the strategy's history walk-forward with the tuned neighbourhood and
    shrinkage; report uplift over the global best and the baselines."""
    started = time.monotonic()
    await require_workspace(db, workspace_id)
    matrix = await (cache or DEFAULT_CACHE).evidence.get(db, workspace_id, strategy)
    check = await walk_forward_check(matrix)
    return Evaluation(workspace_id, strategy, matrix.n_windows, matrix.n_sets,
                      round(float(matrix.ex_ante.mean()), 4) if matrix.n_windows else None, check.summary,
                      round(time.monotonic() - started, 3))
