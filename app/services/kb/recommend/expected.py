"""recommend()'s default answer: the tested parameter set with the best expected OOS
Sharpe in windows like the query's, unless the strategy's own walk-forward check shows
that conditioning on the regime does not beat the global best (then the global best)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from app.numbers import rounded
from app.services.kb.recommend.answer import ExpectedChoice, Recommendation
from app.services.kb.recommend.evaluate import WalkForwardCheck
from app.services.kb.recommend.evidence import EvidenceMatrix
from app.services.kb.recommend.query import RecommendQuery
from app.services.kb.recommend.walkforward import Tuning, confidence_of, score_query

RUNNER_UPS = 3
MIN_WINDOWS = 3


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _set(m: EvidenceMatrix, s: int, scores: Any) -> dict[str, Any]:
    est, se = float(scores.estimate[s]), float(scores.se[s])
    return {"params": orjson.loads(m.set_keys[s]), "expected_sharpe": round(est, 4),
            "interval": [round(est - 1.96 * se, 4), round(est + 1.96 * se, 4)],
            "near_windows": round(float(scores.local_n[s]), 2), "windows_tested": int(scores.global_n[s]),
            "global_mean_sharpe": rounded(float(scores.global_mean[s]))}


# Reasons of the nearest-trials answer that do not hold for an answer from evidence:
# its support is counted in windows of evidence, not in trials shown.
SHOWN_ONLY = ("few_supporting_trials", "insufficient_support")


def choose_by_expectation(m: EvidenceMatrix, query: RecommendQuery, nearest: Recommendation,
                          check: WalkForwardCheck) -> Recommendation:
    """The expected method's answer, built beside the nearest-trials one (whose considered
    count, supporting trials and query echo it shows)."""

    def none(*actions: str) -> Recommendation:
        return Recommendation("none", 0.0, {}, nearest.considered, nearest.supporting_trials,
                              (*nearest.reasons, "no_performance_evidence"), (*nearest.suggested_actions, *actions),
                              nearest.query, "expected", nearest.param_spread)

    if m.n_windows < MIN_WINDOWS or not m.eligible.any():
        return none("run kb ingest after backfill-regime so every completed run counts as evidence")
    qvec = m.scaling.query(query.regime)
    wf = check.walk_forward
    tuning = wf.tuning if wf.decisions else Tuning()
    scores = score_query(m, qvec, query.tag_set, tuning)
    # Only the best few are needed: the answer and its runner-ups.
    finite = np.flatnonzero(np.isfinite(scores.score))
    ranked = [int(s) for s in finite[np.argsort(-scores.score[finite], kind="stable")[:RUNNER_UPS + 2]]]
    if not ranked:
        return none()
    reasons = [r for r in nearest.reasons if r not in SHOWN_ONLY]
    actions: list[str] = []
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
    est = chosen_set["expected_sharpe"] if conditioned else rounded(float(scores.global_mean[chosen]))
    status = "ok" if m.n_windows >= 10 and "filters_relaxed" not in reasons else "degraded"
    if m.n_windows < 10:
        reasons.append("few_supporting_trials")
        actions.append("backfill more runs of this strategy to reach 10 windows of evidence")
    evidence = {
        "windows": m.n_windows, "parameter_sets": len(m.set_keys),
        "matched_on": "tags" if qvec is None else ("ex_ante" if m.ex_ante[scores.nearest].mean() >= 0.5 else "oos"),
        "ex_ante_share": round(float(m.ex_ante.mean()), 4),
        "nearest_windows": [
            {"distance": round(float(d), 4), "weight": round(float(w), 4), "tags": list(m.tags[i]),
             "sharpe_of_choice": rounded(m.row(i)[chosen]), "run_id": _text(m.run_of(i, chosen))}
            for i, d, w in zip(scores.nearest[:10].tolist(), scores.distance[:10], scores.weights[:10], strict=True)
        ],
    }
    return Recommendation(
        status, round(confidence_of(est if est is not None else float("nan"), float(scores.se[chosen])), 4),
        chosen_set["params"], nearest.considered, nearest.supporting_trials, tuple(reasons), tuple(actions),
        nearest.query, "expected", nearest.param_spread,
        expected=ExpectedChoice(
            est, chosen_set["interval"],
            [_set(m, s, scores) for s in ranked[1:1 + RUNNER_UPS] if s != chosen][:RUNNER_UPS],
            _set(m, global_best, scores), conditioned, evidence, check.summary))
