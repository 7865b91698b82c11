"""Choosing a tested parameter set for a regime, and checking that choice walk-forward.

Scoring (one decision): the query regime is compared with every earlier window by robust
standardized feature distance (RMS over features; tag overlap when only tags are given).
The k nearest windows get Gaussian weights (bandwidth = the k-th distance). Each set's
local estimate is its weighted mean OOS Sharpe over those windows; it is shrunk toward
the set's own mean over all earlier windows with strength `shrink` (pseudo-windows), and
penalised by `haircut` x sqrt(2 ln N) standard errors for having tried N sets. Only sets
that reached the KB are candidates. The global best is the candidate with the best
penalised all-history mean.

Walk-forward (`decisions`): at the start of each window, score from windows that ended
before it, for every tuning tried, and read the realised Sharpe of each choice in that
window; `nested` then decides from those outcomes, each time from earlier decisions only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.services.kb.recommend.evidence import EvidenceMatrix
from app.services.kb.recommend.scaling import rms_distances


@dataclass(frozen=True)
class Tuning:
    k: int = 20
    shrink: float = 4.0
    haircut: float = 0.5


TUNINGS = tuple(Tuning(k=k, shrink=s) for k in (5, 10, 20, 40) for s in (1.0, 4.0, 16.0))
DEFAULT_TUNING = 7  # k=20, shrink=4 (TUNINGS[7]): used until earlier decisions can choose
MIN_PRIOR_WINDOWS = 20


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
    bits, vocab = m.tag_bits()
    if bits is None:  # more distinct tags than bits: set by set
        sims = [len(qtags & set(m.tags[i])) / max(len(qtags | set(m.tags[i])), 1) for i in idx]
        return 1.0 - np.array(sims, dtype=float)
    qbits = sum(1 << vocab[t] for t in qtags if t in vocab)
    unknown = sum(1 for t in qtags if t not in vocab)
    inter = np.bitwise_count(bits[idx] & qbits).astype(float)
    union = np.bitwise_count(bits[idx] | qbits).astype(float) + unknown
    return 1.0 - inter / np.maximum(union, 1.0)


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
    if len(windows) == m.n_windows:  # every window: every cell, as they lie
        sets, values = m.cell_set, m.cell_sharpe
    else:
        cells = m.cells(windows)
        sets, values = m.cell_set[cells], m.cell_sharpe[cells]
    return (np.bincount(sets, minlength=m.n_sets).astype(float),
            np.bincount(sets, weights=values, minlength=m.n_sets),
            np.bincount(sets, weights=values * values, minlength=m.n_sets))


def global_stats(m: EvidenceMatrix, n: np.ndarray, total: np.ndarray, squares: np.ndarray,
                 haircut: float, eligible: np.ndarray | None = None) -> GlobalStats:
    """`eligible`: the sets that reached the KB in the windows summed (default: in any window)."""
    mean = np.divide(total, n, out=np.full(len(n), np.nan), where=n > 0)
    var = np.divide(squares, n, out=np.zeros(len(n)), where=n > 0) - np.nan_to_num(mean) ** 2
    pooled = float(np.mean(var[n > 1])) if (n > 1).any() else 1.0
    pooled_sd = math.sqrt(max(pooled, 1e-6))
    candidates = (m.eligible if eligible is None else eligible) & (n > 0)
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


def best(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest finite values, largest first (ties: lower position), without
    sorting them all."""
    idx = np.flatnonzero(np.isfinite(values))
    if len(idx) > k:
        v = values[idx]
        idx = idx[v >= np.partition(v, len(v) - k)[len(v) - k]]
    return idx[np.argsort(-values[idx], kind="stable")][:k]


@dataclass
class Scores:
    """A query's scores. Only the sets tested in the near windows are scored explicitly
    (`sets`, ascending, with `estimate`, `score` and `local_n` aligned): every other set
    has no near evidence, so its estimate is its all-history mean and its score that mean
    minus one fixed penalty, and the best of them come from an order kept per matrix
    (`outside`). Rankings are those of scoring every set; ties go to the lower set."""

    sets: np.ndarray
    estimate: np.ndarray  # shrunk expected Sharpe of each of `sets`
    score: np.ndarray  # estimate minus the multiple-testing haircut (-inf: may not be recommended)
    local_n: np.ndarray  # effective number of near windows per set
    g: GlobalStats
    outside: ByMean  # candidates by all-history mean, best first (the matrix's)
    shrink: float
    penalty: float  # z x pooled sd / sqrt(shrink): a set without near evidence scores its mean minus this
    global_order: np.ndarray  # candidates by penalised all-history mean, best first (the matrix's)
    nearest: np.ndarray  # indices (into the matrix) of the near windows, nearest first
    weights: np.ndarray
    distance: np.ndarray  # distance of each near window

    def _at(self, s: int) -> int:
        i = int(np.searchsorted(self.sets, s))
        return i if i < len(self.sets) and self.sets[i] == s else -1

    def estimate_of(self, s: int) -> float:
        i = self._at(s)
        if i >= 0:
            return float(self.estimate[i])
        if self.g.n[s] <= 0:
            return math.nan
        return float((0.0 * 0.0 + self.shrink * self.g.mean0[s]) / (0.0 + self.shrink))

    def local_n_of(self, s: int) -> float:
        i = self._at(s)
        return float(self.local_n[i]) if i >= 0 else 0.0

    def ranked(self, k: int) -> list[int]:
        """The k best sets by score."""
        inside = self.sets[best(self.score, k)]
        taken = set(self.sets.tolist())
        others: list[int] = []
        start = 0
        while len(others) < k and start < len(self.outside):  # enough to pass over those taken
            chunk = self.outside.first(start + k + len(taken))[start:].tolist()
            others += [s for s in chunk if s not in taken][:k - len(others)]
            start += len(chunk)
        pool = [(float(self.score[self._at(int(s))]), int(s)) for s in inside]
        pool += [(self.estimate_of(s) - self.penalty, s) for s in others]
        pool = [p for p in pool if math.isfinite(p[0])]
        return [s for _, s in sorted(pool, key=lambda p: (-p[0], p[1]))[:k]]

    def global_best(self) -> int:
        return int(self.global_order[0]) if len(self.global_order) else -1


class ByMean:
    """Candidates by all-history mean, best first (ties: the lower set), sorted only as far
    as it is read: an answer reads its first few, not an order of every set."""

    def __init__(self, g: GlobalStats) -> None:
        self._values = np.where(g.candidates, g.mean0, -np.inf)
        self._count = int(np.count_nonzero(g.candidates))
        self._known = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._count

    def first(self, n: int) -> np.ndarray:
        n = min(n, self._count)
        if len(self._known) < n:
            self._known = best(self._values, max(n, 2 * len(self._known), 256))
        return self._known[:n]


def _per_matrix(m: EvidenceMatrix, haircut: float) -> tuple[GlobalStats, ByMean, np.ndarray]:
    """The all-history figures and the two candidate orders, once per matrix."""
    key = ("global_stats", haircut)
    if key not in m.memo:
        g = global_stats(m, *sums_of(m, np.arange(m.n_windows)), haircut)
        by_score = best(g.score, min(int(np.count_nonzero(g.candidates)), 64))
        m.memo[key] = (g, ByMean(g), by_score)
    found: tuple[GlobalStats, ByMean, np.ndarray] = m.memo[key]
    return found


def score_query(m: EvidenceMatrix, qvec: np.ndarray | None, qtags: frozenset[str], tuning: Tuning) -> Scores:
    """Scores of every set from all windows for a query regime (recommend's path)."""
    g, by_mean, by_score = _per_matrix(m, tuning.haircut)
    d = distances(m, None, qvec, qtags)
    windows = nearest(d, tuning.k)
    dist = d[windows]
    h = max(float(dist[-1]), 1e-6) if len(dist) else 1e-6
    w = np.exp(-0.5 * (dist / h) ** 2)
    cells = m.cells(windows)
    cell_w = np.repeat(w, m.ptr[windows + 1] - m.ptr[windows])
    sets, inv = np.unique(m.cell_set[cells], return_inverse=True)
    wsum = np.bincount(inv, weights=cell_w, minlength=len(sets))
    wsharpe = np.bincount(inv, weights=cell_w * m.cell_sharpe[cells], minlength=len(sets))
    w2 = np.bincount(inv, weights=cell_w * cell_w, minlength=len(sets))
    l_mean = np.divide(wsharpe, wsum, out=np.zeros(len(sets)), where=wsum > 0)
    n_eff = np.divide(wsum * wsum, w2, out=np.zeros(len(sets)), where=w2 > 0)
    estimate = (n_eff * l_mean + tuning.shrink * g.mean0[sets]) / (n_eff + tuning.shrink)
    score = np.where(g.candidates[sets], estimate - g.z * (g.pooled_sd / np.sqrt(n_eff + tuning.shrink)), -np.inf)
    penalty = g.z * (g.pooled_sd / math.sqrt(0.0 + tuning.shrink))
    return Scores(sets, estimate, score, n_eff, g, by_mean, tuning.shrink, penalty, by_score, windows, w, dist)


@dataclass(frozen=True)
class Outcome:
    """One decision time replayed for every tuning at once: per tuning, whether it made a
    choice, the set chosen, its expected and its realised Sharpe; and the baselines."""

    window: int
    ok: np.ndarray
    chosen: np.ndarray
    estimate: np.ndarray
    realised: np.ndarray
    global_best: int
    global_mean: float
    realised_global: float
    realised_median: float
    realised_random: float
    realised_oracle: float
    prior: float  # mean all-history Sharpe of the sets that may be recommended, as of the decision


def no_skill_prior(g: GlobalStats) -> float:
    """What a set drawn from those that may be recommended realised on average so far."""
    means = g.mean[g.candidates]
    return float(np.mean(means)) if len(means) else 0.0
