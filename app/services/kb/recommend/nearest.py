"""The KB's trials nearest a query regime: the supporting trials every answer lists, and
the `median` method's answer.

Trials are ranked by the distance between robustly standardized regime feature vectors
(`scaling`), blended with tag overlap and OOS quality. The median method aggregates the
top trials' parameters: weighted median for numbers, weighted mode otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from app.services.kb.recommend.answer import Recommendation
from app.services.kb.recommend.query import RecommendQuery
from app.services.kb.recommend.scaling import rms_distances
from app.services.kb.recommend.trial_matrix import TrialMatrix
from app.services.kb.regime.snapshot import FEATURE_NAMES

W_FEATURES, W_TAGS, W_QUALITY = 0.6, 0.25, 0.15
OOD_DISTANCE = 3.0  # robust units (IQR-scaled, RMS over features) to the nearest trial
OK_SUPPORT = 10
MIN_SUPPORT = 3


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    return float(v[np.searchsorted(cum, cum[-1] / 2.0)])


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, p: float) -> float:
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    return float(v[min(np.searchsorted(cum, cum[-1] * p), len(v) - 1)])


def aggregate_params(params: list[dict[str, Any]], weights: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """Weighted median (numbers; integers stay integers) or weighted mode (anything else),
    with a spread per parameter: relative IQR for numbers, 1 - agreement otherwise."""
    keys = sorted({k for p in params for k in p})
    chosen: dict[str, Any] = {}
    spread: dict[str, Any] = {}
    for key in keys:
        present = [(p[key], w) for p, w in zip(params, weights, strict=True) if key in p]
        vals = [v for v, _ in present]
        ws = np.array([w for _, w in present], dtype=float)
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in vals)
        if numeric and vals:
            arr = np.array(vals, dtype=float)
            med = _weighted_median(arr, ws)
            iqr = _weighted_quantile(arr, ws, 0.75) - _weighted_quantile(arr, ws, 0.25)
            chosen[key] = int(med) if all(isinstance(v, int) for v in vals) else med
            spread[key] = {"iqr": iqr, "relative": iqr / abs(med) if med else float(iqr > 0)}
        else:
            tally: dict[str, tuple[Any, float]] = {}
            for v, w in present:
                k = orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()
                tally[k] = (v, tally.get(k, (v, 0.0))[1] + w)
            best_key = max(sorted(tally), key=lambda k: tally[k][1])
            chosen[key] = tally[best_key][0]
            agreement = float(tally[best_key][1] / ws.sum()) if ws.sum() > 0 else 0.0
            spread[key] = {"agreement": agreement, "relative": 1.0 - agreement}
    return chosen, spread


def _candidates(matrix: TrialMatrix, query: RecommendQuery) -> np.ndarray:
    """Trials passing the query's quality filters, on its bar size and (unless pooled) its
    instrument: never another bar size, never silently another instrument."""
    c = matrix.columns
    mask = np.ones(len(matrix), dtype=bool)
    if query.min_sharpe is not None:
        mask &= np.nan_to_num(c.sharpe, nan=-np.inf) >= query.min_sharpe
    if query.min_trades is not None:
        mask &= np.nan_to_num(c.n_trades, nan=0) >= query.min_trades
    if query.max_drawdown is not None:
        mask &= np.nan_to_num(c.max_dd, nan=0) <= query.max_drawdown
    scope = query.scope
    if scope.symbol and not scope.pool:
        mask &= c.symbol_code == matrix.labels.find(scope.symbol)
    if scope.timeframe:
        mask &= c.timeframe_code == matrix.labels.find(scope.timeframe)
    return mask


def _tag_similarity(matrix: TrialMatrix, idx: np.ndarray, query_tags: frozenset[str]) -> np.ndarray:
    """Jaccard overlap of each trial's tags with the query's (tags the KB never saw count in the union)."""
    qbits = sum(1 << matrix.tag_vocab[t] for t in query_tags if t in matrix.tag_vocab)
    unknown = sum(1 for t in query_tags if t not in matrix.tag_vocab)
    trial_bits = matrix.tag_bits(idx)
    inter = np.bitwise_count(trial_bits & qbits).astype(np.float64)
    union = np.bitwise_count(trial_bits | qbits).astype(np.float64) + unknown
    return inter / np.maximum(union, 1.0)


def _supporting(matrix: TrialMatrix, i: int, params: Any, feat_sim: float, tag_sim: float, dist: float | None,
                score: float) -> dict[str, Any]:
    c = matrix.columns
    return {
        "trial_id": str(matrix.trial_id(i)), "run_id": str(matrix.run_id(i)),
        "similarity": round(feat_sim, 4), "tag_overlap": round(tag_sim, 4),
        "distance": None if dist is None else round(dist, 4), "score": round(score, 4), "params": params,
        "sharpe": _num(c.sharpe[i]), "return_frac": _num(c.return_frac[i]),
        "max_dd_frac": _num(c.max_dd[i]), "dsr": None,  # filled from the database: every ingest may change it
        "n_trades": None if math.isnan(c.n_trades[i]) else int(c.n_trades[i]),
        "kb_status": "promoted" if c.promoted[i] else "candidate", "regime_tags": sorted(matrix.tags(i)),
    }


def _support_status(support: int, reasons: list[str], actions: list[str]) -> str:
    if support >= OK_SUPPORT:
        return "ok"
    if support >= MIN_SUPPORT:
        if support < OK_SUPPORT:
            reasons.append("few_supporting_trials")
            actions.append("backfill more runs of this strategy to reach 10 supporting trials")
        return "degraded"
    reasons.append("insufficient_support")
    actions.append("backfill more runs of this strategy")
    return "none"


def _top_by_tags(matrix: TrialMatrix, mask: np.ndarray, query_tags: frozenset[str],
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tags-only query's top k trials (indices, tag overlap, score), without scoring every
    trial: the trials of one tag set share their overlap, and within it rank by quality
    (the matrix keeps each tag set's trials in that order), so the best of a tag set are
    its first ones that pass the filters; tag sets are visited best overlap first and
    stop once even a perfect quality could not enter the top k."""
    bits = matrix.combo_bits
    qbits = sum(1 << matrix.tag_vocab[t] for t in query_tags if t in matrix.tag_vocab)
    unknown = sum(1 for t in query_tags if t not in matrix.tag_vocab)
    inter = np.bitwise_count(bits & qbits).astype(np.float64)
    sims = inter / np.maximum(np.bitwise_count(bits | qbits).astype(np.float64) + unknown, 1.0)
    groups, keys = matrix.by_tag_set()
    found: list[tuple[float, int, float]] = []  # (score, trial, overlap)
    for code in np.argsort(-sims, kind="stable").tolist():
        sim = float(sims[code])
        if len(found) >= k and (W_TAGS + W_FEATURES) * sim + W_QUALITY + 1e-9 < found[k - 1][0]:
            break
        members, taken = groups[code], 0
        for lo in range(0, len(members), 4 * k):
            chunk = members[lo:lo + 4 * k]
            chunk = chunk[mask[chunk]][:k - taken]
            found += [((W_TAGS + W_FEATURES) * sim + float(keys[i]), int(i), sim) for i in chunk.tolist()]
            taken += len(chunk)
            if taken >= k:
                break
        found.sort(key=lambda f: (-f[0], f[1]))
        del found[k:]
    return (np.array([f[1] for f in found], dtype=np.int64), np.array([f[2] for f in found]),
            np.array([f[0] for f in found]))


def _ranked(matrix: TrialMatrix, query: RecommendQuery, mask: np.ndarray, qvec: np.ndarray | None,
            idx: np.ndarray | None,
            considered: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """The top trials (indices into the matrix), their feature similarity, tag overlap,
    distance (None: a tags-only query) and score, best first."""
    k = min(query.top_k, considered)
    if qvec is None or idx is None:
        top, tag_sim, score = _top_by_tags(matrix, mask, query.tag_set, k)
        return top, tag_sim, tag_sim, None, score
    tag_sim = _tag_similarity(matrix, idx, query.tag_set)
    dist = rms_distances(matrix.scaled, matrix.squared_norms, qvec)[idx]
    feat_sim = 1.0 / (1.0 + dist)
    score = W_FEATURES * feat_sim + W_TAGS * tag_sim + W_QUALITY * matrix.quality[idx]
    score = score + 1e-9 * matrix.columns.promoted[idx]  # promoted trials win ties
    top = np.argpartition(-score, k - 1)[:k]
    top = top[np.argsort(-score[top], kind="stable")]
    return idx[top], feat_sim[top], tag_sim[top], dist[top], score[top]


def nearest_trials(matrix: TrialMatrix, query: RecommendQuery) -> Recommendation:
    """The median method's answer: per-parameter weighted median (or mode) of the nearest trials."""
    reasons: list[str] = []
    actions: list[str] = []
    mask = _candidates(matrix, query)
    qvec = matrix.scaling.query(query.regime)
    if qvec is not None:
        mask &= matrix.has_features
    # A tags-only query never needs the candidates' positions, only how many there are.
    idx = np.flatnonzero(mask) if qvec is not None else None
    considered = len(idx) if idx is not None else int(np.count_nonzero(mask))
    echo = {"strategy_name": query.strategy_name, "tags": sorted(query.tag_set),
            "features": None if query.regime is None else dict(zip(FEATURE_NAMES, query.regime.feature_vector(),
                                                                   strict=True))}

    def answer(status: str = "none", **kw: Any) -> Recommendation:
        return Recommendation(status=status, confidence=kw.pop("confidence", 0.0), params=kw.pop("params", {}),
                              considered=considered, supporting_trials=kw.pop("supporting_trials", []),
                              reasons=tuple(reasons), suggested_actions=tuple(actions), query=echo,
                              method="median", **kw)

    if considered == 0:
        reasons.append("no_trials")
        actions.extend(["run backfill-regime and backfill-candidacy, then kb ingest",
                        f"check the strategy name {query.strategy_name!r}"])
        if query.symbol and not query.pool:
            actions.append("or pass --pool to use other instruments' trials at this bar size")
        return answer()
    if qvec is not None and idx is not None:
        nearest_d = float(rms_distances(matrix.scaled, matrix.squared_norms, qvec)[idx].min())
        if nearest_d > OOD_DISTANCE:
            reasons.append("out_of_distribution")
            actions.append("the KB has no trials from a regime like this one: backfill older data or wait for "
                           "runs in this regime")
            return answer(nearest_distance=nearest_d)
    top, feat_sim, tag_sim, dist, score = _ranked(matrix, query, mask, qvec, idx, considered)
    chosen_params = [orjson.loads(matrix.columns.params[i]) for i in top.tolist()]
    params, spread = aggregate_params(chosen_params, np.maximum(score, 1e-9))
    status = _support_status(len(top), reasons, actions)
    rel = [min(float(s["relative"]), 1.0) for s in spread.values()]
    agreement = 1.0 - (float(np.mean(rel)) if rel else 0.0)
    confidence = min(1.0, len(top) / OK_SUPPORT) * (0.5 + 0.5 * agreement) * float(np.mean(feat_sim))
    return answer(
        status, confidence=round(float(np.clip(confidence, 0.0, 1.0)), 4) if status != "none" else 0.0,
        params=params if status != "none" else {}, param_spread=spread,
        supporting_trials=[_supporting(matrix, int(i), p, float(feat_sim[j]), float(tag_sim[j]),
                                       None if dist is None else float(dist[j]), float(score[j]))
                           for j, (i, p) in enumerate(zip(top.tolist(), chosen_params, strict=True))])


def _num(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
