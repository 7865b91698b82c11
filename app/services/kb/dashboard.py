"""What the dashboard and the HTML report show, as JSON: overview, coverage, strategy
points, the gate funnel. Evaluation comes from `evaluate`."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from app.db import Database, ledger
from app.db import dashboard as reads
from app.db.workspaces import require_workspace
from app.errors import BadInput
from app.services.kb.recommend.evaluate import evaluate
from app.services.kb.regime.tags import REGIME_TAGS
from app.services.kb.status import workspace_status

THIN_TRIALS = 5  # fewer trials than this in a cell is a thin spot; none is a blind spot
MAX_POINTS = 4000  # points per strategy chart; more are sampled
BUCKETS = ("uptrend", "downtrend", "trending", "flat")  # the trend of a window, for colouring


async def overview(db: Database, workspace_id: uuid.UUID) -> dict[str, Any]:
    """`kb status` plus the ledger's latest rows (a running backfill's progress included)."""
    status = (await workspace_status(db, workspace_id, recent_backfills=0)).to_dict()
    async with db.acquire() as conn:
        status["backfills"] = await ledger.list_runs(conn, workspace_id, 20)
    status.pop("recent_backfills", None)
    return status


async def coverage(db: Database, workspace_id: uuid.UUID) -> dict[str, Any]:
    """One cell per (regime tag, strategy): trials and their median OOS Sharpe; `blind`
    when there are none, `thin` when there are fewer than THIN_TRIALS."""
    await require_workspace(db, workspace_id)
    found = {(r["tag"], r["strategy"]): r for r in await reads.coverage(db, workspace_id)}
    strategies = list(await reads.trials_per_strategy(db, workspace_id))
    extra = sorted({tag for tag, _ in found} - set(REGIME_TAGS) - {"untagged"})
    tags = [*REGIME_TAGS, *extra, "untagged"]
    cells = []
    for tag in tags:
        for strategy in strategies:
            row = found.get((tag, strategy))
            n = int(row["trials"]) if row else 0
            median = row["median_sharpe"] if row else None
            cells.append({"tag": tag, "strategy": strategy, "trials": n,
                          "median_sharpe": None if median is None else round(float(median), 3),
                          "state": "blind" if n == 0 else "thin" if n < THIN_TRIALS else "ok"})
    return {"workspace_id": str(workspace_id), "tags": tags, "strategies": strategies, "cells": cells,
            "thin_below": THIN_TRIALS}


def _bucket(tags: list[str]) -> str:
    return next((b for b in BUCKETS if b in tags), "untagged" if not tags else "other")


async def strategy_points(db: Database, workspace_id: uuid.UUID, strategy: str,
                          limit: int = MAX_POINTS) -> dict[str, Any]:
    """OOS Sharpe against each parameter, coloured by the window's trend (a sample
    when the strategy has more trials than `limit`)."""
    await require_workspace(db, workspace_id)
    counts = await reads.trials_per_strategy(db, workspace_id)
    rows = await reads.strategy_points(db, workspace_id, strategy, limit)
    points: list[dict[str, Any]] = []
    kinds: dict[str, bool] = {}
    for r in rows:
        params = orjson.loads(r["params"])
        if not isinstance(params, dict):
            continue
        for name, value in params.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            kinds[name] = kinds.get(name, True) and numeric
        points.append({"params": params, "sharpe": round(float(r["sharpe"]), 4),
                       "bucket": _bucket(list(r["regime_tags"])), "run_id": str(r["source_run_id"]),
                       "dsr": None if r["dsr"] is None else round(float(r["dsr"]), 4)})
    return {"workspace_id": str(workspace_id), "strategy": strategy, "trials": counts.get(strategy, 0),
            "shown": len(points), "sampled": counts.get(strategy, 0) > limit,
            "params": [{"name": n, "numeric": kinds[n]} for n in sorted(kinds)],
            "buckets": [*BUCKETS, "other", "untagged"], "points": points, "tags": list(REGIME_TAGS)}


async def gate(db: Database, workspace_id: uuid.UUID) -> dict[str, Any]:
    """The funnel from all runs to KB trials, and the latest candidacy backfill's
    rejection reasons with example run ids (a real run preferred over a dry run)."""
    await require_workspace(db, workspace_id)
    funnel = await reads.run_funnel(db, workspace_id)
    latest = await reads.latest_candidacy(db, workspace_id)
    per_strategy = await reads.trials_per_strategy(db, workspace_id)
    trials = sum(per_strategy.values())
    return {"workspace_id": str(workspace_id),
            "funnel": [{"stage": "runs", "n": funnel["runs"]},
                       {"stage": "test variants", "n": funnel["test_variants"]},
                       {"stage": "completed test variants", "n": funnel["completed"]},
                       {"stage": "candidate or promoted", "n": funnel["eligible"]},
                       {"stage": "KB trials", "n": trials}],
            "trials_by_strategy": per_strategy,
            "latest_candidacy": latest}


async def _evaluation(db: Database, workspace_id: uuid.UUID, strategy: str) -> dict[str, Any]:
    """A strategy's evaluation for the report; one whose evidence has several bar sizes is
    said so (the report has no bar size to choose)."""
    try:
        return (await evaluate(db, workspace_id, strategy)).to_dict()
    except BadInput as exc:
        return {"strategy_name": strategy, "decisions": 0, "reasons": [str(exc)]}


async def report_data(db: Database, workspace_id: uuid.UUID) -> dict[str, Any]:
    """Everything the dashboard shows for one workspace, for the self-contained report."""
    cover = await coverage(db, workspace_id)
    strategies = cover["strategies"]
    return {
        "workspace_id": str(workspace_id),
        "overview": await overview(db, workspace_id),
        "coverage": cover,
        "strategies": {s: await strategy_points(db, workspace_id, s) for s in strategies},
        "gate": await gate(db, workspace_id),
        "evaluations": {s: await _evaluation(db, workspace_id, s) for s in strategies},
    }
