"""The walk-forward's decisions, one per window, at a cost that does not grow with the
number of parameter sets.

Windows are taken in start order; before each decision the windows that ended by then
are added to running per-set figures (`History`). What a decision needs from all sets
comes from those running figures: the global best from one heap of candidates per
number of windows tested (within a heap the best mean wins; across heaps the penalty
differs), the best set outside the near windows from one heap by mean. Only the sets
tested in the near windows are scored explicitly, for every tuning at once. The choices
are those of scoring every set; ties go to the lower set.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from app.services.kb.recommend.evidence import EvidenceMatrix
from app.services.kb.recommend.scaling import ExpandingScale, scaled_distances
from app.services.kb.recommend.walkforward import MIN_PRIOR_WINDOWS, Outcome, Tuning, nearest
from app.timestamps import UNKNOWN_NS


class History:
    """Per-set figures over the windows ended so far, kept as running sums. A set is a
    candidate once it reached the KB in an ended window (it has been tested then)."""

    def __init__(self, n_sets: int, haircut: float) -> None:
        self.haircut = haircut
        self.n = np.zeros(n_sets)
        self.total = np.zeros(n_sets)
        self.squares = np.zeros(n_sets)
        self.eligible = np.zeros(n_sets, dtype=bool)
        self.var_sum, self.var_count = 0.0, 0  # over sets tested in more than one window
        self.mean_sum, self.candidates = 0.0, 0  # over candidates
        self.by_n: dict[int, list[tuple[float, int]]] = {}  # candidates by windows tested: (-mean, set)
        self.by_mean: list[tuple[float, int, int]] = []  # every candidate: (-mean, set, windows tested)
        self.heaps_kept = True  # False: the heaps are built when next read (decisions lent meanwhile)

    def defer_heaps(self) -> None:
        """Stop keeping the heaps until a decision reads them: they are built then from
        the running figures, with the same minimum as if kept all along."""
        self.heaps_kept, self.by_n, self.by_mean = False, {}, []

    def _heaps(self) -> None:
        if self.heaps_kept:
            return
        cand = np.flatnonzero(self.eligible)
        means, counts = (self.total[cand] / self.n[cand]).tolist(), self.n[cand].astype(np.int64).tolist()
        for s, m, c in zip(cand.tolist(), means, counts, strict=True):
            self.by_n.setdefault(c, []).append((-m, s))
        for heap in self.by_n.values():
            heapq.heapify(heap)
        self.by_mean = [(-m, s, c) for s, m, c in zip(cand.tolist(), means, counts, strict=True)]
        heapq.heapify(self.by_mean)
        self.heaps_kept = True

    def mean(self, s: int) -> float:
        return float(self.total[s] / self.n[s])

    def _var(self, s: int) -> float:
        return float(self.squares[s] / self.n[s] - (self.total[s] / self.n[s]) ** 2)

    def add(self, sets: np.ndarray, values: np.ndarray, eligible: np.ndarray) -> None:
        """One ended window's cells (each set at most once): the per-set figures in place,
        then the running sums over the cells in order (the rounding of one cell at a time)."""
        was = self.n[sets]
        before = np.where(was > 0, was, 1.0)
        old_mean = self.total[sets] / before
        old_sq = self.squares[sets] / before
        was_eligible = self.eligible[sets]
        self.n[sets] = was + 1
        self.total[sets] += values
        self.squares[sets] += values * values
        new_mean = self.total[sets] / (was + 1)
        new_sq = self.squares[sets] / (was + 1)
        now_eligible = was_eligible | eligible
        self.eligible[sets] = now_eligible
        self.candidates += int(np.count_nonzero(now_eligible & ~was_eligible))
        self.var_count += int(np.count_nonzero(was == 1))
        var_sum, mean_sum = self.var_sum, self.mean_sum
        # Each variance squares its mean one value at a time (C pow, as `_var` does): an
        # array square rounds differently about once in a thousand values.
        cells = zip(was.tolist(), old_sq.tolist(), new_sq.tolist(), was_eligible.tolist(), now_eligible.tolist(),
                    old_mean.tolist(), new_mean.tolist(), strict=True)
        for w, osq, nsq, we, ne, om, nm in cells:
            if w > 1:
                var_sum -= osq - om ** 2
            if we:
                mean_sum -= om
            if w >= 1:
                var_sum += nsq - nm ** 2
            if ne:
                mean_sum += nm
        self.var_sum, self.mean_sum = var_sum, mean_sum
        if not self.heaps_kept:
            return
        by_n, by_mean = self.by_n, self.by_mean
        for s, nm, w in zip(sets[now_eligible].tolist(), new_mean[now_eligible].tolist(),
                            was[now_eligible].tolist(), strict=True):
            count = int(w) + 1
            heapq.heappush(by_n.setdefault(count, []), (-nm, s))
            heapq.heappush(by_mean, (-nm, s, count))

    @property
    def pooled_sd(self) -> float:
        return math.sqrt(max(self.var_sum / self.var_count, 1e-6)) if self.var_count else 1.0

    @property
    def z(self) -> float:
        n_tried = max(self.candidates, 1)
        return self.haircut * math.sqrt(2.0 * math.log(n_tried)) if n_tried > 1 else 0.0

    def global_best(self, sd: float, z: float) -> int:
        """The candidate with the best penalised mean (-1: none)."""
        self._heaps()
        best, best_score = -1, -math.inf
        for count in list(self.by_n):
            heap = self.by_n[count]
            while heap and self.n[heap[0][1]] != count:
                heapq.heappop(heap)  # the set has been tested again since: its entry is stale
            if not heap:
                del self.by_n[count]
                continue
            s = heap[0][1]
            score = self.mean(s) - z * (sd / math.sqrt(count))
            if score > best_score or (score == best_score and s < best):
                best, best_score = s, score
        return best

    def best_outside(self, inside: set[int]) -> int:
        """The candidate with the best mean among those not in `inside` (-1: none)."""
        self._heaps()
        held: list[tuple[float, int, int]] = []
        found = -1
        while self.by_mean:
            entry = self.by_mean[0]
            if self.n[entry[1]] != entry[2]:
                heapq.heappop(self.by_mean)
                continue
            if entry[1] in inside:
                held.append(heapq.heappop(self.by_mean))
                continue
            found = entry[1]
            break
        for entry in held:
            heapq.heappush(self.by_mean, entry)
        return found

    @property
    def prior(self) -> float:
        """The no-skill expectation: mean Sharpe of the candidates so far."""
        return self.mean_sum / self.candidates if self.candidates else 0.0


def _orders(m: EvidenceMatrix) -> tuple[np.ndarray, np.ndarray]:
    """Decision windows by start and ended windows by end; equal times ordered by window
    label, so a matrix built in any row order replays the same."""
    labels = np.array(m.window_labels)
    rank = np.argsort(np.argsort(labels, kind="stable"), kind="stable")
    known = np.flatnonzero((m.start_ns != UNKNOWN_NS) & m.ex_ante)
    order = known[np.lexsort((rank[known], m.end_ns[known], m.start_ns[known]))]
    ended = np.flatnonzero(m.end_ns != UNKNOWN_NS)
    by_end = ended[np.lexsort((rank[ended], m.start_ns[ended], m.end_ns[ended]))]
    return order, by_end


def _row(m: EvidenceMatrix, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A window's tested sets (ascending) and their Sharpe."""
    lo, hi = int(m.ptr[w]), int(m.ptr[w + 1])
    return m.cell_set[lo:hi], m.cell_sharpe[lo:hi]


def _choices(m: EvidenceMatrix, h: History, near: np.ndarray, near_d: np.ndarray,
             tunings: tuple[Tuning, ...], sd: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Per tuning: the set with the best local score and its estimate. The weighted sums
    depend on k only: taken once per distinct k; the tunings' scores then in one array."""
    cells = m.cells(near)
    position = np.repeat(np.arange(len(near)), m.ptr[near + 1] - m.ptr[near])
    inside, inv = np.unique(m.cell_set[cells], return_inverse=True)
    values = m.cell_sharpe[cells]
    ks = sorted({min(t.k, len(near)) for t in tunings})
    l_mean, n_eff = np.zeros((len(ks), len(inside))), np.zeros((len(ks), len(inside)))
    for i, k in enumerate(ks):
        bandwidth = max(float(near_d[k - 1]), 1e-6)
        weight = np.where(position < k, np.exp(-0.5 * (near_d[np.minimum(position, k - 1)] / bandwidth) ** 2), 0.0)
        wsum = np.bincount(inv, weights=weight, minlength=len(inside))
        wsharpe = np.bincount(inv, weights=weight * values, minlength=len(inside))
        w2 = np.bincount(inv, weights=weight * weight, minlength=len(inside))
        np.divide(wsharpe, wsum, out=l_mean[i], where=wsum > 0)
        np.divide(wsum * wsum, w2, out=n_eff[i], where=w2 > 0)
    row = np.array([ks.index(min(t.k, len(near))) for t in tunings])
    shrink = np.array([[t.shrink] for t in tunings])
    mean0 = h.total[inside] / h.n[inside]
    est = (n_eff[row] * l_mean[row] + shrink * mean0) / (n_eff[row] + shrink)
    score = np.where(h.eligible[inside], est - z * (sd / np.sqrt(n_eff[row] + shrink)), -np.inf)
    best = np.argmax(score, axis=1)
    chosen, estimate = inside[best].astype(np.int64), est[np.arange(len(tunings)), best]
    outside = h.best_outside(set(inside.tolist()))
    if outside >= 0:  # the best set outside the near windows: no local evidence, its mean shrunk
        s_out = shrink[:, 0]
        out_est = (0.0 * 0.0 + s_out * h.mean(outside)) / (0.0 + s_out)
        out_score = out_est - z * (sd / np.sqrt(0.0 + s_out))
        best_score = score[np.arange(len(tunings)), best]
        wins = (out_score > best_score) | ((out_score == best_score) & (outside < chosen))
        chosen[wins], estimate[wins] = outside, out_est[wins]
    return chosen, estimate


@dataclass(frozen=True)
class Reuse:
    """What a check of the matrix this one was appended to can lend it: its outcomes, for
    the tunings they were made with, and the windows the append gave rows (new or not)."""

    outcomes: tuple[Outcome, ...]
    tunings: tuple[Tuning, ...]
    touched: np.ndarray


def _reusable(m: EvidenceMatrix, reuse: Reuse | None,
              tunings: tuple[Tuning, ...]) -> tuple[np.ndarray, dict[int, Outcome]]:
    """Windows whose decision is the one made before the append, and those decisions. A
    decision reads only its own window and windows that ended before it started, scaled
    by those windows alone: one that started no later than the earliest end among the
    touched windows (and is not touched itself) reads what it read before."""
    same = np.zeros(m.n_windows, dtype=bool)
    if reuse is None or reuse.tunings != tunings:
        return same, {}
    ends = m.end_ns[reuse.touched]
    ends = ends[ends != UNKNOWN_NS]
    cutoff = int(ends.min()) if len(ends) else np.iinfo(np.int64).max
    same = (m.start_ns != UNKNOWN_NS) & (m.start_ns <= cutoff)
    same[reuse.touched] = False
    return same, {o.window: o for o in reuse.outcomes if o.window < len(same) and same[o.window]}


def walk_forward(m: EvidenceMatrix, tunings: tuple[Tuning, ...], reuse: Reuse | None = None) -> list[Outcome]:
    """Replay history for several tunings at once: one decision at the start of each
    window with at least MIN_PRIOR_WINDOWS earlier (ended) windows, in start order. Only
    windows with an ex-ante snapshot are decided: an OOS snapshot describes the very
    window the decision is scored on, which no one knew at its start. A decision needs
    the global best and at least two sets tested in its window. Distances are in the
    robust scale of the windows ended by then (no later window shapes an earlier
    decision), so `reuse` (an earlier check of the rows before an append) lends every
    decision the append cannot have changed."""
    out: list[Outcome] = []
    if not tunings:
        return out
    order, by_end = _orders(m)
    raw = m.features[by_end]
    raw_squared, scale = raw * raw, ExpandingScale(raw)
    comparable = m.tested() >= 2
    same, lent = _reusable(m, reuse, tunings)
    h = History(m.n_sets, tunings[0].haircut)
    if lent:
        h.defer_heaps()  # most windows pass by without a decision made
    max_k = max(t.k for t in tunings)
    seen = 0
    for j in order.tolist():
        while seen < len(by_end) and m.end_ns[by_end[seen]] < m.start_ns[j]:
            w = int(by_end[seen])
            lo, hi = int(m.ptr[w]), int(m.ptr[w + 1])
            h.add(m.cell_set[lo:hi], m.cell_sharpe[lo:hi], m.cell_eligible[lo:hi])
            scale.add(seen)
            seen += 1
        if same[j]:
            if j in lent:
                out.append(lent[j])
            continue
        if not comparable[j] or seen < MIN_PRIOR_WINDOWS or h.candidates == 0:
            continue
        sd, z = h.pooled_sd, h.z
        gb = h.global_best(sd, z)
        sets_j, sharpe_j = _row(m, j)
        realised_gb = m.value(j, gb)
        if gb < 0 or not math.isfinite(realised_gb):
            continue
        d = scaled_distances(raw[:seen], raw_squared[:seen], m.features[j], scale.scale())
        near = nearest(d, max_k)
        chosen, estimate = _choices(m, h, by_end[near], d[near], tunings, sd, z)
        cand_at = np.flatnonzero(h.eligible[sets_j])
        cand = sets_j[cand_at]
        means = h.total[cand] / h.n[cand]
        median_set = int(cand[np.argsort(means, kind="stable")][len(cand) // 2])
        realised = m.values(j, chosen)
        out.append(Outcome(j, np.isfinite(realised), chosen, estimate, np.nan_to_num(realised), gb, h.mean(gb),
                           float(realised_gb), m.value(j, median_set),
                           float(np.mean(sharpe_j[cand_at])), float(np.max(sharpe_j)), h.prior))
    return out
