from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.services.kb.candidacy import CandidacyConfig, VariantMetricsForCandidacy, is_candidate
from app.services.kb.runs.summary import extract_metrics


def m(trades: int = 20, dd: float | None = 0.1, sharpe: float | None = 1.0, gap: float | None = None):
    return VariantMetricsForCandidacy(n_trades_oos=trades, max_dd_frac_oos=dd, sharpe_oos=sharpe, overfit_gap=gap)


@pytest.mark.parametrize(
    ("metrics", "regime", "exp", "reason"),
    [
        (m(), object(), "sweep", "passed_all_gates"),
        (m(), object(), "legacy_grid", "unknown_experiment_type"),
        (m(), object(), None, "unknown_experiment_type"),
        (m(), object(), "manual", "manual_experiment_excluded"),
        (m(), None, "sweep", "missing_regime_oos"),
        (m(trades=4), object(), "tune", "insufficient_oos_trades"),
        (m(dd=0.26), object(), "ablation", "dd_too_high"),
        (m(gap=0.31), object(), "sweep", "overfit_too_high"),
        (m(sharpe=0.09), object(), "sweep", "sharpe_too_low"),
        (m(sharpe=None, dd=None), object(), "sweep", "passed_all_gates"),
        (m(sharpe=math.nan), object(), "sweep", "invalid_metrics"),
        (m(dd=math.inf), object(), "sweep", "invalid_metrics"),
        # first failure wins: manual beats low trades and missing regime
        (m(trades=0), None, "manual", "manual_experiment_excluded"),
        (m(trades=0, dd=0.9), None, "sweep", "missing_regime_oos"),
    ],
)
def test_gate_order_and_reasons(metrics, regime, exp, reason) -> None:
    decision = is_candidate(metrics, regime, exp, CandidacyConfig())
    assert decision.reason == reason
    assert decision.eligible == (reason == "passed_all_gates")


def test_boundaries_are_inclusive() -> None:
    cfg = CandidacyConfig(require_regime=False)
    assert is_candidate(m(trades=5, dd=0.25, sharpe=0.1), None, "sweep", cfg).eligible
    assert is_candidate(m(gap=0.30), None, "sweep", cfg).eligible


def test_regime_not_required_when_relaxed() -> None:
    assert is_candidate(m(), None, "sweep", CandidacyConfig(require_regime=False)).eligible


@pytest.mark.parametrize(
    ("summary", "trade_count", "expected"),
    [
        ({"trades": 12, "sharpe": 1.1, "max_drawdown_pct": -20}, None, (12, 0.2, 1.1)),
        ({"trade_count": 7, "sharpe": "0.5", "max_drawdown_pct": "15"}, None, (7, 0.15, 0.5)),
        ({"trades": 3}, 30, (30, None, None)),
        ('{"trades": 9, "sharpe": 2.0}', None, (9, None, 2.0)),
        ('"{\\"trades\\": 9, \\"sharpe\\": 2.0}"', None, (9, None, 2.0)),
        ({}, None, (0, None, None)),
        ({"trades": 8.0, "sharpe": None}, None, (8, None, None)),
    ],
)
def test_extract_metrics(summary, trade_count, expected) -> None:
    extracted = extract_metrics(summary, trade_count)
    assert extracted.reason is None
    got = extracted.metrics
    assert (got.n_trades_oos, got.max_dd_frac_oos, got.sharpe_oos) == expected


@pytest.mark.parametrize(
    ("summary", "reason"),
    [
        (None, "invalid_summary"),
        ("not json", "invalid_summary"),
        ("[1, 2]", "invalid_summary"),
        ('"just a string"', "invalid_summary"),
        (42, "invalid_summary"),
        ({"sharpe": "NaN"}, "invalid_metrics"),
        ({"sharpe": "Infinity"}, "invalid_metrics"),
        ({"sharpe": "high"}, "invalid_metrics"),
        ({"trades": -1}, "invalid_metrics"),
        ({"trades": 2.5}, "invalid_metrics"),
        ({"trades": True}, "invalid_metrics"),
        ({"max_drawdown_pct": {"a": 1}}, "invalid_metrics"),
        ('{"sharpe": NaN, "trades": 9}', "invalid_metrics"),
        ({"sharpe": 1e309}, "invalid_metrics"),
    ],
)
def test_extract_metrics_rejects_messy_summaries(summary, reason) -> None:
    assert extract_metrics(summary).reason == reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@given(
    summary=json_values | st.dictionaries(
        st.sampled_from(["trades", "trade_count", "sharpe", "max_drawdown_pct", "return_pct"]), json_values
    ) | st.text(max_size=200),
    trade_count=st.none() | st.integers(min_value=0, max_value=10**6),
)
def test_extract_then_gate_never_raises(summary, trade_count) -> None:
    extracted = extract_metrics(summary, trade_count)
    if extracted.metrics is not None:
        decision = is_candidate(extracted.metrics, None, "sweep", CandidacyConfig(require_regime=False))
        assert decision.reason
        if decision.eligible:
            assert all(v is None or math.isfinite(v)
                       for v in (extracted.metrics.sharpe_oos, extracted.metrics.max_dd_frac_oos))
    else:
        assert extracted.reason in ("invalid_summary", "invalid_metrics")
