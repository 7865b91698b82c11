"""Choosing a tested parameter set for a regime, and checking that choice walk-forward.

Scoring (one decision): the query regime is compared with every earlier window by robust
standardized feature distance (RMS over features; tag overlap when only tags are given).
The k nearest windows get Gaussian weights (bandwidth = the k-th distance). Each set's
local estimate is its weighted mean OOS Sharpe over those windows; it is shrunk toward
the set's own mean over all earlier windows with strength `shrink` (pseudo-windows), and
penalised by `haircut` x sqrt(2 ln N) standard errors for having tried N sets. Only sets
that reached the KB are candidates. The global best is the candidate with the best
penalised all-history mean.

Walk-forward (evaluate): at the start of each window, score from windows that ended
before it and read the realised Sharpe of the chosen set in that window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.numbers import rounded
from app.services.kb.recommend.evidence import EvidenceMatrix
from app.services.kb.recommend.scaling import rms_distances

TUNING_GRID = tuple((k, s) for k in (5, 10, 20, 40) for s in (1.0, 4.0, 16.0))
MIN_PRIOR_WINDOWS = 20


@dataclass(frozen=True)
class Tuning:
    k: int = 20
    shrink: float = 4.0
    haircut: float = 0.5


@dataclass
class Scores:
    estimate: np.ndarray  # per set, shrunk expected Sharpe (NaN: no evidence)
    score: np.ndarray  # estimate minus the multiple-testing haircut
    se: np.ndarray
    local_n: np.ndarray  # effective number of near windows per set
    global_mean: np.ndarray
    global_score: np.ndarray
    global_n: np.ndarray
    nearest: np.ndarray  # indices (into the matrix) of the near windows, nearest first
    weights: np.ndarray
    distance: np.ndarray  # distance of each near window


def distances(m: EvidenceMatrix, idx: np.ndarray | None, qvec: np.ndarray | None,
              qtags: frozenset[str]) -> np.ndarray:
    """Distance from the query to each window in `idx` (None: every window): RMS over
    standardized features, or 1 - tag overlap (Jaccard) for a tags-only query."""
    if idx is None:
        idx = np.arange(m.n_windows)
    if qvec is not None:
        if len(idx) == m.n_windows:
            return rms_distances(m.scaled_features, m.squared_norms, qvec)
        return rms_distances(m.scaled_features[idx], m.squared_norms[idx], qvec)
    sims = [len(qtags & set(m.tags[i])) / max(len(qtags | set(m.tags[i])), 1) for i in idx]
    return 1.0 - np.array(sims, dtype=float)


@dataclass
class GlobalStats:
    """Per-set all-history figures over a set of earlier windows; they do not depend on
    the query or the tuning, so a walk-forward keeps them as running sums."""

    n: np.ndarray
    mean: np.ndarray
    pooled_sd: float
    candidates: np.ndarray
    score: np.ndarray  # penalised mean: the global best is its argmax
    z: float
    mean0: np.ndarray  # mean with 0 where a set has no evidence  # the multiple-testing haircut in standard errors


def sums_of(m: EvidenceMatrix, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per set: how many of these windows tested it, and its Sharpe sum and sum of squares."""
    cells = m.cells(windows)
    sets, values = m.cell_set[cells], m.cell_sharpe[cells]
    return (np.bincount(sets, minlength=m.n_sets).astype(float),
            np.bincount(sets, weights=values, minlength=m.n_sets),
            np.bincount(sets, weights=values * values, minlength=m.n_sets))


def global_stats(m: EvidenceMatrix, n: np.ndarray, total: np.ndarray, squares: np.ndarray,
                 haircut: float) -> GlobalStats:
    mean = np.divide(total, n, out=np.full(len(n), np.nan), where=n > 0)
    var = np.divide(squares, n, out=np.zeros(len(n)), where=n > 0) - np.nan_to_num(mean) ** 2
    pooled = float(np.mean(var[n > 1])) if (n > 1).any() else 1.0
    pooled_sd = math.sqrt(max(pooled, 1e-6))
    candidates = m.eligible & (n > 0)
    n_tried = max(int(candidates.sum()), 1)
    z = haircut * math.sqrt(2.0 * math.log(n_tried)) if n_tried > 1 else 0.0
    se = pooled_sd / np.sqrt(np.maximum(n, 1.0))
    score = np.where(candidates, np.nan_to_num(mean, nan=-np.inf) - z * se, -np.inf)
    return GlobalStats(n, mean, pooled_sd, candidates, score, z, np.nan_to_num(mean))


def nearest(d: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest distances, nearest first."""
    k = min(k, len(d))
    near = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
    return near[np.argsort(d[near], kind="stable")]


def local_scores(m: EvidenceMatrix, windows: np.ndarray, dist: np.ndarray, g: GlobalStats,
                 tuning: Tuning) -> Scores:
    """Scores of every set from the nearest windows (sorted by distance `dist`, at least
    `tuning.k` of them when there are) and the global stats."""
    windows, dist = windows[:tuning.k], dist[:tuning.k]
    h = max(float(dist[-1]), 1e-6)
    w = np.exp(-0.5 * (dist / h) ** 2)
    cells = m.cells(windows)
    cell_w = np.repeat(w, m.ptr[windows + 1] - m.ptr[windows])
    sets = m.cell_set[cells]
    wsum = np.bincount(sets, weights=cell_w, minlength=m.n_sets)
    wsharpe = np.bincount(sets, weights=cell_w * m.cell_sharpe[cells], minlength=m.n_sets)
    l_mean = np.divide(wsharpe, wsum, out=np.zeros(m.n_sets), where=wsum > 0)
    w2 = np.bincount(sets, weights=cell_w * cell_w, minlength=m.n_sets)
    n_eff = np.divide(wsum * wsum, w2, out=np.zeros(len(wsum)), where=w2 > 0)
    estimate = (n_eff * l_mean + tuning.shrink * g.mean0) / (n_eff + tuning.shrink)
    estimate = np.where(g.n > 0, estimate, np.nan)
    se = g.pooled_sd / np.sqrt(n_eff + tuning.shrink)
    score = np.where(g.candidates, estimate - g.z * se, -np.inf)
    return Scores(estimate, score, se, n_eff, g.mean, g.score, g.n, windows, w, dist)


def score_query(m: EvidenceMatrix, qvec: np.ndarray | None, qtags: frozenset[str], tuning: Tuning) -> Scores:
    """Scores of every set from all windows for a query regime (recommend's path: the
    all-history stats are computed once per matrix)."""
    key = ("global_stats", tuning.haircut)
    if key not in m.memo:
        m.memo[key] = global_stats(m, *sums_of(m, np.arange(m.n_windows)), tuning.haircut)
    d = distances(m, None, qvec, qtags)
    near = nearest(d, tuning.k)
    return local_scores(m, near, d[near], m.memo[key], tuning)


def confidence_of(estimate: float, se: float) -> float:
    """How likely the answer realises a positive Sharpe (normal approximation); ranks
    answers by their expected outcome."""
    if not math.isfinite(estimate):
        return 0.0
    return 0.5 * (1.0 + math.erf(estimate / max(se, 1e-6) / math.sqrt(2.0)))


@dataclass
class Decision:
    window: int
    chosen: int
    global_best: int
    confidence: float
    realised: float
    realised_global: float
    realised_median: float
    realised_random: float
    realised_oracle: float


@dataclass
class WalkForward:
    tuning: Tuning
    decisions: list[Decision] = field(default_factory=list)

    def uplift(self) -> float:
        if not self.decisions:
            return float("nan")
        return float(np.mean([d.realised - d.realised_global for d in self.decisions]))


def walk_forward(m: EvidenceMatrix, tunings: list[Tuning]) -> list[WalkForward]:
    """Replay history for several tunings at once: one decision at the start of each
    window with enough earlier windows. Distances, the all-history figures and the
    baselines are computed once per decision; only the local scores depend on the tuning."""
    outs = [WalkForward(t) for t in tunings]
    if not tunings:
        return outs
    haircut = tunings[0].haircut
    max_k = max(t.k for t in tunings)
    known = np.flatnonzero(m.start_ns >= 0)
    order = known[np.argsort(m.start_ns[known], kind="stable")]
    ended = np.flatnonzero(m.end_ns >= 0)
    by_end = ended[np.argsort(m.end_ns[ended], kind="stable")]
    # A window where fewer than two sets were tested cannot tell one choice from another.
    comparable = m.tested() >= 2
    n, total, squares = np.zeros(m.n_sets), np.zeros(m.n_sets), np.zeros(m.n_sets)
    seen = 0
    for j in order.tolist():
        while seen < len(by_end) and m.end_ns[by_end[seen]] < m.start_ns[j]:
            row_n, row_sum, row_sq = sums_of(m, by_end[seen:seen + 1])
            n, total, squares = n + row_n, total + row_sum, squares + row_sq
            seen += 1
        if not comparable[j] or seen < MIN_PRIOR_WINDOWS:
            continue
        g = global_stats(m, n, total, squares, haircut)
        if not np.isfinite(g.score).any():
            continue
        row = m.row(j)
        gb = int(np.argmax(g.score))
        if not math.isfinite(row[gb]):
            continue
        idx = by_end[:seen]
        d = distances(m, idx, m.scaled_features[j], frozenset(m.tags[j]))
        near = nearest(d, max_k)
        near_windows, near_d = idx[near], d[near]
        cand = np.flatnonzero(np.isfinite(g.score) & np.isfinite(row))
        by_mean = cand[np.argsort(g.mean[cand], kind="stable")]
        median_set = int(by_mean[len(by_mean) // 2])
        baselines = (float(row[gb]), float(row[median_set]), float(np.mean(row[cand])), float(np.nanmax(row)))
        for out, tuning in zip(outs, tunings, strict=True):
            sc = local_scores(m, near_windows, near_d, g, tuning)
            chosen = int(np.argmax(sc.score))
            if not math.isfinite(row[chosen]):
                continue
            out.decisions.append(Decision(
                j, chosen, gb, confidence_of(float(sc.estimate[chosen]), float(sc.se[chosen])),
                float(row[chosen]), *baselines))
    return outs


def tune(m: EvidenceMatrix) -> tuple[WalkForward, list[dict[str, Any]]]:
    """The neighbourhood size and shrinkage with the best walk-forward uplift over the
    global best; every tried setting's figures are returned too."""
    outs = walk_forward(m, [Tuning(k=k, shrink=s) for k, s in TUNING_GRID])
    tried = [{"k": wf.tuning.k, "shrink": wf.tuning.shrink, "decisions": len(wf.decisions),
              "uplift": rounded(wf.uplift())} for wf in outs]
    with_decisions = [wf for wf in outs if wf.decisions]
    best = max(with_decisions, key=lambda wf: wf.uplift()) if with_decisions else outs[0]
    return best, tried


def summarize(m: EvidenceMatrix, wf: WalkForward, blocks: int = 10) -> dict[str, Any]:
    """Uplift with a block standard error, hit rate, baselines, per-regime results and
    confidence calibration (realised Sharpe by confidence tercile)."""
    ds = wf.decisions
    if not ds:
        return {"decisions": 0, "uplift": None, "reasons": ["not_enough_history"]}
    diff = np.array([d.realised - d.realised_global for d in ds])
    size = max(len(ds) // blocks, 1)
    block_means = [diff[i:i + size].mean() for i in range(0, len(diff), size)]
    se = float(np.std(block_means, ddof=1) / math.sqrt(len(block_means))) if len(block_means) > 1 else float("nan")

    def mean(attr: str, subset: list[Decision] | None = None) -> float | None:
        values = [getattr(d, attr) for d in (ds if subset is None else subset)]
        return rounded(float(np.mean(values))) if values else None

    per_tag: dict[str, list[Decision]] = {}
    for d in ds:
        for tag in m.oos_tags[d.window] or ("(untagged)",):
            per_tag.setdefault(tag, []).append(d)
    conf = np.array([d.confidence for d in ds])
    cuts = np.quantile(conf, [1 / 3, 2 / 3]) if len(ds) >= 3 else np.array([0.5, 0.5])
    terciles = {"low": [d for d in ds if d.confidence <= cuts[0]],
                "mid": [d for d in ds if cuts[0] < d.confidence <= cuts[1]],
                "high": [d for d in ds if d.confidence > cuts[1]]}
    return {
        "decisions": len(ds),
        "tuning": {"k": wf.tuning.k, "shrink": wf.tuning.shrink, "haircut": wf.tuning.haircut},
        "realised_sharpe": {"recommend": mean("realised"), "global_best": mean("realised_global"),
                            "median_set": mean("realised_median"), "random_set": mean("realised_random"),
                            "oracle": mean("realised_oracle")},
        "uplift": rounded(float(diff.mean())),
        "uplift_se": rounded(se),
        "blocks": len(block_means),
        "hit_rate": rounded(float((diff >= 0).mean())),
        "per_regime": {tag: {"decisions": len(sub), "recommend": mean("realised", sub),
                             "global_best": mean("realised_global", sub)}
                       for tag, sub in sorted(per_tag.items())},
        "calibration": {name: {"decisions": len(sub), "mean_confidence": mean("confidence", sub),
                               "realised": mean("realised", sub)} for name, sub in terciles.items()},
    }
