"""Load an OHLCV file once, strictly: CSV, JSON (records or {"data": [...]}) or Parquet.

Column names are case-insensitive with aliases; times may be ISO text or epoch s/ms
and end up UTC. Rows are sorted, duplicates and NaN rows dropped, and price sanity
checked; everything dropped is counted for the report. Anything unusable is a
`BadInput` with one line saying what is wrong.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from app.errors import BadInput

_ALIASES = {
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c", "adj close", "adj_close", "adjclose", "price"),
    "volume": ("volume", "v", "vol"),
    "time": ("timestamp", "time", "datetime", "date", "ts"),
    "symbol": ("symbol", "ticker", "instrument"),
}
_REQUIRED = ("high", "low", "close")
_MAX_BYTES = 4 * 1024**3


@dataclass
class Series:
    """One instrument's bars as arrays (times in UTC nanoseconds, sorted, unique)."""

    symbol: str | None
    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class OhlcvData:
    path: Path
    series: dict[str | None, Series]
    has_symbol_column: bool
    rows: int
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(min(int(s.ts[0]) for s in self.series.values()), tz="UTC")

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(max(int(s.ts[-1]) for s in self.series.values()), tz="UTC")

    def date_range(self) -> str:
        return f"{self.start.date()} to {self.end.date()}"


def _read(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".json", ".jsonl", ".ndjson"):
            return _read_json(path)
        return pd.read_csv(path, sep=None, engine="python") if path.stat().st_size < 1_000_000 \
            else pd.read_csv(path)
    except BadInput:
        raise
    except pd.errors.EmptyDataError:
        raise BadInput(f"OHLCV file {path} is empty") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError, ImportError, csv.Error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"cannot read OHLCV file {path}: {first[:200]}") from exc


def _read_json(path: Path) -> pd.DataFrame:
    import orjson  # noqa: PLC0415

    raw = path.read_bytes()
    if not raw.strip():
        raise BadInput(f"OHLCV file {path} is empty")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # JSON lines
            data = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
        except orjson.JSONDecodeError as exc:
            raise BadInput(f"OHLCV file {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("data", data.get("bars", data.get("candles")))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BadInput(f"OHLCV file {path}: expected a list of records or {{\"data\": [...]}}")
    return pd.DataFrame.from_records(data)


def _rename(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    lowered = {str(c).strip().lower(): c for c in df.columns}
    mapping = {}
    for canonical, aliases in _ALIASES.items():
        for alias in aliases:
            if alias in lowered:
                mapping[lowered[alias]] = canonical
                break
    missing = [c for c in (*_REQUIRED, "time") if c not in mapping.values()]
    if missing:
        have = ", ".join(str(c) for c in df.columns[:12])
        need = ", ".join("timestamp" if m == "time" else m for m in missing)
        raise BadInput(f"OHLCV file {path} lacks column(s) {need} (has: {have or 'none'})")
    return df.rename(columns=mapping)[list(dict.fromkeys(mapping.values()))]


def _parse_times(col: pd.Series, path: Path) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):  # Parquet and typed frames: already times
        return pd.to_datetime(col, utc=True)
    numeric = pd.to_numeric(col, errors="coerce")
    if numeric.notna().all() and len(col):
        # epoch seconds or milliseconds, decided by magnitude
        unit: Literal["ms", "s"] = "ms" if float(numeric.abs().max()) >= 1e11 else "s"
        try:
            return pd.to_datetime(numeric, unit=unit, utc=True)
        except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime) as exc:
            raise BadInput(f"OHLCV file {path}: epoch times out of range ({exc})") from None
    try:
        return pd.to_datetime(col.astype(str), utc=True, format="mixed", errors="coerce")
    except (ValueError, TypeError) as exc:
        raise BadInput(f"OHLCV file {path}: cannot parse times ({exc})") from None


def load_ohlcv(path: str | Path, *, symbol: str | None = None) -> OhlcvData:
    """Read and clean an OHLCV file. With `symbol`, only that instrument's rows (when
    the file has a symbol column)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BadInput(f"OHLCV file {p} does not exist")
    if not p.is_file():
        raise BadInput(f"OHLCV path {p} is not a file")
    if p.stat().st_size == 0:
        raise BadInput(f"OHLCV file {p} is empty")
    if p.stat().st_size > _MAX_BYTES:
        raise BadInput(f"OHLCV file {p} is larger than 4 GiB; split it by symbol")
    return clean_ohlcv(_rename(_read(p), p), p, symbol=symbol)


def frame_series(frame: pd.DataFrame, *, symbol: str | None = None, label: str = "OHLCV rows") -> Series:
    """One instrument's cleaned bars from an in-memory frame (the API's OHLCV rows): the
    same aliases, time parsing, sanity checks and de-duplication as a file."""
    # Optional columns left empty (no open, no volume) are absent, not NaN prices.
    data = clean_ohlcv(_rename(frame.dropna(axis=1, how="all"), Path(label)), Path(label), symbol=symbol)
    if len(data.series) != 1:
        raise BadInput(f"{label} hold {len(data.series)} symbols: give one symbol")
    return next(iter(data.series.values()))


def clean_ohlcv(df: pd.DataFrame, p: Path, *, symbol: str | None = None) -> OhlcvData:
    """Times parsed to UTC, prices checked, rows sorted and de-duplicated, split by symbol."""
    if df.empty:
        raise BadInput(f"OHLCV file {p} has a header but no rows")
    dropped: dict[str, int] = {}
    has_symbol = "symbol" in df.columns
    if has_symbol:
        df["symbol"] = df["symbol"].astype(str).str.strip().str.upper()
        if symbol is not None:
            df = df[df["symbol"] == symbol.upper()]
            if df.empty:
                raise BadInput(f"OHLCV file {p} has no rows for symbol {symbol}")
    df["time"] = _parse_times(df["time"], p)
    bad_time = int(df["time"].isna().sum())
    if bad_time == len(df):
        raise BadInput(f"OHLCV file {p}: no parseable times in the time column")
    for col in ("open", "high", "low", "close", "volume"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    if "open" not in df.columns:
        df["open"] = df["close"]
    prices = df[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    nan_rows = df["time"].isna().to_numpy() | ~np.isfinite(prices).all(axis=1)
    dropped["nan_rows"] = int(nan_rows.sum())
    df = df[~nan_rows]
    prices = prices[~nan_rows]
    insane = (prices <= 0).any(axis=1) | (df["high"].to_numpy() < df["low"].to_numpy())
    dropped["bad_prices"] = int(insane.sum())
    df = df[~insane]
    keys = ["symbol", "time"] if has_symbol else ["time"]
    before = len(df)
    df = df.sort_values(keys, kind="stable").drop_duplicates(subset=keys, keep="last")
    dropped["duplicates"] = before - len(df)
    if df.empty:
        raise BadInput(f"OHLCV file {p} has no usable rows (all had missing times, NaN or bad prices)")
    series: dict[str | None, Series] = {}
    groups = df.groupby("symbol", sort=True) if has_symbol else [(None, df)]
    for key, part in groups:
        sym = str(key) if key is not None else (symbol.upper() if symbol else None)
        series[sym] = Series(
            sym,
            part["time"].dt.tz_convert("UTC").astype("datetime64[ns, UTC]").array.asi8.astype(np.int64),
            part["open"].to_numpy(np.float64),
            part["high"].to_numpy(np.float64),
            part["low"].to_numpy(np.float64),
            part["close"].to_numpy(np.float64),
        )
    return OhlcvData(p, series, has_symbol, len(df), dropped)


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def timeframe_seconds(timeframe: str) -> int:
    """Seconds per bar for '1m', '15m', '1h', '4h', '1d', '1w' and similar."""
    text = timeframe.strip().lower()
    digits = "".join(ch for ch in text if ch.isdigit())
    unit = text[len(digits):]
    if not digits or unit not in _UNITS or int(digits) <= 0:
        raise BadInput(f"unknown timeframe {timeframe!r}; use forms like 15m, 1h, 4h, 1d")
    return int(digits) * _UNITS[unit]
