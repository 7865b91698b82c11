"""The analytical core on small hand-built inputs, no database: the evidence matrix, the
scaling, the walk-forward outcomes, the nested rules and the calibrated promise."""

from __future__ import annotations

import uuid
from dataclasses import astuple
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from app.services.kb.importing.fields import resolve_mapping
from app.services.kb.importing.rows import prepare
from app.services.kb.recommend.decisions import walk_forward
from app.services.kb.recommend.evidence import build_matrix
from app.services.kb.recommend.nested import (
    MIN_CALIBRATION,
    Model,
    adaptive_miss_rate,
    replay,
)
from app.services.kb.recommend.query import Scope
from app.services.kb.recommend.scaling import MIN_SCALE, RobustScale
from app.services.kb.recommend.walkforward import DEFAULT_TUNING, TUNINGS, Outcome, Tuning
from tests.factories import calibrate, conformal_band

T0 = datetime(2024, 1, 1, tzinfo=UTC)
UP = [0.01, 60.0, 0.04, 0.01, 0.1, 1.0, 0.9, 1.0, 0.8, 0.05]
DOWN = [0.01, 40.0, 0.04, 0.01, 0.1, -1.0, 0.9, -1.0, 0.8, -0.05]


def _row(window: int, params: str, sharpe: float, features: list[float], symbol: str = "SPY",
         timeframe: str = "1d") -> dict:
    start = T0 + timedelta(days=10 * window)
    return {"source_run_id": uuid.uuid4(), "symbol": symbol, "timeframe": timeframe, "params": params,
            "sharpe": sharpe, "oos_start": start, "oos_end": start + timedelta(days=9), "pre_features": features,
            "oos_features": features, "pre_tags": ["uptrend" if features[5] > 0 else "downtrend"],
            "oos_tags": ["uptrend" if features[5] > 0 else "downtrend"], "eligible": True}


def _world(windows: int = 60) -> list[dict]:
    """Set A earns 1 in up windows and -1 in down ones, set B the reverse; the regime alternates."""
    rows = []
    for w in range(windows):
        up = (w // 3) % 2 == 0
        rows.append(_row(w, '{"set":"A"}', 1.0 if up else -1.0, UP if up else DOWN))
        rows.append(_row(w, '{"set":"B"}', -1.0 if up else 1.0, UP if up else DOWN))
    return rows


def test_evidence_matrix_groups_runs_by_window_and_set() -> None:
    rows = [_row(0, '{"a":1}', 1.0, UP), _row(0, '{"a":1}', 3.0, UP), _row(0, '{"a":2}', -1.0, UP),
            _row(1, '{"a":2}', 0.5, DOWN)]
    m = build_matrix(rows, revision=7)
    assert (m.revision, m.n_windows, m.n_sets) == (7, 2, 2)
    assert m.row(0).tolist() == [2.0, -1.0]  # repeated runs of a set in a window average
    assert np.isnan(m.row(1)[0]) and m.row(1)[1] == 0.5
    assert m.tested().tolist() == [2, 1]


def test_scope_keeps_one_instrument_and_bar_size_unless_pooled() -> None:
    rows = [_row(0, '{"a":1}', 1.0, UP), _row(0, '{"a":1}', 2.0, UP, symbol="QQQ"),
            _row(0, '{"a":1}', 3.0, UP, timeframe="1h")]
    assert build_matrix(rows, 1, Scope.of("spy", "1d")).row(0).tolist() == [1.0]
    pooled = build_matrix(rows, 1, Scope.of("spy", "1d", pool=True))  # each instrument's window, never the 1h run
    assert pooled.n_windows == 2 and sorted(pooled.cell_sharpe.tolist()) == [1.0, 2.0]
    before = Scope.of(None, None, as_of=T0 + timedelta(days=5))
    assert build_matrix(rows, 1, before).n_windows == 0  # the window ends after as_of


def test_robust_scale_floors_a_tight_cluster() -> None:
    same = np.array([UP, UP, UP])
    scale = RobustScale.fit(same)
    assert np.allclose(scale.center, UP) and np.allclose(scale.scale, MIN_SCALE)
    assert np.allclose(scale.apply(np.array(UP)), 0.0)
    assert RobustScale.fit(np.zeros((0, len(UP)))).scale.tolist() == MIN_SCALE.tolist()


def test_walk_forward_uses_only_windows_that_ended_before_each_decision() -> None:
    m = build_matrix(_world(), 1)
    outcomes = walk_forward(m, (Tuning(k=5, shrink=1.0),))
    # 20 earlier windows are needed: windows 0..19 end before window 20 starts.
    assert outcomes and outcomes[0].window == 20 and len(outcomes) == 40
    for o in outcomes:
        assert o.ok[0]
        up = (o.window // 3) % 2 == 0
        # The nearest earlier windows share the regime, so the regime choice is right every time.
        assert o.realised[0] == 1.0, (o.window, up)
    assert {round(o.realised_global, 6) for o in outcomes} <= {1.0, -1.0}


def _outcome(window: int, regime: float, glob: float, estimate: float = 1.0) -> Outcome:
    return Outcome(window, np.array([True]), np.array([0]), np.array([estimate]), np.array([regime]), 1, 0.0,
                   glob, 0.0, 0.0, max(regime, glob), 0.0)


def test_nested_rule_conditions_only_after_a_gain_beyond_one_se() -> None:
    ends = np.arange(40, dtype=np.int64) * 10 + 5
    starts = np.arange(40, dtype=np.int64) * 10
    # The regime choice beats the global best by 1 every time: after 10 decisions the rule keeps it.
    model = replay([_outcome(w, 1.0, 0.0) for w in range(40)], (TUNINGS[0],), 0, ends, starts, 1.0)
    assert model.conditioned and model.checked and all(d.conditioned for d in model.decisions)
    # No gain: conditioned (unchecked) for the first decisions, then the global best.
    flat = [_outcome(w, float(w % 2), float((w + 1) % 2)) for w in range(40)]
    model = replay(flat, (TUNINGS[0],), 0, ends, starts, 1.0)
    assert not model.conditioned
    assert [d.conditioned for d in model.decisions[:10]] == [True] * 10
    assert not any(d.conditioned for d in model.decisions[12:])


def test_calibration_pays_back_the_winners_curse() -> None:
    raw = np.full(50, 2.0) + np.linspace(-0.1, 0.1, 50)
    realised = np.full(50, 0.5)
    promise = calibrate(2.0, raw, realised, realised, 1.0, prior=0.0)
    assert promise.expected == pytest.approx(0.5)  # the slope is 0: expected is what such answers realised
    residuals = np.linspace(-1, 1, 50)
    promise = calibrate(0.0, np.zeros(50), residuals[::-1], np.zeros(50), 1.0, prior=0.0)
    # The finite-sample ranks of an 80% band over 50 residuals: the 5th and the 46th smallest.
    assert (promise.low, promise.high) == pytest.approx((residuals[4], residuals[45]))
    assert promise.confidence == pytest.approx((25 + 1) / 52)  # P(Sharpe > 0) from the residuals
    # No track record: the promise is the no-skill prior (what an average tested set realised),
    # whatever the raw estimate; one earlier answer moves it toward what answers realised.
    assert calibrate(3.0, np.zeros(0), np.zeros(0), np.zeros(0), 1.0, prior=0.5).expected == 0.5
    early = calibrate(3.0, np.array([3.0]), np.array([0.0]), np.array([0.5]), 1.0, prior=0.5)
    assert early.expected == pytest.approx(0.5 * 10 / 11)
    assert MIN_CALIBRATION == 10


def test_intervals_widen_after_misses_and_narrow_after_too_few() -> None:
    residuals = np.linspace(-1, 1, 50)
    assert adaptive_miss_rate(50, 10) == pytest.approx(0.2)  # one in five missed: nominal
    assert adaptive_miss_rate(50, 20) == pytest.approx(0.1)  # 0.2 + 0.01 * (10 - 20)
    assert adaptive_miss_rate(50, 0) == pytest.approx(0.3)
    assert adaptive_miss_rate(50, 50) == 0.0 and adaptive_miss_rate(1000, 0) == 0.5
    nominal = calibrate(0.0, np.zeros(50), residuals, np.zeros(50), 1.0, prior=0.0, past_missed=10)
    wide = calibrate(0.0, np.zeros(50), residuals, np.zeros(50), 1.0, prior=0.0, past_missed=20)
    narrow = calibrate(0.0, np.zeros(50), residuals, np.zeros(50), 1.0, prior=0.0, past_missed=0)
    assert narrow.high - narrow.low < nominal.high - nominal.low < wide.high - wide.low
    assert conformal_band(residuals, 0.0) == (-1.0, 1.0)  # every residual
    assert conformal_band(residuals[:10], 0.2) == (residuals[0], residuals[9])  # few: the widest, not narrower


def test_a_drifting_world_gets_the_coverage_it_was_promised() -> None:
    """Residuals whose spread doubles half-way: fixed split-conformal intervals keep the first
    half's width and miss more than one time in five; the adaptive ones end near one in five."""
    rng = np.random.default_rng(3)
    n = 600
    realised = rng.normal(0, 1, n) * np.where(np.arange(n) < n // 2, 1.0, 2.5)
    ends = np.arange(n, dtype=np.int64) * 10 + 5
    starts = np.arange(n, dtype=np.int64) * 10
    outcomes = [_outcome(w, float(realised[w]), float(realised[w])) for w in range(n)]
    model = replay(outcomes, (TUNINGS[0],), 0, ends, starts, 1.0)
    late = [d for d in model.decisions if d.window >= n // 2]
    covered = np.mean([d.low <= d.realised <= d.high for d in late])
    assert 0.74 <= covered <= 0.86, covered
    fixed = [calibrate(0.0, np.zeros(w), realised[:w], np.zeros(w), 1.0, prior=0.0) for w in range(n // 2, n)]
    fixed_cover = np.mean([f.low <= realised[w] <= f.high for f, w in zip(fixed, range(n // 2, n), strict=True)])
    assert fixed_cover < 0.74, fixed_cover


def test_the_model_promises_with_the_misses_of_its_decisions() -> None:
    ends = np.arange(60, dtype=np.int64) * 10 + 5
    starts = np.arange(60, dtype=np.int64) * 10
    rng = np.random.default_rng(5)
    model = replay([_outcome(w, float(rng.normal(0, 1 + w / 20)), 0.0) for w in range(60)], (TUNINGS[0],), 0,
                   ends, starts, 1.0)
    ds = model.decisions
    missed = sum(not d.low <= d.realised <= d.high for d in ds)
    args = (np.array([d.raw_expected for d in ds]), np.array([d.realised for d in ds]),
            np.array([d.expected for d in ds]), 1.0)
    assert model.promise(0.5) == calibrate(0.5, *args, prior=model.prior, past_missed=missed)
    assert model.promise(0.5) != calibrate(0.5, *args, prior=model.prior)  # the nominal rate would differ here


def test_model_promise_uses_every_decision() -> None:
    model = Model((Tuning(),), (), Tuning(), True, float("nan"), float("nan"), 2.0, prior=0.4)
    promise = model.promise(1.0)
    assert promise.expected == 0.4 and promise.low == pytest.approx(0.4 - 1.2816 * 2.0)
    assert len(TUNINGS) > DEFAULT_TUNING and TUNINGS[DEFAULT_TUNING] == Tuning(k=20, shrink=4.0)


def test_import_rows_check_in_sample_windows_and_keep_zero_trade_runs() -> None:
    frame = pd.DataFrame({
        "strategy_name": ["s", "s", "s"], "oos_start": ["2024-02-01"] * 3, "oos_end": ["2024-03-01"] * 3,
        "is_start": ["2023-01-01", "2024-01-01", None], "is_end": ["2023-12-31", "2023-01-01", None],
        "trades": [0, 5, 3], "sharpe": [None, 1.0, 0.5]})
    mapping = resolve_mapping(list(frame.columns), {}, {})
    prepared = prepare(frame, mapping)
    assert prepared.errors == [(2, "is_end is before is_start")]
    assert len(prepared.records) == 2
    assert prepared.notes == {"no trades and no Sharpe: kept, counted as evidence with Sharpe 0": 1}
    meta = prepared.records[0][7]
    assert '"is_start":"2023-01-01T00:00:00Z"' in meta and '"is_end":"2023-12-31T00:00:00Z"' in meta


def test_the_model_round_trips_through_its_stored_form() -> None:
    ends = np.arange(30, dtype=np.int64) * 10 + 5
    starts = np.arange(30, dtype=np.int64) * 10
    outcomes = [_outcome(w, 1.0 if w % 3 else -0.5, 0.0) for w in range(30)]
    model = replay(outcomes, (TUNINGS[0],), 0, ends, starts, 1.5)
    back = Model.from_json(model.to_json())
    assert back.tunings == model.tunings and back.tuning == model.tuning and back.conditioned == model.conditioned
    assert len(back.decisions) == len(model.decisions)
    for a, b in zip(back.decisions, model.decisions, strict=True):
        assert np.allclose(np.array(astuple(a), dtype=float), np.array(astuple(b), dtype=float), equal_nan=True)
    assert back.promise(0.7) == model.promise(0.7)


def test_no_decision_reads_its_own_window_or_a_later_eligibility() -> None:
    # Without an ex-ante snapshot, a window's features describe the window scored: no decision there.
    rows = _world(40)
    for r in rows:
        r["pre_features"] = None
    assert walk_forward(build_matrix(rows, 1), (Tuning(k=5, shrink=1.0),)) == []
    # Set C always earns most but reaches the KB only in the last window: no earlier decision may pick it.
    rows = _world(40)
    for w in range(40):
        up = (w // 3) % 2 == 0
        rows.append({**_row(w, '{"set":"C"}', 5.0, UP if up else DOWN), "eligible": w == 39})
    m = build_matrix(rows, 1)
    c = m.set_keys.index('{"set":"C"}')
    outcomes = walk_forward(m, (Tuning(k=5, shrink=1.0),))
    assert outcomes and all(o.global_best != c and o.chosen[0] != c for o in outcomes)


def test_windows_before_1970_count() -> None:
    rows = _world(40)
    for r in rows:
        for key in ("oos_start", "oos_end"):
            r[key] = r[key].replace(year=1960)
    assert len(walk_forward(build_matrix(rows, 1), (Tuning(k=5, shrink=1.0),))) >= 20  # as many as in 2024
