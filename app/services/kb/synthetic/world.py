"""A synthetic regime-switching market where the truth is known, for the walk-forward
bench and tests of recommend().

Regimes persist for hundreds of bars: a steady uptrend, a steady downtrend, a quiet
mean-reverting range, and a volatile chop. Two strategies are swept over rolling windows:
a moving-average cross (`fast`, `slow`, and a categorical `mode`: follow or fade the
cross) and a Bollinger reversion (`window`, `z`). Their best parameters differ by regime
(follow in trends, fade in ranges; tight bands in quiet ranges, wide ones in chop), so a
method that reads the regime correctly can beat the single best set over all history.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

REGIMES = ("uptrend", "downtrend", "range", "chop")
START = datetime(2022, 1, 3, tzinfo=UTC)
BAR = timedelta(hours=1)
# Per-bar drift, volatility and mean reversion (pull toward a moving anchor) per regime.
_DYNAMICS = {
    "uptrend": (0.0012, 0.006, 0.0),
    "downtrend": (-0.0012, 0.006, 0.0),
    "range": (0.0, 0.004, 0.08),
    "chop": (0.0, 0.016, 0.02),
}
GRIDS: dict[str, list[dict[str, Any]]] = {
    "ma_cross": [{"fast": f, "slow": s, "mode": m}
                 for f, s, m in itertools.product((5, 10, 20), (40, 80), ("follow", "fade"))],
    "bollinger": [{"window": w, "z": z} for w, z in itertools.product((10, 20, 40), (0.5, 1.0, 1.5, 2.5))],
}
COST = 0.0002  # per unit of position change


@dataclass
class World:
    ts: np.ndarray  # UTC ns
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    regime: np.ndarray  # index into REGIMES per bar
    symbol: str = "SYN"

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"timestamp": pd.to_datetime(self.ts, utc=True).map(lambda t: t.isoformat()),
                             "open": self.open, "high": self.high, "low": self.low, "close": self.close,
                             "volume": 1000.0})


def make_world(bars: int, seed: int, min_len: int = 300, max_len: int = 700) -> World:
    rng = np.random.default_rng(seed)
    regime = np.empty(bars, dtype=np.int64)
    i, last = 0, -1
    while i < bars:
        choices = [k for k in range(len(REGIMES)) if k != last]
        r = int(rng.choice(choices))
        n = int(rng.integers(min_len, max_len))
        regime[i:i + n] = r
        i, last = i + n, r
    log_p = np.empty(bars)
    level = np.log(100.0)
    anchor = level
    for t in range(bars):
        drift, vol, pull = _DYNAMICS[REGIMES[regime[t]]]
        anchor = 0.995 * anchor + 0.005 * level if pull else level
        level = level + drift - pull * (level - anchor) + vol * rng.standard_normal()
        log_p[t] = level
    close = np.exp(log_p)
    prev = np.concatenate([[close[0]], close[:-1]])
    spread = np.abs(rng.normal(0, 0.002, bars)) * close
    high = np.maximum(close, prev) + spread
    low = np.minimum(close, prev) - spread
    ts = (np.datetime64(START.replace(tzinfo=None), "ns").astype(np.int64)
          + np.arange(bars, dtype=np.int64) * int(BAR.total_seconds() * 1e9))
    return World(ts, prev, high, low, close, regime)


def _sma(x: np.ndarray, n: int) -> np.ndarray:
    c = np.cumsum(np.concatenate([[0.0], x]))
    out = np.full(len(x), np.nan)
    out[n - 1:] = (c[n:] - c[:-n]) / n
    return out


def positions(world: World, strategy: str, params: dict[str, Any]) -> np.ndarray:
    """Position held over bar t+1, decided at the close of bar t (no look-ahead)."""
    c = world.close
    if strategy == "ma_cross":
        raw = np.sign(_sma(c, params["fast"]) - _sma(c, params["slow"]))
        pos = raw if params["mode"] == "follow" else -raw
    else:
        mid = _sma(c, params["window"])
        sq = _sma(c * c, params["window"])
        sd = np.sqrt(np.maximum(sq - mid * mid, 0.0))
        z = (c - mid) / np.where(sd > 0, sd, np.nan)
        pos = np.where(z > params["z"], -1.0, np.where(z < -params["z"], 1.0, 0.0))
    return np.nan_to_num(pos)


def strategy_returns(world: World, strategy: str, params: dict[str, Any]) -> np.ndarray:
    ret = np.diff(np.log(world.close), prepend=np.log(world.close[0]))
    pos = positions(world, strategy, params)
    held = np.concatenate([[0.0], pos[:-1]])
    turnover = np.abs(np.diff(held, prepend=0.0))
    return held * ret - COST * turnover


def window_sharpe(r: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sharpe of bar returns over [start, end] (inclusive), scaled by sqrt(bars per year
    of hourly trading, 252 x 7)."""
    c1 = np.cumsum(np.concatenate([[0.0], r]))
    c2 = np.cumsum(np.concatenate([[0.0], r * r]))
    n = ends - starts + 1
    mean = (c1[ends + 1] - c1[starts]) / n
    var = np.maximum((c2[ends + 1] - c2[starts]) / n - mean * mean, 0.0)
    sd = np.sqrt(var)
    return np.where(sd > 0, mean / np.where(sd > 0, sd, 1.0) * np.sqrt(252 * 7), 0.0)


def window_starts(bars: int, length: int, step: int, warmup: int) -> np.ndarray:
    return np.arange(warmup, bars - length + 1, step, dtype=np.int64)


def sweep_runs(world: World, workspace_id: uuid.UUID, *, length: int = 200, step: int = 50,
               warmup: int = 400, seed: int = 0) -> list[dict[str, Any]]:
    """Every grid point of both strategies on every rolling window, as `backtest_runs`
    rows (dataset_meta holds the OOS window, summary the OOS metrics)."""
    starts = window_starts(len(world.close), length, step, warmup)
    ends = starts + length - 1
    iso = pd.to_datetime(world.ts, utc=True).map(lambda t: t.isoformat())
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)
    created = START + timedelta(days=3650)
    for strategy, grid in GRIDS.items():
        for params in grid:
            r = strategy_returns(world, strategy, params)
            sharpe = window_sharpe(r, starts, ends)
            c = np.cumsum(np.concatenate([[0.0], r]))
            total = c[ends + 1] - c[starts]
            for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
                eq = np.exp(np.cumsum(r[s:e + 1]))
                dd = float(np.max(1 - eq / np.maximum.accumulate(eq))) if len(eq) else 0.0
                trades = int(np.count_nonzero(np.diff(positions_cache(world, strategy, params)[s:e + 1])))
                rows.append({
                    "id": uuid.UUID(int=int(rng.integers(0, 2**62)) << 64 | len(rows)),
                    "workspace_id": workspace_id,
                    "created_at": created + timedelta(seconds=len(rows)),
                    "run_kind": "test_variant", "status": "completed", "strategy_name": strategy,
                    "experiment_type": "sweep", "params": params,
                    "dataset_meta": {"symbol": world.symbol, "timeframe": "1h", "oos_start": iso[s], "oos_end": iso[e]},
                    "summary": {"trades": trades, "sharpe": round(float(sharpe[k]), 4),
                                "max_drawdown_pct": round(-100 * dd, 3),
                                "return_pct": round(100 * float(np.expm1(total[k])), 3)},
                    "trade_count": trades,
                })
    return rows


_POSITIONS: dict[tuple[int, str, str], np.ndarray] = {}


def positions_cache(world: World, strategy: str, params: dict[str, Any]) -> np.ndarray:
    key = (id(world), strategy, repr(sorted(params.items())))
    if key not in _POSITIONS:
        if len(_POSITIONS) > 64:
            _POSITIONS.clear()
        _POSITIONS[key] = positions(world, strategy, params)
    return _POSITIONS[key]


def true_regime(world: World, start: int, end: int) -> str:
    """The regime that held most of the bars of [start, end]."""
    counts = np.bincount(world.regime[start:end + 1], minlength=len(REGIMES))
    return REGIMES[int(np.argmax(counts))]
