"""Deterministic demo data: OHLCV with distinct regimes, and runs of every shape.

Strategy performance depends on the regime of the run's OOS window (trend followers do
well in trends, mean reversion in ranges), so the KB has something real to learn.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from app.files import write_whole
from app.services.kb.runs.windows import extract_windows

SYMBOLS = ("AAPL", "MSFT", "BTC")
DEMO_START = datetime(2024, 1, 1, tzinfo=UTC)
BARS = 24 * 365
REGIMES = ("uptrend", "downtrend", "range", "volatile")
STRATEGIES = ("trend_follow", "mean_rev", "breakout")


@dataclass
class DemoMarket:
    frame: pd.DataFrame  # symbol, timestamp, open, high, low, close, volume
    regime_at: dict[str, np.ndarray]  # per symbol, the regime index of each bar


def make_market(rng: np.random.Generator) -> DemoMarket:
    parts, labels = [], {}
    ts = pd.date_range(DEMO_START, periods=BARS, freq="h", tz="UTC")
    for sym in SYMBOLS:
        regime = np.empty(BARS, dtype=np.int64)
        pos = 0
        while pos < BARS:
            length = int(rng.integers(400, 1100))
            regime[pos : pos + length] = rng.integers(0, len(REGIMES))
            pos += length
        drift = np.select([regime == 0, regime == 1], [0.0016, -0.0016], 0.0)
        vol = np.where(regime == 3, 0.02, np.where(regime == 2, 0.002, 0.003))
        rets = drift + rng.normal(0, 1, BARS) * vol
        # ranges pull back toward their running level
        level = 0.0
        logp = np.empty(BARS)
        acc = np.log(100.0 + 50 * SYMBOLS.index(sym))
        for i in range(BARS):
            if regime[i] == 2:
                rets[i] -= 0.05 * (acc - level)
            else:
                level = acc
            acc += rets[i]
            logp[i] = acc
        close = np.exp(logp)
        spread = np.abs(rng.normal(0, 1, BARS)) * vol * close + close * 0.0005
        parts.append(pd.DataFrame({
            "symbol": sym, "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "open": np.round(np.r_[close[0], close[:-1]], 4), "high": np.round(close + spread, 4),
            "low": np.round(close - spread, 4), "close": np.round(close, 4),
            "volume": rng.integers(1000, 100000, BARS),
        }))
        labels[sym] = regime
    return DemoMarket(pd.concat(parts, ignore_index=True), labels)


# Each strategy is swept over a grid, as researchers do: a set recurs across windows.
_GRIDS: dict[str, list[dict[str, Any]]] = {
    "trend_follow": [{"fast": f, "slow": s, "stop": "atr"} for f in (5, 10, 15, 20, 25) for s in (50, 100, 150)],
    "mean_rev": [{"lookback": lb, "z_entry": z, "exit": e} for lb in (10, 20, 40) for z in (1.0, 1.5, 2.0, 2.5, 3.0)
                 for e in ("mean", "half")],
    "breakout": [{"window": w, "atr_mult": a, "stop": "atr"} for w in (20, 40, 60, 80)
                 for a in (1.0, 1.5, 2.0, 2.5, 3.0, 3.5)],
}


def _sharpe(strategy: str, regime: int, params: dict[str, Any], rng: np.random.Generator) -> float:
    fit = {
        "trend_follow": {0: 1.6, 1: 1.2, 2: -0.6, 3: 0.1},
        "mean_rev": {0: -0.4, 1: -0.3, 2: 1.7, 3: -0.2},
        "breakout": {0: 0.7, 1: 0.5, 2: -0.5, 3: 1.3},
    }[strategy][regime]
    if strategy == "trend_follow":
        fit -= abs(params["fast"] - 10) / 25  # fast ~10 works best in trends
    elif strategy == "mean_rev":
        fit -= abs(params["z_entry"] - 2.0) / 1.5
    else:
        fit -= abs(params["atr_mult"] - 2.5) / 2.0
    return float(fit + rng.normal(0, 0.35))


def _window_meta(form: int, start: datetime, end: datetime, rng: np.random.Generator) -> tuple[dict, dict]:
    """OOS window in one of the forms the backfill understands (or none, for legacy runs)."""
    iso = lambda t: t.isoformat().replace("+00:00", "Z")  # noqa: E731
    if form == 0:
        return {"oos_start": iso(start), "oos_end": iso(end)}, {}
    if form == 1:
        ratio = 0.3
        lo = end - (end - start) / ratio
        return {}, {"date_min": iso(lo), "date_max": iso(end), "oos_ratio": ratio}
    if form == 2:
        lo = start - (end - start)
        return {"start": iso(lo), "end": iso(end), "oos_split": iso(start)}, {}
    if form == 3:
        return {"date_min": start.strftime("%Y-%m-%d %H:%M:%S"), "date_max": end.strftime("%Y-%m-%d %H:%M:%S")}, {}
    if form == 4:
        return {"oos_start": int(start.timestamp() * 1000), "oos_end": int(end.timestamp() * 1000)}, {}
    return {}, {}  # legacy: no dates at all


def make_runs(workspace_id: uuid.UUID, market: DemoMarket, count: int, rng: np.random.Generator) -> list[dict]:
    runs = []
    created0 = datetime(2025, 2, 1, tzinfo=UTC)
    sweep: list[dict[str, Any]] = []
    for i in range(count):
        if not sweep:  # a new sweep: several grid sets of one strategy on one window
            sym = SYMBOLS[int(rng.integers(0, len(SYMBOLS)))]
            strategy = STRATEGIES[int(rng.integers(0, len(STRATEGIES)))]
            grid = _GRIDS[strategy]
            sweep = [grid[j] for j in rng.choice(len(grid), size=int(rng.integers(4, 9)), replace=False)]
            length = int(rng.integers(250, 700))
            first = int(rng.integers(length + 10, BARS - length - 10)) if rng.random() > 0.02 else BARS - 30
            last = min(first + length, BARS - 1)
            start = DEMO_START + timedelta(hours=first)
            end = DEMO_START + timedelta(hours=last)
            regime = int(np.bincount(market.regime_at[sym][first : last + 1], minlength=4).argmax())
            form = int(rng.choice(6, p=[0.35, 0.2, 0.15, 0.15, 0.1, 0.05]))
        params = dict(sweep.pop())
        sharpe = _sharpe(strategy, regime, params, rng)
        trades = int(rng.poisson(max(3.0, 25 + 10 * sharpe)))
        dd = float(np.clip(rng.gamma(2.0, 6.0) - 3 * sharpe, 2, 70))
        summary: Any = {"trades": trades, "sharpe": round(sharpe, 3), "max_drawdown_pct": -round(dd, 2),
                        "return_pct": round(sharpe * 6 + rng.normal(0, 2), 2),
                        "win_rate": round(float(np.clip(0.5 + sharpe / 10, 0.2, 0.8)), 3),
                        "profit_factor": round(float(np.clip(1 + sharpe / 3, 0.3, 3)), 2)}
        mess = rng.random()
        if mess < 0.03:
            summary = orjson.dumps(orjson.dumps(summary).decode()).decode()  # a JSON string holding JSON
        elif mess < 0.04:
            summary = None
        elif mess < 0.05:
            summary["sharpe"] = "NaN"
        elif mess < 0.06:
            summary["trades"] = str(trades)  # numeric strings count as numbers
        elif mess < 0.065:
            summary["max_drawdown_pct"] = "n/a"
        meta, extra = _window_meta(form, start, end, rng)
        kind_roll, status_roll, exp_roll = rng.random(), rng.random(), rng.random()
        runs.append({
            "id": uuid.UUID(bytes=rng.bytes(16), version=4),
            "workspace_id": workspace_id,
            "created_at": created0 + timedelta(minutes=i),
            "run_kind": "test_variant" if kind_roll < 0.85 else ("tune_variant" if kind_roll < 0.95 else "backtest"),
            "status": ("completed" if status_roll < 0.88 else "success" if status_roll < 0.92
                       else "failed" if status_roll < 0.96 else "running" if status_roll < 0.98 else "pending"),
            "strategy_name": strategy,
            "experiment_type": (None if exp_roll < 0.6 else "sweep" if exp_roll < 0.8 else "tune" if exp_roll < 0.9
                                else "manual" if exp_roll < 0.95 else "ablation" if exp_roll < 0.98
                                else "grid_legacy"),
            "params": {**params, **extra},
            "dataset_meta": {"symbol": sym, "timeframe": "1h", **meta},
            "summary": summary,
            "trade_count": trades if rng.random() < 0.3 else None,
        })
    return runs


def _flat(run: dict[str, Any]) -> dict[str, Any]:
    """One run as a row of `kb import` fields, the way a researcher's own script would export it."""
    summary = run["summary"]
    while isinstance(summary, str):  # the demo's JSON-string-holding-JSON summaries
        summary = orjson.loads(summary)
    summary = summary or {}
    meta, params = run["dataset_meta"], dict(run["params"])
    window: dict[str, Any] = {}
    found = extract_windows(meta, params).oos
    if found is not None:
        window = {"oos_start": found.start.isoformat(), "oos_end": found.end.isoformat()}
    for key in ("date_min", "date_max", "oos_ratio", "oos_split", "start", "end"):
        params.pop(key, None)
    return {
        "run_id": str(run["id"]), "created_at": run["created_at"].isoformat(), "strategy": run["strategy_name"],
        "run_kind": run["run_kind"], "status": run["status"], "experiment_type": run["experiment_type"],
        "symbol": meta["symbol"], "timeframe": meta["timeframe"], **window,
        "trades": run["trade_count"] if run["trade_count"] is not None else summary.get("trades"),
        **{k: summary.get(k) for k in ("sharpe", "max_drawdown_pct", "return_pct", "win_rate", "profit_factor")},
        **{f"param_{k}": v for k, v in params.items()},
    }


def write_runs_csv(runs: list[dict[str, Any]], folder: Path) -> Path:
    """The demo runs as a CSV export, for the demo's import step."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo_runs.csv"
    frame = pd.DataFrame([_flat(r) for r in runs])
    write_whole(path, lambda tmp: frame.to_csv(tmp, index=False))
    return path


def write_market(market: DemoMarket, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo_ohlcv_1h.csv"
    write_whole(path, lambda tmp: market.frame.to_csv(tmp, index=False))
    return path
