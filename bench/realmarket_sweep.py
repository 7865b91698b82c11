"""Real price series shipped inside PyPI packages, rolling OOS windows over them, and the
backtesting.py parameter sweeps that bench_realmarket.py feeds to the KB.

Series (no network at run time; `pip install -e . --group bench` brings the packages):

  SP500   arch.data.sp500      S&P 500 index, daily, 1999-2018
  NASDAQ  arch.data.nasdaq     NASDAQ Composite, daily, 1999-2018
  GOOG    backtesting.test     Alphabet (GOOG) stock, daily, 2004-2013
  EURUSD  backtesting.test     EUR/USD, hourly, 2017-2018

Windows: the first OOS window starts LEAD_BARS bars into the series (so every run has a
full ex-ante regime snapshot and every indicator is warm), then one every `step` bars,
each `window` bars long, while it fits in the series.

Keeping the Sharpe to the OOS window: the indicators (SMAs, rolling standard deviations)
are computed on the whole series, so a window's first bar already sees values made from
the bars before it (the warm-up), and are handed to backtesting.py as extra columns of
the window's own bars. `Backtest` only ever sees the window's bars: it starts flat at the
window's first bar, its equity curve, Sharpe, drawdown, trades, `Start` and `End` are the
window's and nothing else (open trades are closed on the last bar: `finalize_trades`).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("TQDM_DISABLE", "1")  # backtesting.py shows a progress bar per run otherwise

from backtesting import Backtest, Strategy

LEAD_BARS = 200  # bars before the first window: the KB's regime look-back, and >= the longest indicator
SWEEP_VERSION = 2  # bump when a strategy or the export changes (invalidates bench/.cache)


@dataclass(frozen=True)
class SeriesSpec:
    symbol: str
    package: str
    source: str  # where in the package
    timeframe: str
    commission: float  # per side, fraction of the traded value


SERIES: dict[str, SeriesSpec] = {
    "SP500": SeriesSpec("SP500", "arch", "arch.data.sp500.load()", "1d", 0.0005),
    "NASDAQ": SeriesSpec("NASDAQ", "arch", "arch.data.nasdaq.load()", "1d", 0.0005),
    "GOOG": SeriesSpec("GOOG", "backtesting", "backtesting.test.GOOG", "1d", 0.0005),
    "EURUSD": SeriesSpec("EURUSD", "backtesting", "backtesting.test.EURUSD", "1h", 0.0001),
}


def load_series(symbol: str) -> pd.DataFrame:
    """Open/High/Low/Close/Volume bars indexed by naive timestamps (read as UTC)."""
    if symbol == "SP500":
        from arch.data import sp500  # noqa: PLC0415

        frame = sp500.load()
    elif symbol == "NASDAQ":
        from arch.data import nasdaq  # noqa: PLC0415

        frame = nasdaq.load()
    elif symbol in ("GOOG", "EURUSD"):
        from backtesting import test  # noqa: PLC0415

        frame = getattr(test, symbol)
    else:
        raise KeyError(symbol)
    frame = frame[["Open", "High", "Low", "Close", "Volume"]].astype(float).sort_index()
    frame.index = pd.DatetimeIndex(frame.index).tz_localize(None)
    frame.index.name = None
    return frame[~frame.index.duplicated()]


def ohlcv_file_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """The columns `kb backfill-regime` and `kb recommend` read."""
    return pd.DataFrame({"timestamp": bars.index.strftime("%Y-%m-%dT%H:%M:%S"), "open": bars["Open"].to_numpy(),
                         "high": bars["High"].to_numpy(), "low": bars["Low"].to_numpy(),
                         "close": bars["Close"].to_numpy(), "volume": bars["Volume"].to_numpy()})


def window_starts(n_bars: int, window: int, step: int) -> list[int]:
    return list(range(LEAD_BARS, n_bars - window + 1, step))


# ---------------------------------------------------------------------------- strategies
# Indicators arrive as columns of the data (see the module docstring): SMA_<n> and SD_<n>.


class SmaCross(Strategy):
    """Always in the market: long while the fast SMA is above the slow one, short while it
    is below (backtesting.py's own SmaCross example, with exclusive orders)."""

    n1 = 10
    n2 = 50

    def init(self) -> None:
        self.fast, self.slow = f"SMA_{self.n1}", f"SMA_{self.n2}"

    def next(self) -> None:
        above = self.data[self.fast][-1] > self.data[self.slow][-1]
        if above and not self.position.is_long:
            self.buy()
        elif not above and not self.position.is_short:
            self.sell()


class BollingerReversion(Strategy):
    """Buy a close below the lower band, short one above the upper band (mean +- k
    standard deviations over n bars); exit when the close crosses back over the mean."""

    n = 20
    k = 2.0

    def init(self) -> None:
        self.mid, self.sd = f"SMA_{self.n}", f"SD_{self.n}"

    def next(self) -> None:
        close, mid, band = self.data.Close[-1], self.data[self.mid][-1], self.k * self.data[self.sd][-1]
        if not self.position:
            if close < mid - band:
                self.buy()
            elif close > mid + band:
                self.sell()
        elif (self.position.is_long and close >= mid) or (self.position.is_short and close <= mid):
            self.position.close()


GRIDS: dict[str, list[dict[str, float]]] = {
    "SmaCross": [{"n1": a, "n2": b} for a in (3, 5, 8, 12, 16) for b in (20, 30, 50, 80)],
    "BollingerReversion": [{"n": n, "k": k} for n in (10, 15, 20, 30, 40, 50) for k in (1.0, 1.5, 2.0, 2.5)],
}
STRATEGIES: dict[str, type[Strategy]] = {"SmaCross": SmaCross, "BollingerReversion": BollingerReversion}


def set_label(strategy: str, params: dict[str, float]) -> str:
    """The `_strategy` text backtesting.py writes for these params."""
    return f"{strategy}({','.join(f'{k}={v}' for k, v in params.items())})"


def params_key(params: dict[str, object]) -> tuple[tuple[str, float], ...]:
    """Order- and int/float-blind key of a parameter dict (JSON answers vs the grid)."""
    return tuple(sorted((str(k), float(v)) for k, v in params.items()))  # type: ignore[arg-type]


def with_indicators(bars: pd.DataFrame) -> pd.DataFrame:
    out = bars.copy()
    periods = {p["n1"] for p in GRIDS["SmaCross"]} | {p["n2"] for p in GRIDS["SmaCross"]} \
        | {p["n"] for p in GRIDS["BollingerReversion"]}
    assert max(periods) <= LEAD_BARS
    for n in sorted(periods):
        out[f"SMA_{n}"] = bars["Close"].rolling(int(n)).mean()
        out[f"SD_{n}"] = bars["Close"].rolling(int(n)).std(ddof=0)
    return out


# ---------------------------------------------------------------------------- sweep


def _sweep_window(args: tuple[pd.DataFrame, float]) -> list[pd.Series]:
    bars, commission = args
    rows = []
    for name, grid in GRIDS.items():
        bt = Backtest(bars, STRATEGIES[name], cash=1_000_000, commission=commission, exclusive_orders=True,
                      finalize_trades=True)
        for params in grid:
            rows.append(bt.run(**params).drop(["_equity_curve", "_trades"]))
    return rows


def cache_key(spec: SeriesSpec, bars: pd.DataFrame, window: int, step: int) -> str:
    text = "|".join(map(str, (SWEEP_VERSION, spec, len(bars), bars.index[0], bars.index[-1],
                              float(bars["Close"].sum()), window, step, LEAD_BARS, GRIDS,
                              version("backtesting"), version("pandas"), version("numpy"))))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sweep_export(spec: SeriesSpec, bars: pd.DataFrame, window: int, step: int, cache_dir: Path,
                 jobs: int = 1) -> tuple[Path, bool]:
    """Every parameter set of both strategies backtested on every window of one series, as
    backtesting.py's stats rows plus `symbol` and `timeframe`, written to CSV (cached).
    Returns the file and whether it came from the cache."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"sweep-{spec.symbol}-{cache_key(spec, bars, window, step)}.csv"
    if path.exists():
        return path, True
    full = with_indicators(bars)
    tasks = [(full.iloc[s:s + window], spec.commission) for s in window_starts(len(bars), window, step)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            chunks = list(pool.map(_sweep_window, tasks, chunksize=2))
    else:
        chunks = [_sweep_window(t) for t in tasks]
    frame = pd.DataFrame([row for chunk in chunks for row in chunk])
    frame["symbol"] = spec.symbol
    frame["timeframe"] = spec.timeframe
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path, False


@dataclass
class SweepTable:
    """Realised OOS Sharpe per (window, set) of one series and strategy, from the export."""

    starts: list[pd.Timestamp]  # per window, first bar
    ends: list[pd.Timestamp]  # per window, last bar
    sets: list[dict[str, float]]
    sharpe: np.ndarray  # windows x sets, NaN where the run made no trade (as the tool writes it)

    def realised(self, w: int, s: int) -> float:
        """A run with no trade held cash: its Sharpe counts as 0."""
        v = self.sharpe[w, s]
        return 0.0 if np.isnan(v) else float(v)


def sweep_tables(export: Path, bars: pd.DataFrame, window: int, step: int) -> dict[str, SweepTable]:
    frame = pd.read_csv(export)
    starts_i = window_starts(len(bars), window, step)
    starts = [bars.index[s] for s in starts_i]
    ends = [bars.index[s + window - 1] for s in starts_i]
    by_start = {t: w for w, t in enumerate(starts)}
    frame["w"] = pd.to_datetime(frame["Start"]).map(by_start)
    if frame["w"].isna().any():
        raise RuntimeError(f"{export}: rows whose Start is no window start")
    out = {}
    for name, grid in GRIDS.items():
        labels = {set_label(name, p): i for i, p in enumerate(grid)}
        table = np.full((len(starts), len(grid)), np.nan)
        mine = frame[frame["_strategy"].str.startswith(name + "(")]
        for w, label, sharpe in zip(mine["w"], mine["_strategy"], mine["Sharpe Ratio"], strict=True):
            table[int(w), labels[label]] = sharpe
        if len(mine) != table.size:
            raise RuntimeError(f"{export}: {len(mine)} rows of {name}, expected {table.size}")
        out[name] = SweepTable(starts, ends, grid, table)
    return out
