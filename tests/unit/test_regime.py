from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.services.kb.regime.features import compute_feature_batch, compute_regime_snapshot
from app.services.kb.regime.tags import tag_regime_batch
from app.services.kb.types import RegimeSnapshot, parse_regime_snapshot


def frame(close, high=None, low=None, start="2024-01-01") -> pd.DataFrame:
    close = np.asarray(close, dtype=float)
    high = close * 1.001 if high is None else np.asarray(high, dtype=float)
    low = close * 0.999 if low is None else np.asarray(low, dtype=float)
    ts = pd.date_range(start, periods=len(close), freq="h", tz="UTC")
    return pd.DataFrame({"timestamp": ts, "open": close, "high": high, "low": low, "close": close})


def reference(df: pd.DataFrame) -> dict[str, float]:
    """A straightforward pandas computation of the same features."""
    d = df.tail(200).reset_index(drop=True)
    c, h, lo = d["close"], d["high"], d["low"]
    prev = c.shift(1)
    tr = pd.concat([h - lo, (h - prev).abs(), (lo - prev).abs()], axis=1).max(axis=1)
    tr.iloc[0] = h.iloc[0] - lo.iloc[0]
    atr = tr.ewm(alpha=1 / 14, adjust=False).mean().iloc[-1]
    delta = c.diff().dropna()
    gain = delta.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean().iloc[-1]
    loss = (-delta).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean().iloc[-1]
    rsi = 100 - 100 / (1 + gain / loss) if loss > 0 else (100.0 if gain > 0 else 50.0)
    tail = c.tail(20)
    sma, std = tail.mean(), tail.std(ddof=0)
    y = c.tail(50).to_numpy()
    x = np.arange(len(y))
    slope, intercept = np.polyfit(x, y, 1)
    fitted = slope * x + intercept
    r2 = 1 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    p = min(50, len(c) // 2)
    er = abs(c.iloc[-1] - c.iloc[-1 - p]) / c.diff().abs().tail(p).sum()
    rel = slope / y.mean()
    return {
        "atr_pct": atr / c.iloc[-1],
        "rsi": rsi,
        "bb_width_pct": 4 * std / sma,
        "std_pct": std / c.iloc[-1],
        "range_pct": (h.max() - lo.min()) / c.iloc[-1],
        "zscore": (c.iloc[-1] - sma) / std,
        "trend_strength": r2,
        "trend_dir": 1.0 if rel > 0.001 else -1.0 if rel < -0.001 else 0.0,
        "efficiency_ratio": min(max(er, 0), 1),
        "return_pct": c.iloc[-1] / c.iloc[0] - 1,
    }


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [60, 200, 431])
def test_matches_reference_on_random_series(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    high = close * (1 + rng.uniform(0, 0.01, n))
    low = close * (1 - rng.uniform(0, 0.01, n))
    df = frame(close, high, low)
    snap = compute_regime_snapshot(df, source="test", timeframe="1h", instrument="X")
    for name, expected in reference(df).items():
        assert snap.features[name] == pytest.approx(expected, rel=1e-9, abs=1e-10), name


def test_batch_equals_single_windows() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    high, low = close * 1.01, close * 0.99
    starts = np.array([0, 100, 1500, 900, 1990 - 60])
    ends = np.array([400, 180, 1999, 1200, 1990])
    batch = compute_feature_batch(high, low, close, starts, ends)
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        single = compute_feature_batch(high, low, close, np.array([s]), np.array([e]))
        for name in batch.values:
            assert batch.values[name][i] == pytest.approx(single.values[name][0], abs=1e-12)


def test_hand_checkable_uptrend() -> None:
    close = np.linspace(100, 200, 200)  # a perfect straight line
    snap = compute_regime_snapshot(frame(close), timeframe="1h")
    assert snap.features["trend_strength"] == pytest.approx(1.0)
    assert snap.features["trend_dir"] == 1.0
    assert snap.features["efficiency_ratio"] == pytest.approx(1.0)
    assert snap.features["return_pct"] == pytest.approx(1.0)
    assert snap.features["rsi"] == pytest.approx(100.0)
    assert "uptrend" in snap.regime_tags and "efficient" in snap.regime_tags and "overbought" in snap.regime_tags
    ev = snap.tag_evidence["uptrend"][0]
    assert (ev.metric, ev.op, ev.threshold) == ("trend_strength", ">=", 0.6)
    assert ev.margin == pytest.approx(0.4)
    assert snap.effective_n_bars == 200 and snap.n_bars == 200
    assert snap.ts_end == "2024-01-09T07:00:00Z"


def test_downtrend_and_flat_tags() -> None:
    down = compute_regime_snapshot(frame(np.linspace(200, 100, 200)))
    assert "downtrend" in down.regime_tags and "oversold" in down.regime_tags
    flat = compute_regime_snapshot(frame(100 + np.sin(np.arange(200)) * 0.05))
    assert "flat" in flat.regime_tags and "choppy" in flat.regime_tags and "low_vol" in flat.regime_tags
    assert list(flat.regime_tags) == sorted(flat.regime_tags)


def test_degenerate_series_warn_and_stay_finite() -> None:
    const = compute_regime_snapshot(frame(np.full(120, 10.0), np.full(120, 10.0), np.full(120, 10.0)))
    assert "zero_atr" in const.warnings and "zero_variance" in const.warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short = compute_regime_snapshot(frame([1.0, 2.0, 3.0]))
    assert "insufficient_bars" in short.warnings and caught
    jump = np.full(100, 10.0)
    jump[50:] = 30.0
    assert "possible_bad_ticks" in compute_regime_snapshot(frame(jump)).warnings


def test_deterministic_and_json_round_trip() -> None:
    rng = np.random.default_rng(9)
    df = frame(100 + np.cumsum(rng.normal(0, 1, 300)) + 300)
    a = compute_regime_snapshot(df, source="x").to_dict()
    b = compute_regime_snapshot(df, source="x").to_dict()
    a.pop("computed_at"), b.pop("computed_at")
    assert a == b
    text = orjson.dumps(a).decode()
    back = parse_regime_snapshot(text)
    assert isinstance(back, RegimeSnapshot) and back.regime_tags == tuple(a["regime_tags"])
    assert parse_regime_snapshot(None) is None and parse_regime_snapshot("nope") is None
    assert parse_regime_snapshot(a).features["rsi"] == a["rsi"]


def test_no_look_ahead() -> None:
    """A window's snapshot does not change when later bars are appended."""
    rng = np.random.default_rng(5)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 600)))
    df = frame(close)
    early = compute_regime_snapshot(df.iloc[:300])
    full = compute_feature_batch(df["high"].to_numpy(), df["low"].to_numpy(), df["close"].to_numpy(),
                                 np.array([0]), np.array([299]))
    for name in early.features:
        if name in full.values:
            assert early.features[name] == pytest.approx(full.values[name][0])


prices = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(st.lists(prices, min_size=1, max_size=260), st.lists(st.floats(0, 0.5), min_size=1, max_size=260))
def test_never_raises_never_nan(closes, spreads) -> None:
    close = np.array(closes)
    spread = np.resize(np.array(spreads), len(close))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        snap = compute_regime_snapshot(frame(close, close * (1 + spread), close / (1 + spread)))
    data = snap.to_dict()
    text = orjson.dumps(data)
    assert b"NaN" not in text and b"Infinity" not in text
    for name, value in snap.features.items():
        assert value is not None and math.isfinite(value), name
    assert 0.0 <= snap.features["rsi"] <= 100.0
    assert 0.0 <= snap.features["trend_strength"] <= 1.0
    assert 0.0 <= snap.features["efficiency_ratio"] <= 1.0


def test_missing_values_rows_are_skipped() -> None:
    df = frame(np.linspace(10, 20, 120))
    df.loc[5, "close"] = np.nan
    snap = compute_regime_snapshot(df)
    assert snap.effective_n_bars == 119 and snap.n_bars == 120


def _ev(metric: str, value: float, op: str, threshold: float) -> dict[str, Any]:
    margin = value - threshold if op in (">", ">=") else threshold - value
    return {"metric": metric, "value": value, "op": op, "threshold": threshold, "margin": margin}


def tag_regime(f: dict[str, float]) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """The spec's tagging rules written out row by row: the oracle for `tag_regime_batch`."""
    evidence: dict[str, list[dict[str, Any]]] = {}
    ts, direction = f["trend_strength"], f["trend_dir"]
    if ts >= 0.6:
        name = "uptrend" if direction > 0 else "downtrend" if direction < 0 else "trending"
        evidence[name] = [_ev("trend_strength", ts, ">=", 0.6),
                          {"metric": "trend_dir", "value": direction, "op": "==", "threshold": direction,
                           "margin": 0.0}]
    elif ts < 0.3:
        evidence["flat"] = [_ev("trend_strength", ts, "<", 0.3)]
    atr = f["atr_pct"]
    if atr < 0.005:
        evidence["low_vol"] = [_ev("atr_pct", atr, "<", 0.005)]
    elif atr > 0.015:
        evidence["high_vol"] = [_ev("atr_pct", atr, ">", 0.015)]
    z, bb = f["zscore"], f["bb_width_pct"]
    if ts < 0.3 and abs(z) > 1.0:
        evidence["mean_reverting"] = [_ev("trend_strength", ts, "<", 0.3), _ev("abs_zscore", abs(z), ">", 1.0)]
    if ts < 0.3 and bb < 0.02:
        evidence["choppy"] = [_ev("trend_strength", ts, "<", 0.3), _ev("bb_width_pct", bb, "<", 0.02)]
    er = f["efficiency_ratio"]
    if er < 0.3:
        evidence["noisy"] = [_ev("efficiency_ratio", er, "<", 0.3)]
    elif er > 0.7:
        evidence["efficient"] = [_ev("efficiency_ratio", er, ">", 0.7)]
    rsi = f["rsi"]
    if z < -1.5 or rsi < 30.0:
        evidence["oversold"] = [e for e in (_ev("zscore", z, "<", -1.5), _ev("rsi", rsi, "<", 30.0))
                                if e["margin"] > 0]
    if z > 1.5 or rsi > 70.0:
        evidence["overbought"] = [e for e in (_ev("zscore", z, ">", 1.5), _ev("rsi", rsi, ">", 70.0))
                                  if e["margin"] > 0]
    tags = sorted(evidence)
    return tags, {t: evidence[t] for t in tags}


def test_batch_tagging_equals_per_row_tagging() -> None:
    """The vectorised tagger gives exactly `tag_regime`'s tags and evidence, thresholds included."""
    rng = np.random.default_rng(5)
    n = 4000
    edges = {"trend_strength": [0.3, 0.6], "atr_pct": [0.005, 0.015], "zscore": [-1.5, -1.0, 1.0, 1.5],
             "bb_width_pct": [0.02], "efficiency_ratio": [0.3, 0.7], "rsi": [30.0, 70.0], "trend_dir": [0.0]}
    spans = {"trend_strength": (0, 1), "trend_dir": (-1, 1), "atr_pct": (0, 0.03), "zscore": (-3, 3),
             "bb_width_pct": (0, 0.05), "efficiency_ratio": (0, 1), "rsi": (0, 100)}
    values = {}
    for name, (lo, hi) in spans.items():
        col = rng.uniform(lo, hi, n)
        hits = rng.random(n) < 0.15
        col[hits] = rng.choice(edges[name], hits.sum())
        values[name] = col
    values["trend_dir"] = np.sign(values["trend_dir"])
    batch = tag_regime_batch(values)
    for i in range(n):
        tags, evidence = tag_regime({k: v[i].item() for k, v in values.items()})
        assert list(batch[i]) == tags and batch[i] == evidence
