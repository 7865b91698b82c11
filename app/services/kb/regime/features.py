"""Regime snapshots: features, tags and evidence over the trailing bars of a window.

The numeric core works on many windows at once. For windows of equal length every
feature is a fixed function of the window's bars: Wilder smoothing seeded at the first
bar is a dot product with a fixed weight vector, and the 50-bar regression is a product
with a fixed centred index. So a batch of windows is gathered into a (windows x bars)
matrix per length and computed with a few matrix operations; one snapshot is a batch of one.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from itertools import repeat
from typing import Any

import numpy as np
import orjson
import pandas as pd

from app.errors import BadInput
from app.services.kb.regime.ohlcv import Series, frame_arrays
from app.services.kb.regime.snapshot import SCHEMA_VERSION, RegimeSnapshot
from app.services.kb.regime.tags import tag_regime_batch

REGIME_WINDOW_BARS = 200
MIN_EFFECTIVE_BARS = 50
ATR_PERIOD = 14
RSI_PERIOD = 14
BB_PERIOD = 20
BB_STD = 2.0
TREND_BARS = 50
ER_MAX_PERIOD = 50
TREND_DEAD_BAND = 0.001
BAD_TICK_JUMP = 0.5
_CHUNK = 4096  # windows per gathered matrix: bounds memory at about 20 MB

FEATURE_PARAMS: dict[str, Any] = {
    "window_bars": REGIME_WINDOW_BARS,
    "atr": {"period": ATR_PERIOD, "smoothing": "wilder", "alpha": 1 / ATR_PERIOD},
    "rsi": {"period": RSI_PERIOD, "smoothing": "wilder"},
    "bollinger": {"period": BB_PERIOD, "std": BB_STD, "ddof": 0},
    "trend": {"bars": TREND_BARS, "dead_band": TREND_DEAD_BAND},
    "efficiency_ratio": {"max_period": ER_MAX_PERIOD},
}

_FEATURES = ("atr_pct", "rsi", "bb_width_pct", "std_pct", "range_pct", "zscore", "trend_strength",
             "trend_dir", "efficiency_ratio", "return_pct", "drift_bps_per_bar")


def _wilder_weights(length: int, period: int) -> np.ndarray:
    """Weights w with (w @ x) == Wilder-smoothed x at its last element, seeded by x[0]."""
    alpha = 1.0 / period
    w = alpha * (1.0 - alpha) ** np.arange(length - 1, -1, -1, dtype=np.float64)
    w[0] = (1.0 - alpha) ** (length - 1)
    return w


def _safe_div(num: np.ndarray, den: np.ndarray, default: float = 0.0) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, default, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


@dataclass
class FeatureBatch:
    """Features of many windows: one array per feature, plus warning flags."""

    values: dict[str, np.ndarray]
    bad_ticks: np.ndarray
    n_bars: np.ndarray


def _trend(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R² of close against bar index over the last TREND_BARS bars, and the slope's sign
    relative to the mean price (0 inside the dead band)."""
    n = c.shape[1]
    k = min(TREND_BARS, n)
    y = c[:, -k:]
    if k >= 2:
        x = np.arange(k, dtype=np.float64) - (k - 1) / 2.0
        ym = y.mean(axis=1)
        yc = y - ym[:, None]
        sxy = yc @ x
        sxx = float(x @ x)
        syy = (yc * yc).sum(axis=1)
        slope = sxy / sxx
        r2 = np.clip(_safe_div(sxy * sxy, sxx * syy), 0.0, 1.0)
        rel = _safe_div(slope, ym)
        direction = np.where(rel > TREND_DEAD_BAND, 1.0, np.where(rel < -TREND_DEAD_BAND, -1.0, 0.0))
    else:
        r2 = np.zeros(c.shape[0])
        direction = np.zeros(c.shape[0])

    return r2, direction


def _rsi(avg_gain: np.ndarray, avg_loss: np.ndarray) -> np.ndarray:
    rs = _safe_div(avg_gain, avg_loss)
    return np.where(avg_loss > 0, 100.0 - 100.0 / (1.0 + rs), np.where(avg_gain > 0, 100.0, 50.0))


def _band(tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread of the trailing bars. Constant prices leave floating-point residue in
    the mean: a spread below 1e-12 of the price level is no spread (else zscore would be
    +-1 on flat prices)."""
    sma = tail.mean(axis=1)
    std = np.sqrt(np.maximum(((tail - sma[:, None]) ** 2).mean(axis=1), 0.0))
    return sma, np.where(std <= 1e-12 * np.abs(sma), 0.0, std)


def _feature_dict(h: np.ndarray, lo: np.ndarray, c: np.ndarray, first: np.ndarray, steps: Any, atr: np.ndarray,
                  rsi: np.ndarray, er: np.ndarray, bad: np.ndarray) -> dict[str, np.ndarray]:
    """The features of a block from its parts (`steps`: bars minus one, per window or one for all)."""
    last = c[:, -1]
    sma, std = _band(c[:, -min(BB_PERIOD, c.shape[1]):])
    r2, direction = _trend(c)
    ret = _safe_div(last, first, 1.0) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        drift = np.log(_safe_div(last, first, 1.0)) / np.maximum(steps, 1) * 1e4
    return {
        "atr_pct": _safe_div(atr, last),
        "rsi": rsi,
        "bb_width_pct": _safe_div(2.0 * BB_STD * std, sma),
        "std_pct": _safe_div(std, last),
        "range_pct": _safe_div(h.max(axis=1) - lo.min(axis=1), last),
        "zscore": _safe_div(last - sma, std),
        "trend_strength": r2,
        "trend_dir": direction,
        "efficiency_ratio": er,
        "return_pct": ret,
        "drift_bps_per_bar": np.nan_to_num(drift, nan=0.0, posinf=0.0, neginf=0.0),
        "_bad_ticks": bad,
    }


def _features_equal_length(h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    """All features for a (windows x bars) block whose windows share one length."""
    n = c.shape[1]
    last = c[:, -1]
    # True range; the first bar of a window has no previous close inside the window.
    tr = np.empty_like(c)
    tr[:, 0] = h[:, 0] - lo[:, 0]
    if n > 1:
        prev = c[:, :-1]
        tr[:, 1:] = np.maximum(h[:, 1:] - lo[:, 1:], np.maximum(np.abs(h[:, 1:] - prev), np.abs(lo[:, 1:] - prev)))
    atr = tr @ _wilder_weights(n, ATR_PERIOD)

    if n > 1:
        delta = np.diff(c, axis=1)
        w = _wilder_weights(n - 1, RSI_PERIOD)
        rsi = _rsi(np.maximum(delta, 0.0) @ w, np.maximum(-delta, 0.0) @ w)
        bad = (np.abs(_safe_div(delta, c[:, :-1])) > BAD_TICK_JUMP).any(axis=1)
    else:
        delta = np.zeros((c.shape[0], 0))
        rsi = np.full(c.shape[0], 50.0)
        bad = np.zeros(c.shape[0], dtype=bool)

    p = min(ER_MAX_PERIOD, n // 2)
    if p >= 1:
        path = np.abs(delta[:, -p:]).sum(axis=1)
        er = np.clip(_safe_div(np.abs(last - c[:, -1 - p]), path), 0.0, 1.0)
    else:
        er = np.zeros(c.shape[0])
    return _feature_dict(h, lo, c, c[:, 0], n - 1, atr, rsi, er, bad)


@cache
def _aligned_weights(period: int, width: int) -> np.ndarray:
    """Row L: the Wilder weights of an L-long series, right-aligned in `width` columns
    (zeros before them)."""
    table = np.zeros((width + 1, width), dtype=np.float64)
    for length in range(1, width + 1):
        table[length, width - length :] = _wilder_weights(length, period)
    table.setflags(write=False)
    return table


def _features_aligned(h: np.ndarray, lo: np.ndarray, c: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """All features for windows of different lengths (each at least TREND_BARS) in one
    (windows x bars) block: each window right-aligned, padded on the left with copies of
    its first bar. The padding weighs nothing: zero Wilder weight, zero price change, no
    new high or low. The trailing-bar features read the same columns as per length."""
    k, m = c.shape
    rows = np.arange(k)
    first_col = m - lengths
    last = c[:, -1]
    delta = np.diff(c, axis=1)
    prev = c[:, :-1]
    tr = np.empty_like(c)
    tr[:, 1:] = np.maximum(h[:, 1:] - lo[:, 1:], np.maximum(np.abs(h[:, 1:] - prev), np.abs(lo[:, 1:] - prev)))
    # The first bar of a window has no previous close inside the window.
    tr[rows, first_col] = h[rows, first_col] - lo[rows, first_col]
    tr[:, 0] = h[:, 0] - lo[:, 0]
    atr = np.einsum("ij,ij->i", tr, _aligned_weights(ATR_PERIOD, REGIME_WINDOW_BARS)[lengths, -m:])
    w = _aligned_weights(RSI_PERIOD, REGIME_WINDOW_BARS - 1)[lengths - 1, -(m - 1):]
    rsi = _rsi(np.einsum("ij,ij->i", np.maximum(delta, 0.0), w), np.einsum("ij,ij->i", np.maximum(-delta, 0.0), w))
    p = np.minimum(ER_MAX_PERIOD, lengths // 2)
    path = np.where(np.arange(m - 1)[None, :] >= (m - 1 - p)[:, None], np.abs(delta), 0.0).sum(axis=1)
    er = np.clip(_safe_div(np.abs(last - c[rows, m - 1 - p]), path), 0.0, 1.0)
    bad = (np.abs(_safe_div(delta, prev)) > BAD_TICK_JUMP).any(axis=1)
    return _feature_dict(h, lo, c, c[rows, first_col], lengths - 1, atr, rsi, er, bad)


def compute_feature_batch(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> FeatureBatch:
    """Features for windows [starts[i], ends[i]] (inclusive indices) of one series.

    Each window is first cut to its trailing REGIME_WINDOW_BARS bars. Windows of at
    least TREND_BARS bars (all a backfill computes) go through one aligned block per
    chunk, whatever their lengths; shorter ones are computed per length.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    starts = np.maximum(starts, ends - (REGIME_WINDOW_BARS - 1))
    lengths = ends - starts + 1
    count = len(ends)
    values = {name: np.zeros(count) for name in _FEATURES}
    bad = np.zeros(count, dtype=bool)

    def put(chunk: np.ndarray, block: dict[str, np.ndarray]) -> None:
        bad[chunk] = block.pop("_bad_ticks")
        for name, arr in block.items():
            values[name][chunk] = arr

    long = np.flatnonzero(lengths >= TREND_BARS)
    long = long[np.argsort(lengths[long], kind="stable")]  # similar lengths together: little padding
    for lo_i in range(0, len(long), _CHUNK):
        chunk = long[lo_i : lo_i + _CHUNK]
        m = int(lengths[chunk].max())
        idx = np.maximum(ends[chunk][:, None] - (m - 1) + np.arange(m)[None, :], starts[chunk][:, None])
        put(chunk, _features_aligned(high[idx], low[idx], close[idx], lengths[chunk]))
    short = lengths < TREND_BARS
    for length in np.unique(lengths[short]):
        members = np.flatnonzero(lengths == length)
        offsets = np.arange(length)
        for lo_i in range(0, len(members), _CHUNK):
            chunk = members[lo_i : lo_i + _CHUNK]
            idx = starts[chunk][:, None] + offsets[None, :]
            put(chunk, _features_equal_length(high[idx], low[idx], close[idx]))
    for arr in values.values():
        np.nan_to_num(arr, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return FeatureBatch(values, bad, lengths)


def _iso_many(ns: np.ndarray) -> list[str]:
    return [t + "Z" for t in np.datetime_as_string(ns.astype("datetime64[ns]"), unit="s").tolist()]


# Constant for every snapshot: serialized once and embedded as-is.
_FEATURE_PARAMS_JSON = orjson.Fragment(orjson.dumps(FEATURE_PARAMS))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small acyclic objects:
    with it running, collections triggered by the allocations take over half the time.
    Reference counting still frees everything; the previous state is restored after.
    Also a decorator (`@gc_paused()`)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@gc_paused()
def snapshot_dicts(
    batch: FeatureBatch,
    ts_ns: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    source: str,
    timeframe: str | None,
    instrument: str | None,
    total_bars: np.ndarray | None = None,
    computed_at: str | None = None,
) -> list[dict[str, Any]]:
    """JSON-ready snapshot dicts for a computed batch (the backfill's fast path).

    `feature_params` is an `orjson.Fragment`: serialize these with orjson.
    """
    stamp = computed_at or datetime.now(UTC).isoformat().replace("+00:00", "Z")
    ends = np.asarray(ends)
    eff_starts = np.maximum(np.asarray(starts), ends - (REGIME_WINDOW_BARS - 1))
    names = list(batch.values)
    columns = [batch.values[n].tolist() for n in names]
    ts_start = _iso_many(ts_ns[eff_starts])
    ts_end = _iso_many(ts_ns[ends])
    n_bars = batch.n_bars.tolist()
    totals = total_bars.tolist() if total_bars is not None else n_bars
    evidences = tag_regime_batch(batch.values)
    n_rows = len(n_bars)
    warnings_col: list[list[str]] = [[] for _ in range(n_rows)]
    for label, mask in (("insufficient_bars", batch.n_bars < MIN_EFFECTIVE_BARS),
                        ("possible_bad_ticks", batch.bad_ticks.astype(bool)),
                        ("zero_atr", batch.values["atr_pct"] == 0.0),
                        ("zero_variance", batch.values["std_pct"] == 0.0)):
        for i in np.flatnonzero(mask).tolist():
            warnings_col[i].append(label)
    # Built column by column, then one dict per row; the key order is the JSON's.
    keys = [*names, "schema_version", "regime_tags", "tag_evidence", "warnings", "n_bars", "effective_n_bars",
            "ts_start", "ts_end", "timeframe", "instrument", "computed_at", "computation_source", "feature_params"]
    cols = [*columns, repeat(SCHEMA_VERSION), [list(e) for e in evidences], evidences, warnings_col, totals,
            n_bars, ts_start, ts_end, repeat(timeframe), repeat(instrument), repeat(stamp), repeat(source),
            repeat(_FEATURE_PARAMS_JSON)]
    return [dict(zip(keys, row)) for row in zip(*cols)]  # noqa: B905  (repeat() columns are endless)


def series_regime(
    ts: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    *,
    source: str,
    timeframe: str | None,
    instrument: str | None,
    total_bars: int | None = None,
) -> RegimeSnapshot:
    """The regime of the trailing REGIME_WINDOW_BARS bars of one series: the single path
    from bars to a snapshot (backfill windows use the same batch functions)."""
    n = len(close)
    starts, ends = np.array([0]), np.array([n - 1])
    batch = compute_feature_batch(high, low, close, starts, ends)
    snap = snapshot_dicts(batch, ts, starts, ends, source=source, timeframe=timeframe, instrument=instrument,
                          total_bars=np.array([n if total_bars is None else total_bars]))[0]
    snap["feature_params"] = FEATURE_PARAMS
    return RegimeSnapshot.from_dict(snap)


def current_regime(series: Series, *, timeframe: str | None, source: str) -> RegimeSnapshot:
    """The regime now: the trailing bars of a cleaned series (CLI file or API rows).
    Fewer than MIN_EFFECTIVE_BARS bars is bad input: no answer from too little data."""
    if len(series) < MIN_EFFECTIVE_BARS:
        raise BadInput(f"the current regime needs at least {MIN_EFFECTIVE_BARS} bars, got {len(series)}")
    return series_regime(series.ts, series.high, series.low, series.close, source=source,
                         timeframe=timeframe, instrument=series.symbol)


def compute_regime_snapshot(
    df: pd.DataFrame,
    source: str = "live",
    timeframe: str | None = None,
    instrument: str | None = None,
) -> RegimeSnapshot:
    """The regime of the trailing REGIME_WINDOW_BARS usable bars of `df`.

    The caller slices `df` to the window it cares about. Fewer than MIN_EFFECTIVE_BARS
    usable bars still yields a snapshot, flagged `insufficient_bars`, with a warning.
    """
    ts, h, lo, c, total = frame_arrays(df)
    n = len(c)
    if n == 0:
        raise ValueError("no usable bars (every row has a missing high, low or close)")
    if n < MIN_EFFECTIVE_BARS:
        warnings.warn(f"only {n} usable bars (< {MIN_EFFECTIVE_BARS}): regime features are unreliable",
                      RuntimeWarning, stacklevel=2)
    return series_regime(ts, h, lo, c, source=source, timeframe=timeframe, instrument=instrument, total_bars=total)
