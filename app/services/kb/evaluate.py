"""`kb evaluate`: the walk-forward evidence a researcher needs before trusting recommend."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from app.db import Database
from app.db.workspaces import require_workspace
from app.services.kb.evidence import EvidenceCache, EvidenceMatrix
from app.services.kb.walkforward import WalkForward, summarize, tune


def evaluate_matrix(matrix: EvidenceMatrix) -> tuple[dict[str, Any], WalkForward]:
    """The tuned walk-forward replay of one strategy's evidence: its report and decisions."""
    best, tried = tune(matrix)
    report = {"windows": matrix.n_windows, "parameter_sets": len(matrix.set_keys),
              "ex_ante_share": round(float(matrix.ex_ante.mean()), 4) if matrix.n_windows else None,
              **summarize(matrix, best), "tried": tried}
    return report, best


async def evaluate(db: Database, workspace_id: uuid.UUID, strategy: str,
                   cache: EvidenceCache | None = None) -> dict[str, Any]:
    """Replay the strategy's history walk-forward with the tuned neighbourhood and
    shrinkage; report uplift over the global best and the baselines."""
    started = time.monotonic()
    await require_workspace(db, workspace_id)
    matrix = await (cache or EvidenceCache()).get(db, workspace_id, strategy)
    report, _ = await asyncio.to_thread(evaluate_matrix, matrix)
    return {"workspace_id": str(workspace_id), "strategy_name": strategy, **report,
            "elapsed_s": round(time.monotonic() - started, 3)}
