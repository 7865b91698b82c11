"""The incremental core against the straightforward versions it replaces: the walk-forward
without running figures (every set scored at every decision), the nested replay that
recomputes its history at each decision, and matrices loaded in one go rather than
appended to. Both sides run on the same random inputs; the answers must agree."""

from __future__ import annotations

import heapq
import math
import uuid
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from app.services.kb.recommend.decisions import History, walk_forward
from app.services.kb.recommend.evidence import EvidenceBuilder, EvidenceMatrix, build_matrix, extend_matrix
from app.services.kb.recommend.nearest import (
    W_FEATURES,
    W_QUALITY,
    W_TAGS,
    _candidates,
    _tag_similarity,
    _top_by_tags,
)
from app.services.kb.recommend.nested import (
    BLOCKS,
    Decision,
    Model,
    _best_tuning,
    _now,
    _rule,
    block_se,
    replay,
)
from app.services.kb.recommend.query import RecommendQuery, Scope
from app.services.kb.recommend.ranked import RankedSums
from app.services.kb.recommend.scaling import RobustScale
from app.services.kb.recommend.trial_matrix import TrialBuilder, build_trial_matrix
from app.services.kb.recommend.walkforward import (
    MIN_PRIOR_WINDOWS,
    TUNINGS,
    GlobalStats,
    Outcome,
    Tuning,
    distances,
    global_stats,
    nearest,
    no_skill_prior,
    score_query,
    sums_of,
)
from app.timestamps import UNKNOWN_NS
from tests.factories import calibrate

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def _evidence_rows(seed: int, windows: int = 90, grid: int = 12, random_sets: int = 40) -> list[dict[str, Any]]:
    """Windows with distinct start and end times; a grid of sets tested in most windows,
    plus one-off sets; eligibility switched on at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for w in range(windows):
        start = T0 + timedelta(hours=37 * w)
        end = start + timedelta(hours=int(rng.integers(20, 300)), minutes=w)
        feats = rng.normal(size=10).tolist()
        pre = None if rng.random() < 0.1 else feats  # the runs of one window share its snapshots
        tested = [g for g in range(grid) if rng.random() < 0.8] + \
            [grid + int(x) for x in rng.integers(0, random_sets, 2)]
        for s in tested:
            mean = 0.2 if s < grid else -1.0  # one-off sets do worse: the global best is a grid set
            for _ in range(1 + int(rng.random() < 0.15)):  # a set sometimes run twice in a window
                rows.append({"source_run_id": uuid.UUID(int=int(rng.integers(1, 2**62))), "symbol": "SPY",
                             "timeframe": "1d", "params": f'{{"set": {s}}}', "sharpe": float(rng.normal(mean, 1.0)),
                             "oos_start": start, "oos_end": end,
                             "pre_features": pre, "oos_features": feats,
                             "pre_tags": ["a"], "oos_tags": ["b" if s % 2 else "a"],
                             "eligible": bool(rng.random() < 0.6)})
    return rows


@dataclass
class DenseScores:
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




def local_scores(m: EvidenceMatrix, windows: np.ndarray, dist: np.ndarray, g: GlobalStats,
                 tuning: Tuning) -> DenseScores:
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
    return DenseScores(estimate, score, se, n_eff, g.mean, g.score, g.n, windows, w, dist)


def reference_walk_forward(m: EvidenceMatrix, tunings: tuple[Tuning, ...]) -> list[Outcome]:
    """Replay history for several tunings at once: one decision at the start of each
    window with at least MIN_PRIOR_WINDOWS earlier (ended) windows, in start order. Only
    windows with an ex-ante snapshot are decided: an OOS snapshot describes the very
    window the decision is scored on, which no one knew at its start.
    Distances (in the scale of the windows ended by then), the all-history figures and
    the baselines are computed once per decision; only the local scores depend on the
    tuning."""
    out: list[Outcome] = []
    if not tunings:
        return out
    haircut = tunings[0].haircut
    max_k = max(t.k for t in tunings)
    known = np.flatnonzero((m.start_ns != UNKNOWN_NS) & m.ex_ante)
    order = known[np.argsort(m.start_ns[known], kind="stable")]
    ended = np.flatnonzero(m.end_ns != UNKNOWN_NS)
    by_end = ended[np.argsort(m.end_ns[ended], kind="stable")]
    # A window where fewer than two sets were tested cannot tell one choice from another.
    comparable = m.tested() >= 2
    n, total, squares = np.zeros(m.n_sets), np.zeros(m.n_sets), np.zeros(m.n_sets)
    # Sets that reached the KB in a window that has ended: only those may be chosen then.
    eligible = np.zeros(m.n_sets, dtype=bool)
    seen = 0
    for j in order.tolist():
        while seen < len(by_end) and m.end_ns[by_end[seen]] < m.start_ns[j]:
            # A set appears once per window, so the window's cells add in place.
            w = int(by_end[seen])
            cells = slice(int(m.ptr[w]), int(m.ptr[w + 1]))
            sets, values = m.cell_set[cells], m.cell_sharpe[cells]
            n[sets] += 1.0
            total[sets] += values
            squares[sets] += values * values
            eligible[sets[m.cell_eligible[cells]]] = True
            seen += 1
        if not comparable[j] or seen < MIN_PRIOR_WINDOWS:
            continue
        g = global_stats(m, n, total, squares, haircut, eligible)
        if not np.isfinite(g.score).any():
            continue
        row = m.row(j)
        gb = int(np.argmax(g.score))
        if not math.isfinite(row[gb]):
            continue
        idx = by_end[:seen]
        # In the robust scale of the windows ended by then (refitted from scratch here).
        scale = RobustScale.fit(m.features[idx]).scale
        d = np.sqrt((((m.features[idx] - m.features[j]) / scale) ** 2).mean(axis=1))
        near = nearest(d, max_k)
        near_windows, near_d = idx[near], d[near]
        cand = np.flatnonzero(np.isfinite(g.score) & np.isfinite(row))
        by_mean = cand[np.argsort(g.mean[cand], kind="stable")]
        median_set = int(by_mean[len(by_mean) // 2])
        chosen = np.zeros(len(tunings), dtype=np.int64)
        estimate = np.full(len(tunings), np.nan)
        for i, tuning in enumerate(tunings):
            sc = local_scores(m, near_windows, near_d, g, tuning)
            chosen[i] = int(np.argmax(sc.score))
            estimate[i] = float(sc.estimate[chosen[i]])
        realised = row[chosen]
        out.append(Outcome(j, np.isfinite(realised), chosen, estimate, np.nan_to_num(realised), gb,
                           float(g.mean[gb]), float(row[gb]), float(row[median_set]), float(np.mean(row[cand])),
                           float(np.nanmax(row)), no_skill_prior(g)))
    return out


def reference_replay(outcomes: list[Outcome], tunings: tuple[Tuning, ...], default: int, end_ns: np.ndarray,
           start_ns: np.ndarray, fallback_sd: float, prior_now: float = 0.0) -> Model:
    """Decisions in time order, each from earlier decisions only, and the model as of now."""
    n_t = len(tunings)
    made: list[Decision] = []
    done_end: list[int] = []  # window end of each decision made, aligned with `made`
    gains_hist = np.zeros((0, n_t))
    ok_hist = np.zeros((0, n_t), dtype=bool)
    for o in outcomes:
        earlier = np.array(done_end, dtype=np.int64) < start_ns[o.window] if made else np.zeros(0, dtype=bool)
        gains = (gains_hist[earlier] * ok_hist[earlier]).sum(axis=0)
        counts = ok_hist[earlier].sum(axis=0)
        t = _best_tuning(gains, np.maximum(counts, 0)) if made else -1
        t = default if t < 0 or not o.ok[t] else t
        if not o.ok[t]:
            continue
        prior = [d for d, e in zip(made, earlier.tolist(), strict=True) if e]
        conditioned, _, _ = _rule(np.array([d.realised_regime - d.realised_global for d in prior]))
        chosen = int(o.chosen[t]) if conditioned else o.global_best
        raw = float(o.estimate[t]) if conditioned else o.global_mean
        promise = calibrate(raw, np.array([d.raw_expected for d in prior]), np.array([d.realised for d in prior]),
                            np.array([d.expected for d in prior]), fallback_sd, o.prior,
                            sum(not d.low <= d.realised <= d.high for d in prior))
        made.append(Decision(o.window, t, conditioned, chosen, o.global_best, raw, promise.expected, promise.low,
                             promise.high, promise.confidence,
                             float(o.realised[t]) if conditioned else o.realised_global, o.realised_global,
                             o.realised_median, o.realised_random, o.realised_oracle, float(o.realised[t])))
        done_end.append(int(end_ns[o.window]))
        gains_hist = np.vstack([gains_hist, np.where(o.ok, o.realised - o.realised_global, 0.0)])
        ok_hist = np.vstack([ok_hist, o.ok])
    return _now(tunings, default, tuple(made), gains_hist, ok_hist, fallback_sd, prior_now)



def _same_outcomes(new: list[Outcome], old: list[Outcome]) -> None:
    assert [o.window for o in new] == [o.window for o in old]
    for a, b in zip(new, old, strict=True):
        assert a.global_best == b.global_best
        assert a.chosen.tolist() == b.chosen.tolist()
        assert a.ok.tolist() == b.ok.tolist()
        for x, y in zip(astuple(a)[3:], astuple(b)[3:], strict=True):
            assert np.allclose(np.asarray(x, dtype=float), np.asarray(y, dtype=float), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_walk_forward_from_running_figures_decides_as_scoring_every_set(seed: int) -> None:
    m = build_matrix(_evidence_rows(seed), 1)
    new, old = walk_forward(m, TUNINGS), reference_walk_forward(m, TUNINGS)
    assert len(new) > 30
    _same_outcomes(new, old)


@pytest.mark.parametrize("seed", [1, 4])
def test_replay_with_a_running_history_equals_the_recomputing_one(seed: int) -> None:
    m = build_matrix(_evidence_rows(seed, windows=150), 1)
    outcomes = walk_forward(m, TUNINGS)
    new = replay(outcomes, TUNINGS, 7, m.end_ns, m.start_ns, 1.0, 0.1)
    old = reference_replay(outcomes, TUNINGS, 7, m.end_ns, m.start_ns, 1.0, 0.1)
    assert len(new.decisions) > 40 and (new.tuning, new.conditioned) == (old.tuning, old.conditioned)
    for a, b in zip(new.decisions, old.decisions, strict=True):
        assert np.allclose(np.array(astuple(a), dtype=float), np.array(astuple(b), dtype=float), equal_nan=True)


def _scattered_outcomes(n: int, seed: int) -> tuple[list[Outcome], np.ndarray, np.ndarray]:
    """Outcomes of windows of random lengths: windows end in another order than they start,
    so decisions end out of order (and some long windows end long after later ones)."""
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.integers(0, 10**6, n)).astype(np.int64)
    ends = starts + rng.choice([rng.integers(1, 3000, n), rng.integers(1, 60_000, n)], axis=0, p=[0.8, 0.2])[0]
    out = []
    for w in range(n):
        realised = rng.normal(0.2, 1.0, len(TUNINGS))
        out.append(Outcome(w, rng.random(len(TUNINGS)) > 0.05, rng.integers(0, 40, len(TUNINGS)),
                           rng.normal(0.5, 0.5, len(TUNINGS)), realised, 3, 0.4, float(rng.normal(0.1 * seed, 1)),
                           0.0, 0.0, float(realised.max()), 0.3))
    return out, ends, starts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replay_of_decisions_ending_out_of_order_equals_the_recomputing_one(seed: int) -> None:
    outcomes, ends, starts = _scattered_outcomes(700, seed)
    new = replay(outcomes, TUNINGS, 7, ends, starts, 1.0, 0.1)
    old = reference_replay(outcomes, TUNINGS, 7, ends, starts, 1.0, 0.1)
    assert len(new.decisions) == len(old.decisions) > 600
    assert (new.tuning, new.conditioned) == (old.tuning, old.conditioned)
    assert len({d.conditioned for d in new.decisions}) == 2  # the rule switched on this path
    for a, b in zip(new.decisions, old.decisions, strict=True):
        assert (a.window, a.tuning, a.conditioned, a.chosen) == (b.window, b.tuning, b.conditioned, b.chosen)
        assert np.allclose(np.array(astuple(a), dtype=float), np.array(astuple(b), dtype=float), rtol=1e-12,
                           atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("seed", [0, 3])
def test_sums_by_rank_of_values_placed_out_of_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 1, 300)
    sums = RankedSums(len(values))
    placed: list[int] = []
    for position in rng.permutation(len(values))[:250].tolist():
        sums.place(position, float(values[position]))
        placed.append(position)
        series = values[sorted(placed)]
        for r in {0, 1, len(series) // 3, len(series) - 1, len(series)}:
            assert math.isclose(sums.first(r), float(series[:r].sum()), rel_tol=1e-9, abs_tol=1e-9)
        expected = block_se(series)
        assert (math.isnan(expected) and math.isnan(sums.block_se(BLOCKS))) or math.isclose(
            sums.block_se(BLOCKS), expected, rel_tol=1e-9)


def _cells(m: EvidenceMatrix) -> dict[tuple[str, str], tuple[float, bool]]:
    labels = m.window_labels
    return {(labels[w], m.set_keys[int(m.cell_set[c])]): (round(float(m.cell_sharpe[c]), 12), bool(m.cell_eligible[c]))
            for w in range(m.n_windows) for c in range(int(m.ptr[w]), int(m.ptr[w + 1]))}


@pytest.mark.parametrize("scope", [None, Scope.of("spy", "1d")])
def test_an_appended_evidence_matrix_equals_one_built_from_all_rows(scope: Scope | None) -> None:
    rows = _evidence_rows(5)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))
    first, later = [rows[i] for i in order[:400]], [rows[i] for i in order[400:]]
    appended = build_matrix(first, 1, scope)
    for part in np.array_split(np.arange(len(later)), 3):
        appended = extend_matrix(appended, [later[i] for i in part], appended.revision + 1, scope)
    fresh = build_matrix(rows, 4, scope)
    assert appended.revision == 4 and _cells(appended) == _cells(fresh)
    assert np.allclose(appended.scaling.center, fresh.scaling.center)
    assert np.allclose(appended.scaling.scale, fresh.scaling.scale)
    a, b = walk_forward(appended, TUNINGS), walk_forward(fresh, TUNINGS)
    assert [appended.window_labels[o.window] for o in a] == [fresh.window_labels[o.window] for o in b]
    assert [[appended.set_keys[c] for c in o.chosen] for o in a] == [[fresh.set_keys[c] for c in o.chosen] for o in b]


def _trial_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    tags = [["uptrend"], ["downtrend", "high_vol"], [], ["range", "low_vol"]]
    return [{"id": uuid.uuid4(), "source_run_id": uuid.uuid4(), "symbol": ["SPY", "QQQ"][i % 2], "timeframe": "1d",
             "regime_features": None if i % 17 == 0 else rng.normal(size=10).tolist(),
             "regime_tags": tags[i % 4], "sharpe": float(rng.normal(1, 1)), "return_frac": 0.1,
             "max_dd_frac": float(rng.uniform(0, 0.4)), "n_trades": int(rng.integers(1, 90)),
             "kb_status": "promoted" if i % 5 == 0 else "candidate", "params": f'{{"k": {i}}}'} for i in range(n)]


def test_an_appended_trial_matrix_ranks_as_one_built_from_all_rows() -> None:
    rows = _trial_rows(500, 3)
    first = build_trial_matrix(rows[:300], 1)
    first.by_tag_set()  # orders that exist are carried into the appended matrix by insertion
    appended = first.extend(rows[300:450], 2).extend(rows[450:], 3)
    again = first.extend(rows[300:320], 2)  # a second append from one matrix copies its rows
    fresh = build_trial_matrix(rows, 3)
    assert [g.tolist() for g in appended.by_tag_set()[0]] == [g.tolist() for g in fresh.by_tag_set()[0]]
    assert np.array_equal(appended.by_tag_set()[1], fresh.by_tag_set()[1])
    assert np.array_equal(appended.scaling.center, fresh.scaling.center)
    assert np.array_equal(appended.scaling.scale, fresh.scaling.scale)
    assert [again.trial_id(i) for i in range(320)] == [r["id"] for r in rows[:320]]
    assert [first.trial_id(i) for i in range(300)] == [r["id"] for r in rows[:300]]
    assert len(appended) == len(fresh) == 500 and appended.revision == 3
    assert [appended.trial_id(i) for i in range(500)] == [r["id"] for r in rows]
    assert np.array_equal(appended.scaled, fresh.scaled, equal_nan=True)
    assert np.array_equal(appended.tag_bits(np.arange(500)), fresh.tag_bits(np.arange(500)))
    assert [appended.tags(i) for i in range(500)] == [frozenset(r["regime_tags"]) for r in rows]
    assert appended.nbytes() < 500 * 400  # compact: a few hundred bytes per trial, spare rows included


def test_an_empty_matrix_appends() -> None:
    rows = _evidence_rows(6, windows=30)
    m = extend_matrix(build_matrix([], 0), rows, 1)
    assert _cells(m) == _cells(build_matrix(rows, 1))
    assert math.isfinite(float(m.scaling.scale.sum())) and UNKNOWN_NS not in m.start_ns
    assert m.n_windows >= MIN_PRIOR_WINDOWS and isinstance(Tuning(), Tuning)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_query_scored_from_its_near_windows_ranks_as_scoring_every_set(seed: int) -> None:
    m = build_matrix(_evidence_rows(seed, grid=12, random_sets=400), 1)
    rng = np.random.default_rng(seed)
    for tuning in (TUNINGS[0], TUNINGS[7], TUNINGS[11]):
        g = global_stats(m, *sums_of(m, np.arange(m.n_windows)), tuning.haircut)
        for _ in range(5):
            qvec = m.scaled_features[int(rng.integers(m.n_windows))] + rng.normal(0, 0.3, m.scaled_features.shape[1])
            sparse = score_query(m, qvec, frozenset(), tuning)
            d = distances(m, None, qvec, frozenset())
            near = nearest(d, tuning.k)
            dense = local_scores(m, near, d[near], g, tuning)
            finite = np.flatnonzero(np.isfinite(dense.score))
            order = finite[np.argsort(-dense.score[finite], kind="stable")]
            assert sparse.ranked(6) == [int(s) for s in order[:6]]
            assert sparse.global_best() == int(np.argmax(dense.global_score))
            for s in [*order[:6].tolist(), *rng.integers(0, m.n_sets, 10).tolist()]:
                assert sparse.estimate_of(int(s)) == pytest.approx(float(dense.estimate[s]), nan_ok=True)
                assert sparse.local_n_of(int(s)) == pytest.approx(float(dense.local_n[s]))


@pytest.mark.parametrize("min_sharpe", [None, 1.2])
def test_a_tags_query_takes_the_top_trials_as_scoring_every_trial(min_sharpe: float | None) -> None:
    m = build_trial_matrix(_trial_rows(3000, 7), 1)
    for tags in (("uptrend",), ("downtrend", "high_vol"), ("range", "unknown_tag"), ()):
        query = RecommendQuery(uuid.uuid4(), "s", tags=tags, top_k=20, min_sharpe=min_sharpe)
        mask = _candidates(m, query)
        idx = np.flatnonzero(mask)
        score = (W_TAGS + W_FEATURES) * _tag_similarity(m, idx, frozenset(tags)) + W_QUALITY * m.quality[idx]
        score = score + 1e-9 * m.columns.promoted[idx]
        expected = sorted(score.tolist(), reverse=True)[:20]
        top, _, got = _top_by_tags(m, mask, frozenset(tags), 20)
        assert got.tolist() == pytest.approx(expected) and mask[top].all() and len(set(top.tolist())) == 20


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 17, 1000, 4097])
def test_the_robust_scale_of_sorted_columns_is_numpys_percentile_to_the_bit(n: int) -> None:
    rng = np.random.default_rng(n)
    for values in (rng.normal(size=(n, 10)) * rng.choice([1e-3, 1.0, 100.0], size=10),
                   np.round(rng.normal(size=(n, 10)), 1)):  # ties
        x = values.astype(np.float32)
        fitted = RobustScale.fit(x)
        kept = RobustScale.of_sorted([np.sort(x[:, j]) for j in range(10)])
        assert np.array_equal(fitted.center, kept.center) and np.array_equal(fitted.scale, kept.scale)
    nothing = [np.zeros(0, np.float32)] * 10
    assert np.array_equal(RobustScale.of_sorted(nothing).scale, RobustScale.fit(np.zeros((0, 10))).scale)


# Matrices taken from rows chunk by chunk (as a cache load reads them from a cursor), and
# appends that run beside each other or fail half-way.

def _chunks(rows: list, size: int) -> list[list]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def test_a_trial_matrix_taken_in_chunks_is_the_one_built_at_once() -> None:
    rows = _trial_rows(700, 5)
    builder = TrialBuilder()
    for chunk in _chunks(rows, 64):
        builder.take(chunk)
    chunked, whole = builder.finish(1), build_trial_matrix(rows, 1)
    assert [chunked.trial_id(i) for i in range(700)] == [whole.trial_id(i) for i in range(700)]
    assert np.array_equal(chunked.scaled, whole.scaled, equal_nan=True)
    assert np.array_equal(chunked.quality, whole.quality)
    assert [g.tolist() for g in chunked.by_tag_set()[0]] == [g.tolist() for g in whole.by_tag_set()[0]]
    appended = TrialBuilder(build_trial_matrix(rows[:300], 1))
    for chunk in _chunks(rows[300:], 50):
        appended.take(chunk)
    assert np.array_equal(appended.finish(2).scaled, whole.scaled, equal_nan=True)


def test_an_evidence_matrix_taken_in_chunks_is_the_one_built_at_once() -> None:
    rows = _evidence_rows(7)
    builder = EvidenceBuilder()
    for chunk in _chunks(rows, 37):
        builder.take(chunk)
    assert _cells(builder.finish(1)) == _cells(build_matrix(rows, 1))
    base = build_matrix(rows[:500], 1)
    appending = EvidenceBuilder(base)
    for chunk in _chunks(rows[500:], 41):
        appending.take(chunk)
    assert _cells(appending.finish(2)) == _cells(build_matrix(rows, 2))


def test_two_appends_to_one_matrix_at_once_and_a_failed_one_leave_every_matrix_right() -> None:
    rows = _evidence_rows(8, windows=120)
    base = build_matrix(rows[:400], 1)
    first = EvidenceBuilder(base).take(rows[400:700])  # still taking rows when the second starts
    second = EvidenceBuilder(base).take(rows[400:900])
    assert second.index is not base.index  # the index was busy: the second works on a copy
    assert _cells(second.finish(3)) == _cells(build_matrix(rows[:900], 3))
    assert _cells(first.finish(2)) == _cells(build_matrix(rows[:700], 2))
    EvidenceBuilder(base).take(rows[700:])  # a load that failed after taking rows: never finished
    assert _cells(extend_matrix(base, rows[400:], 4)) == _cells(build_matrix(rows, 4))
    fresh = build_matrix(rows[:400], 1)
    failed = EvidenceBuilder(fresh).take(rows[400:800])  # took the index itself, then failed
    assert failed.index is fresh.index
    assert _cells(extend_matrix(fresh, rows[400:], 4)) == _cells(build_matrix(rows, 4))
    assert _cells(extend_matrix(fresh, rows[400:600], 2)) == _cells(build_matrix(rows[:600], 2))


def _add_one_cell_at_a_time(h: History, sets: np.ndarray, values: np.ndarray, eligible: np.ndarray) -> None:
    """The running figures as first written: one cell at a time, each from numpy scalars."""
    for s, v, e in zip(sets.tolist(), values.tolist(), eligible.tolist(), strict=True):
        was = h.n[s]
        if was > 1:
            h.var_sum -= float(h.squares[s] / h.n[s] - (h.total[s] / h.n[s]) ** 2)
        if h.eligible[s]:
            h.mean_sum -= h.mean(s)
        h.n[s] = was + 1
        h.total[s] += v
        h.squares[s] += v * v
        if was >= 1:
            h.var_sum += float(h.squares[s] / h.n[s] - (h.total[s] / h.n[s]) ** 2)
            h.var_count += int(was == 1)
        if e and not h.eligible[s]:
            h.eligible[s] = True
            h.candidates += 1
        if h.eligible[s]:
            mean = h.mean(s)
            h.mean_sum += mean
            heapq.heappush(h.by_n.setdefault(int(was + 1), []), (-mean, s))
            heapq.heappush(h.by_mean, (-mean, s, int(was + 1)))


@pytest.mark.parametrize("seed", [0, 1])
def test_history_added_as_arrays_equals_one_cell_at_a_time_to_the_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    fast, slow = History(400, 0.5), History(400, 0.5)
    for _ in range(1500):
        sets = np.sort(rng.choice(400, size=int(rng.integers(0, 30)), replace=False)).astype(np.int64)
        values = rng.standard_normal(len(sets)) * 0.3 + 2.0
        eligible = rng.random(len(sets)) < 0.7
        fast.add(sets, values, eligible)
        _add_one_cell_at_a_time(slow, sets, values, eligible)
        assert (fast.var_sum, fast.mean_sum, fast.var_count, fast.candidates) == \
            (slow.var_sum, slow.mean_sum, slow.var_count, slow.candidates)
    assert fast.by_n == slow.by_n and fast.by_mean == slow.by_mean
    assert np.array_equal(fast.total, slow.total) and np.array_equal(fast.squares, slow.squares)
