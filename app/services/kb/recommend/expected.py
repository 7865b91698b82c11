"""recommend()'s default answer: the tested parameter set with the best expected OOS
Sharpe in windows like the query's, unless the strategy's own walk-forward check shows
that conditioning on the regime does not beat the global best (then the global best)."""

from __future__ import annotations

from typing import Any

import orjson

from app.numbers import rounded
from app.services.kb.recommend.answer import ExpectedChoice, Recommendation
from app.services.kb.recommend.evaluate import WalkForwardCheck
from app.services.kb.recommend.evidence import EvidenceMatrix
from app.services.kb.recommend.nested import Model
from app.services.kb.recommend.query import RecommendQuery
from app.services.kb.recommend.walkforward import Scores, score_query

RUNNER_UPS = 3
MIN_WINDOWS = 3
CONFIDENCE_MEANS = "probability that the answer's realised OOS Sharpe in the next window is above zero"


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _set(m: EvidenceMatrix, s: int, scores: Scores, model: Model, raw: float | None = None) -> dict[str, Any]:
    """A parameter set with what it promises: the calibrated expected Sharpe and 80% interval."""
    raw = scores.estimate_of(s) if raw is None else raw
    promise = model.promise(raw)
    return {"params": orjson.loads(m.set_keys[s]), "expected_sharpe": rounded(promise.expected),
            "interval": [rounded(promise.low), rounded(promise.high)], "raw_expected_sharpe": rounded(raw),
            "near_windows": round(scores.local_n_of(s), 2), "windows_tested": int(scores.g.n[s]),
            "global_mean_sharpe": rounded(float(scores.g.mean[s]))}


def _evidence(m: EvidenceMatrix, scores: Scores, chosen: int, tags_only: bool) -> dict[str, Any]:
    return {
        "windows": m.n_windows, "parameter_sets": len(m.set_keys),
        "matched_on": "tags" if tags_only else ("ex_ante" if m.ex_ante[scores.nearest].mean() >= 0.5 else "oos"),
        "ex_ante_share": round(float(m.ex_ante.mean()), 4),
        "nearest_windows": [
            {"distance": round(float(d), 4), "weight": round(float(w), 4), "tags": list(m.tags[i]),
             "sharpe_of_choice": rounded(m.value(i, chosen)), "run_id": _text(m.run_of(i, chosen))}
            for i, d, w in zip(scores.nearest[:10].tolist(), scores.distance[:10], scores.weights[:10], strict=True)
        ],
    }


def _runner_ups(m: EvidenceMatrix, scores: Scores, model: Model, ranked: list[int],
                chosen: int) -> list[dict[str, Any]]:
    """The next sets by the same criterion as the answer: the regime ranking when the answer
    conditions on the regime, else the all-history ranking that picked the global best."""
    if model.conditioned:
        return [_set(m, s, scores, model) for s in ranked if s != chosen][:RUNNER_UPS]
    order = scores.global_order[:RUNNER_UPS + 1]
    return [_set(m, int(s), scores, model, float(scores.g.mean[s])) for s in order if s != chosen][:RUNNER_UPS]


# Reasons of the nearest-trials answer that do not hold for an answer from evidence:
# its support is counted in windows of evidence, not in trials shown.
SHOWN_ONLY = ("few_supporting_trials", "insufficient_support")


def choose_by_expectation(m: EvidenceMatrix, query: RecommendQuery, nearest: Recommendation,
                          check: WalkForwardCheck) -> Recommendation:
    """The expected method's answer, built beside the nearest-trials one (whose considered
    count, supporting trials and query echo it shows). The regime-conditioned choice is
    used only when the nested walk-forward says it beats the global best by more than one
    standard error; the promise (expected Sharpe, interval, confidence) is calibrated on
    what earlier answers realised."""
    scope = query.scope.describe(m.n_windows)

    def none(*actions: str) -> Recommendation:
        return Recommendation("none", 0.0, {}, nearest.considered, nearest.supporting_trials,
                              (*nearest.reasons, "no_performance_evidence"), (*nearest.suggested_actions, *actions),
                              nearest.query, "expected", nearest.param_spread)

    if m.n_windows < MIN_WINDOWS or not m.eligible.any():
        hint = "run kb ingest after backfill-regime so every completed run counts as evidence"
        if query.symbol and not query.pool:
            hint += f"; or pass --pool to use other instruments' evidence at this bar size (scope {scope})"
        return none(hint)
    model = check.model
    qvec = m.scaling.query(query.regime)
    scores = score_query(m, qvec, query.tag_set, model.tuning)
    # Only the best few are needed: the answer and its runner-ups.
    ranked = scores.ranked(RUNNER_UPS + 2)
    if not ranked:
        return none()
    global_best = scores.global_best()
    reasons = [r for r in nearest.reasons if r not in SHOWN_ONLY]
    actions: list[str] = []
    if not model.checked:
        reasons.append("walk_forward_unchecked")
        actions.append("too little dated history to check the regime choice walk-forward: backfill more windows")
    elif not model.conditioned:
        reasons.append("regime_conditioning_no_gain")
    chosen = ranked[0] if model.conditioned else global_best
    raw = scores.estimate_of(chosen) if model.conditioned else float(scores.g.mean[chosen])
    chosen_set = _set(m, chosen, scores, model, raw)
    promise = model.promise(raw)
    status = "ok" if m.n_windows >= 10 else "degraded"
    if m.n_windows < 10:
        reasons.append("few_supporting_trials")
        actions.append("backfill more runs of this strategy to reach 10 windows of evidence")
    if scope["pooled"] and query.symbol:
        reasons.append("pooled_instruments")
    evidence = _evidence(m, scores, chosen, qvec is None)
    return Recommendation(
        status, round(promise.confidence, 4), chosen_set["params"], nearest.considered, nearest.supporting_trials,
        tuple(reasons), tuple(actions), nearest.query, "expected", nearest.param_spread,
        expected=ExpectedChoice(
            chosen_set["expected_sharpe"], chosen_set["interval"],
            _runner_ups(m, scores, model, ranked, chosen),
            _set(m, global_best, scores, model, float(scores.g.mean[global_best])), model.conditioned,
            evidence, {**check.summary, "kb_revision": check.revision, "stale": check.revision != m.revision},
            extra={"raw_expected_sharpe": rounded(raw), "confidence_means": CONFIDENCE_MEANS, "scope": scope}))
