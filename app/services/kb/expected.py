"""recommend()'s default answer: the tested parameter set with the best expected OOS
Sharpe in windows like the query's, unless the strategy's own walk-forward check shows
that conditioning on the regime does not beat the global best (then the global best)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import orjson

from app.services.kb.evidence import EvidenceMatrix
from app.services.kb.query import RecommendQuery
from app.services.kb.walkforward import Tuning, WalkForward, confidence_of, score_query, summarize, tune

RUNNER_UPS = 3
MIN_WINDOWS = 3


def _check(m: EvidenceMatrix) -> tuple[WalkForward, dict[str, Any]]:
    wf, tried = tune(m)
    return wf, {**summarize(m, wf), "tried": tried}


async def walk_forward_check(m: EvidenceMatrix) -> tuple[WalkForward, dict[str, Any]]:
    """The tuned walk-forward replay of this matrix and its summary, computed once per
    matrix (that is, per KB revision) in a worker thread."""
    if "check" not in m.memo:
        # One replay shared by concurrent requests (not one per request).
        m.memo["check"] = asyncio.ensure_future(asyncio.to_thread(_check, m))
    result: tuple[WalkForward, dict[str, Any]] = await asyncio.shield(m.memo["check"])
    return result


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _set(m: EvidenceMatrix, s: int, scores: Any) -> dict[str, Any]:
    est, se = float(scores.estimate[s]), float(scores.se[s])
    return {"params": orjson.loads(m.set_keys[s]), "expected_sharpe": round(est, 4),
            "interval": [round(est - 1.96 * se, 4), round(est + 1.96 * se, 4)],
            "near_windows": round(float(scores.local_n[s]), 2), "windows_tested": int(scores.global_n[s]),
            "global_mean_sharpe": None if math.isnan(scores.global_mean[s]) else round(float(scores.global_mean[s]), 4)}


async def choose_by_expectation(m: EvidenceMatrix, query: RecommendQuery,
                                result: dict[str, Any]) -> dict[str, Any]:
    result["method"] = "expected"
    reasons: list[str] = result["reasons"]
    if m.n_windows < MIN_WINDOWS or not m.eligible.any():
        reasons.append("no_performance_evidence")
        result["suggested_actions"].append(
            "run kb ingest after backfill-regime so every completed run counts as evidence")
        result.update(status="none", confidence=0.0, params={})
        return result
    qvec = None
    if query.regime is not None:
        vec = query.regime.feature_vector()
        if all(v is not None for v in vec):
            qvec = m.scaled(np.array(vec, dtype=float))
    qtags = query.tag_set
    wf, check = await walk_forward_check(m)
    tuning = wf.tuning if wf.decisions else Tuning()
    scores = score_query(m, qvec, qtags, tuning)
    # Only the best few are needed: the answer and its runner-ups.
    finite = np.flatnonzero(np.isfinite(scores.score))
    top = finite[np.argsort(-scores.score[finite], kind="stable")[:RUNNER_UPS + 2]]
    ranked = [int(s) for s in top]
    if not ranked:
        reasons.append("no_performance_evidence")
        result.update(status="none", confidence=0.0, params={})
        return result
    global_best = int(np.argmax(scores.global_score))
    uplift = wf.uplift()
    if wf.decisions:
        conditioned = math.isfinite(uplift) and uplift > 0
        if not conditioned:
            reasons.append("regime_conditioning_no_gain")
    else:
        # Too little dated history to replay: answer from the regime, and say it is unchecked.
        conditioned = True
        reasons.append("walk_forward_unchecked")
    chosen = ranked[0] if conditioned else global_best
    chosen_set = _set(m, chosen, scores)
    if not conditioned:
        chosen_set["expected_sharpe"] = None if math.isnan(scores.global_mean[chosen]) \
            else round(float(scores.global_mean[chosen]), 4)
    est = chosen_set["expected_sharpe"]
    # Support is counted in windows of evidence, not in how many trials are shown (top_k).
    for shown_only in ("few_supporting_trials", "insufficient_support"):
        if shown_only in reasons:
            reasons.remove(shown_only)
    result["suggested_actions"].clear()
    status = "ok" if m.n_windows >= 10 and "filters_relaxed" not in reasons else "degraded"
    if m.n_windows < 10:
        reasons.append("few_supporting_trials")
        result["suggested_actions"].append("backfill more runs of this strategy to reach 10 windows of evidence")
    result.update(
        status=status,
        params=chosen_set["params"],
        confidence=round(confidence_of(est if est is not None else float("nan"), float(scores.se[chosen])), 4),
        expected_sharpe=est,
        interval=chosen_set["interval"],
        runner_ups=[_set(m, s, scores) for s in ranked[1:1 + RUNNER_UPS] if s != chosen][:RUNNER_UPS],
        global_best=_set(m, global_best, scores),
        regime_conditioned=conditioned,
        evidence={
            "windows": m.n_windows, "parameter_sets": len(m.set_keys),
            "matched_on": "tags" if qvec is None else
            ("ex_ante" if m.ex_ante[scores.nearest].mean() >= 0.5 else "oos"),
            "ex_ante_share": round(float(m.ex_ante.mean()), 4),
            "nearest_windows": [
                {"distance": round(float(d), 4), "weight": round(float(w), 4), "tags": list(m.tags[i]),
                 "sharpe_of_choice": _rounded(m.row(i)[chosen]), "run_id": _text(m.run_of(i, chosen))}
                for i, d, w in zip(scores.nearest[:10].tolist(), scores.distance[:10], scores.weights[:10], strict=True)
            ],
        },
        walk_forward=check,
    )
    return result
