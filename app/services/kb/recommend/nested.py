"""The honest replay: everything recommend tunes is chosen at each decision only from
decisions whose windows ended before it, and what it promises is learnt the same way.

At each decision (the start of a window with enough earlier windows):
1. the tuning (k, shrink) is the one with the best mean uplift over the global best on
   the earlier decisions (the default tuning until MIN_TUNE_DECISIONS of them exist);
2. the regime-conditioned choice of that tuning is used only if, over the earlier
   decisions, it beat the global best by more than one standard error of its uplift
   (`uplift > se`); otherwise the answer is the global best. With fewer than
   MIN_RULE_DECISIONS earlier decisions the regime choice is used unchecked;
3. the raw expected Sharpe of the answer is calibrated by a line fitted on the earlier
   answers' (expected, realised) pairs, slope clipped to [0, 1] (empirical-Bayes
   shrinkage toward their mean realised Sharpe: the winner's curse is paid back); with
   fewer than MIN_CALIBRATION earlier answers the promise is the no-skill prior (the
   mean Sharpe of the sets that may be recommended) moved toward those answers' mean;
4. the 80% interval is split-conformal: order statistics of the earlier answers'
   realised-minus-calibrated residuals at the levels a/2 and 1 - a/2 (the finite-sample
   ranks, so few residuals give a wider interval, not a narrower one). `a` starts at 0.2
   and adapts to the misses so far (adaptive conformal inference, Gibbs and Candes 2021):
   a = 0.2 + GAMMA * (0.2 * answers - misses), so when the realised Sharpe left earlier
   intervals more often than one time in five, later intervals widen until the long-run
   share of misses is one in five again (`a` is kept within [0, 0.5]: at 0 the band spans
   every earlier residual, so a realised Sharpe beyond all of them still misses); `confidence`
   is the share of those residuals that would leave the answer's Sharpe above zero, i.e.
   P(realised Sharpe > 0).
`Model.now()` applies the same rules to every decision so far: what recommend answers with.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import orjson
from sortedcontainers import SortedList

from app.services.kb.recommend.ranked import RankedSums, block_edges, se_of_block_means
from app.services.kb.recommend.walkforward import Outcome, Tuning

MIN_TUNE_DECISIONS = 5
MIN_RULE_DECISIONS = 10
MIN_CALIBRATION = 10
COVERAGE = 0.8
Z_COVERAGE = 1.2816  # the normal quantile of 90%: an 80% two-sided interval before residuals exist
BLOCKS = 10
METHOD = 2  # of the replay's rules: a stored check of another method is computed again
# Values in ascending order: a sorted array, or the replay's sorted list as it grows.
Ordered = Sequence[float] | np.ndarray
GAMMA = 0.01  # step of the adaptive miss rate; fixed beforehand, never fitted to the decisions scored


def block_se(diff: np.ndarray, blocks: int = BLOCKS) -> float:
    """Standard error of the mean of a serially dependent series (overlapping windows):
    the spread of the means of `blocks` consecutive blocks."""
    edges = block_edges(len(diff), blocks)
    return se_of_block_means([float(diff[a:b].mean()) for a, b in itertools.pairwise(edges)])


@dataclass(frozen=True)
class Promise:
    """What an answer promises: calibrated expected Sharpe, 80% interval, P(Sharpe > 0)."""

    expected: float
    low: float
    high: float
    confidence: float


@dataclass(frozen=True)
class Past:
    """What the earlier answers show, as a promise reads it: their count, the means of
    their raw and realised Sharpe, the (population) variance of raw and its covariance
    with realised, their realised-minus-calibrated residuals in ascending order, and how
    many missed their interval (None: aim at the nominal miss rate)."""

    n: int
    mean_raw: float
    mean_realised: float
    var_raw: float
    cov: float
    residuals: Ordered
    missed: int | None

    @classmethod
    def none(cls, missed: int | None = None) -> Past:
        """No earlier answers."""
        return cls(0, math.nan, math.nan, 0.0, 0.0, (), missed)

    @classmethod
    def of(cls, raws: np.ndarray, reals: np.ndarray, cals: np.ndarray, missed: int | None = None) -> Past:
        n = len(raws)
        if n == 0:
            return cls.none(missed)
        mx, my = float(raws.mean()), float(reals.mean())
        return cls(n, mx, my, float(((raws - mx) ** 2).mean()), float(((raws - mx) * (reals - my)).mean()),
                   np.sort(reals - cals), missed)


def promise_of(raw: float, past: Past, fallback_sd: float, prior: float) -> Promise:
    """The promise for an answer whose method expects `raw`, from earlier answers only.
    `prior` is the no-skill expectation: the mean all-history Sharpe of the sets that may
    be recommended. Until MIN_CALIBRATION earlier answers show how raw estimates relate to
    what was realised, the promise is that prior moved toward the earlier answers' mean."""
    n = past.n
    base = prior if np.isfinite(prior) else 0.0
    if n >= MIN_CALIBRATION and np.isfinite(raw):
        slope = past.cov / past.var_raw if past.var_raw > 1e-12 else 0.0
        expected = past.mean_realised + min(max(slope, 0.0), 1.0) * (raw - past.mean_raw)
    elif n >= 1:
        w = n / (n + MIN_CALIBRATION)
        expected = (1 - w) * base + w * past.mean_realised
    else:
        expected = base
    if n >= MIN_CALIBRATION:
        rate = 1 - COVERAGE if past.missed is None else adaptive_miss_rate(n, past.missed)
        lo_r, hi_r = band_of_sorted(past.residuals, rate)
        above = n - _at_most(past.residuals, -expected)
        confidence = (above + 1) / (n + 2)
        return Promise(expected, expected + lo_r, expected + hi_r, confidence)
    sd = max(fallback_sd, 1e-6)
    confidence = 0.5 * (1.0 + math.erf(expected / sd / math.sqrt(2.0)))
    return Promise(expected, expected - Z_COVERAGE * sd, expected + Z_COVERAGE * sd, confidence)


def adaptive_miss_rate(answers: int, misses: int) -> float:
    """The miss rate the next interval aims at: the nominal one, moved by GAMMA per earlier
    answer toward making the long-run share of misses nominal; within [0, 0.5] (at 0 the
    interval spans every earlier residual, at 0.5 their middle half)."""
    return min(max(1 - COVERAGE + GAMMA * ((1 - COVERAGE) * answers - misses), 0.0), 0.5)


def _at_most(ordered: Ordered, value: float) -> int:
    """How many of the ascending `ordered` are at most `value`."""
    if isinstance(ordered, SortedList):
        return int(ordered.bisect_right(value))
    return int(np.searchsorted(np.asarray(ordered), value, side="right"))


def band_of_sorted(ordered: Ordered, miss_rate: float) -> tuple[float, float]:
    """The ascending residuals' order statistics of finite-sample ranks floor(a/2 (n+1))
    and ceil((1 - a/2)(n+1)), clipped to the smallest and largest residual."""
    n = len(ordered)
    # Exact ranks: 0.2 is not exact in binary, and floor(0.1 * 50) must be 5, not 4.
    lo = min(max(math.floor(miss_rate / 2 * (n + 1) + 1e-9), 1), n)
    hi = min(max(math.ceil((1 - miss_rate / 2) * (n + 1) - 1e-9), 1), n)
    return float(ordered[lo - 1]), float(ordered[hi - 1])


@dataclass(frozen=True)
class Decision:
    window: int
    tuning: int  # index into the tunings tried
    conditioned: bool
    chosen: int
    global_best: int
    raw_expected: float
    expected: float
    low: float
    high: float
    confidence: float
    realised: float
    realised_global: float
    realised_median: float
    realised_random: float
    realised_oracle: float
    realised_regime: float  # the regime-conditioned choice's realised Sharpe, used or not


@dataclass(frozen=True)
class Model:
    """The rules as of now (from every decision so far): recommend's tuning, whether it
    conditions on the regime, its uplift and SE, and the data its promises come from."""

    tunings: tuple[Tuning, ...]
    decisions: tuple[Decision, ...]
    tuning: Tuning
    conditioned: bool
    uplift: float  # regime-conditioned choice over the global best, over every decision
    uplift_se: float
    fallback_sd: float
    prior: float = 0.0  # the no-skill expectation now (see `promise_of`)

    @property
    def checked(self) -> bool:
        """Whether the regime-vs-global-best rule had enough decisions to decide."""
        return len(self.decisions) >= MIN_RULE_DECISIONS

    def to_json(self) -> str:
        """The model as JSON (NaN as null), to store per KB revision."""
        return orjson.dumps({
            "method": METHOD,
            "tunings": [[tu.k, tu.shrink, tu.haircut] for tu in self.tunings],
            "decisions": [[None if isinstance(v, float) and not math.isfinite(v) else v for v in astuple(d)]
                          for d in self.decisions],
            "tuning": [self.tuning.k, self.tuning.shrink, self.tuning.haircut], "conditioned": self.conditioned,
            "uplift": _finite_or_none(self.uplift), "uplift_se": _finite_or_none(self.uplift_se),
            "fallback_sd": self.fallback_sd, "prior": _finite_or_none(self.prior)}).decode()

    @staticmethod
    def current(text: str) -> bool:
        """Whether a stored model was made by this version's rules."""
        return bool(orjson.loads(text).get("method") == METHOD)

    @classmethod
    def from_json(cls, text: str) -> Model:
        data = orjson.loads(text)
        nan = math.nan
        return cls(tuple(Tuning(k, s, h) for k, s, h in data["tunings"]),
                   tuple(_decision(d) for d in data["decisions"]),
                   Tuning(*data["tuning"]), bool(data["conditioned"]),
                   nan if data["uplift"] is None else data["uplift"],
                   nan if data["uplift_se"] is None else data["uplift_se"], data["fallback_sd"],
                   0.0 if data.get("prior") is None else data["prior"])

    @cached_property
    def _past(self) -> Past:
        """What every decision so far shows, built once: each answer asks for several
        promises (the answer, its runner-ups, the global best)."""
        ds = self.decisions
        return Past.of(np.array([d.raw_expected for d in ds]), np.array([d.realised for d in ds]),
                       np.array([d.expected for d in ds]), sum(not (d.low <= d.realised <= d.high) for d in ds))

    def promise(self, raw: float) -> Promise:
        return promise_of(raw, self._past, self.fallback_sd, self.prior)


def _decision(values: list[Any]) -> Decision:
    filled: list[Any] = [math.nan if v is None else v for v in values]
    return Decision(*filled)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _best_tuning(gains: np.ndarray, counts: np.ndarray) -> int:
    """Index of the tuning with the best mean earlier uplift (-1: not enough history)."""
    if counts.min() < MIN_TUNE_DECISIONS:
        return -1
    return int(np.argmax(gains / counts))


def _rule(diffs: np.ndarray) -> tuple[bool, float, float]:
    """Condition on the regime only when its uplift beats one standard error (see `_verdict`)."""
    if len(diffs) < MIN_RULE_DECISIONS:
        return True, float(diffs.mean()) if len(diffs) else math.nan, math.nan
    mean, se = float(diffs.mean()), block_se(diffs)
    return _verdict(len(diffs), mean, se), mean, se


def _verdict(n: int, mean: float, se: float) -> bool:
    """Whether to condition on the regime: when its mean uplift over n earlier decisions
    beats one standard error. Before MIN_RULE_DECISIONS decisions exist there is nothing
    to check: the regime choice is used, unchecked (and said so)."""
    return n < MIN_RULE_DECISIONS or bool(math.isfinite(se) and mean > se)


class Ended:
    """The decisions whose windows have ended so far, kept as they end (windows end in
    another order than they start): what the rule and the promise of a later decision
    read, each updated per decision that ends instead of recomputed from all of them.
    Sums in decision order come from a Fenwick tree, the co-moments of raw and realised
    Sharpe from Welford's updates, the residuals from a sorted list."""

    def __init__(self, size: int) -> None:
        self.diffs = RankedSums(size)  # regime-conditioned uplift over the global best
        self.mean_raw = self.mean_realised = self.m2_raw = self.co_moment = 0.0
        self.residuals = SortedList()
        self.missed = 0
        self._rule: tuple[int, bool] = (-1, True)

    def add(self, decision: int, diff: float, raw: float, realised: float, calibrated: float, missed: bool) -> None:
        self.diffs.place(decision, diff)
        n = self.diffs.placed
        dx = raw - self.mean_raw
        self.mean_raw += dx / n
        self.mean_realised += (realised - self.mean_realised) / n
        self.m2_raw += dx * (raw - self.mean_raw)
        self.co_moment += dx * (realised - self.mean_realised)
        self.residuals.add(realised - calibrated)
        self.missed += int(missed)

    def conditioned(self) -> bool:
        """`_rule` over the ended decisions' uplifts, in decision order."""
        n = self.diffs.placed
        if self._rule[0] != n:
            se = self.diffs.block_se(BLOCKS) if n >= MIN_RULE_DECISIONS else math.nan
            self._rule = (n, _verdict(n, self.diffs.total / n if n else math.nan, se))
        return self._rule[1]

    def past(self) -> Past:
        n = self.diffs.placed
        if n == 0:
            return Past.none(0)
        return Past(n, self.mean_raw, self.mean_realised, self.m2_raw / n, self.co_moment / n, self.residuals,
                    self.missed)


def replay(outcomes: list[Outcome], tunings: tuple[Tuning, ...], default: int, end_ns: np.ndarray,
           start_ns: np.ndarray, fallback_sd: float, prior_now: float = 0.0) -> Model:
    """Decisions in time order, each from earlier decisions only (those whose window ended
    before its start), and the model as of now. Each decision costs the logarithm of the
    decisions before it, not their number."""
    n_t, size = len(tunings), len(outcomes)
    made: list[Decision] = []
    pending: list[tuple[int, int]] = []  # (window end, decision) not yet ended
    ended = Ended(size)
    gain_rows, ok_rows = np.zeros((size, n_t)), np.zeros((size, n_t), dtype=bool)
    gains, counts = np.zeros(n_t), np.zeros(n_t)  # over the decisions ended so far
    for o in outcomes:
        while pending and pending[0][0] < start_ns[o.window]:
            i = heapq.heappop(pending)[1]
            d = made[i]
            ended.add(i, d.realised_regime - d.realised_global, d.raw_expected, d.realised, d.expected,
                      not d.low <= d.realised <= d.high)
            gains += gain_rows[i] * ok_rows[i]
            counts += ok_rows[i]
        t = _best_tuning(gains, counts) if made else -1
        t = default if t < 0 or not o.ok[t] else t
        if not o.ok[t]:
            continue
        n = len(made)
        conditioned = ended.conditioned()
        chosen = int(o.chosen[t]) if conditioned else o.global_best
        raw = float(o.estimate[t]) if conditioned else o.global_mean
        promise = promise_of(raw, ended.past(), fallback_sd, o.prior)
        realised = float(o.realised[t]) if conditioned else o.realised_global
        made.append(Decision(o.window, t, conditioned, chosen, o.global_best, raw, promise.expected, promise.low,
                             promise.high, promise.confidence, realised, o.realised_global,
                             o.realised_median, o.realised_random, o.realised_oracle, float(o.realised[t])))
        gain_rows[n], ok_rows[n] = np.where(o.ok, o.realised - o.realised_global, 0.0), o.ok
        heapq.heappush(pending, (int(end_ns[o.window]), n))
    n = len(made)
    return _now(tunings, default, tuple(made), gain_rows[:n], ok_rows[:n], fallback_sd, prior_now)


def _now(tunings: tuple[Tuning, ...], default: int, made: tuple[Decision, ...], gains_hist: np.ndarray,
         ok_hist: np.ndarray, fallback_sd: float, prior: float) -> Model:
    t = _best_tuning((gains_hist * ok_hist).sum(axis=0), ok_hist.sum(axis=0)) if made else -1
    t = default if t < 0 else t
    conditioned, uplift, se = _rule(np.array([d.realised_regime - d.realised_global for d in made]))
    return Model(tunings, made, tunings[t], conditioned, uplift, se, fallback_sd, prior)
