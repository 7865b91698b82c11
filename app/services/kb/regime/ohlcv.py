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

import numpy as np
import pandas as pd

from app.errors import BadInput
from app.timestamps import MAX_EPOCH_NS, epoch_to_ns

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
        # utf-8-sig: a byte-order mark (Excel's UTF-8 export) is not part of the first header
        return pd.read_csv(path, sep=None, engine="python", encoding="utf-8-sig") \
            if path.stat().st_size < 1_000_000 else pd.read_csv(path, encoding="utf-8-sig")
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


_HEAD_BYTES = 1024 * 1024


def check_text_head(path: Path, what: str) -> None:
    """Before a text file is parsed: its first MiB holds no NUL byte (binary or sparse
    files) and at least one line end (a header line cannot be longer than that)."""
    with path.open("rb") as handle:
        head = handle.read(_HEAD_BYTES)
    if b"\x00" in head:
        raise BadInput(f"{what} {path} holds binary data (NUL bytes), not text")
    if len(head) == _HEAD_BYTES and b"\n" not in head and b"\r" not in head:
        raise BadInput(f"{what} {path}: the first line is longer than 1 MiB; not a table")


def _join_date_and_time(df: pd.DataFrame) -> pd.DataFrame:
    """MetaTrader-style exports split the bar time into `Date` and `Time` columns: one
    timestamp from both (unless a full timestamp column is there too)."""
    lowered = {str(c).strip().lower().lstrip("<").rstrip(">"): c for c in df.columns}
    if "date" in lowered and "time" in lowered and not {"timestamp", "datetime"} & set(lowered):
        date_col, time_col = lowered["date"], lowered["time"]
        joined = df[date_col].astype(str).str.strip() + " " + df[time_col].astype(str).str.strip()
        df = df.drop(columns=[date_col, time_col]).assign(timestamp=joined.where(df[date_col].notna()))
    return df


def _rename(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    df = _join_date_and_time(df)
    lowered = {str(c).strip().lower().lstrip("<").rstrip(">"): c for c in df.columns}
    mapping = {}
    for canonical, aliases in _ALIASES.items():
        for alias in aliases:
            if alias in lowered:
                mapping[lowered[alias]] = canonical
                break
    missing = [c for c in (*_REQUIRED, "time") if c not in mapping.values()]
    if missing:
        have = ", ".join(str(c)[:40] for c in df.columns[:12])
        need = ", ".join("timestamp" if m == "time" else m for m in missing)
        raise BadInput(f"OHLCV file {path} lacks column(s) {need} (has: {have or 'none'})")
    return df.rename(columns=mapping)[list(dict.fromkeys(mapping.values()))]


_LATEST = pd.Timestamp("2262-04-11", tz="UTC")  # the last day nanosecond times can hold
_SLASHED = r"^\s*(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4})\b"


def _epoch(numeric: pd.Series, path: Path) -> pd.Series:
    """Epoch numbers, each by its own magnitude (`app.timestamps.EPOCH_UNITS`): a file
    that mixes seconds and milliseconds is read right row by row."""
    ns = epoch_to_ns(numeric.astype("float64").to_numpy())
    if (np.abs(ns[np.isfinite(ns)]) >= MAX_EPOCH_NS).any():
        raise BadInput(f"OHLCV file {path}: epoch times after 2262 cannot be held; check the time unit")
    out = np.where(np.isfinite(ns), np.round(ns), np.iinfo(np.int64).min).astype(np.int64)
    return pd.Series(pd.to_datetime(out, unit="ns", utc=True), index=numeric.index)


def _numeric_dates(numeric: pd.Series, path: Path) -> pd.Series | None:
    """`YYYYMMDD` integers and Excel serial day numbers, which would otherwise read as
    epoch seconds in 1970."""
    values = numeric.astype("float64")
    whole = bool((values == np.floor(values)).all())
    if whole and values.between(19000101, 22001231).all():
        parsed = pd.to_datetime(values.astype("int64").astype(str), format="%Y%m%d", utc=True, errors="coerce")
        if parsed.isna().any():
            raise BadInput(f"OHLCV file {path}: times look like YYYYMMDD but some are not dates")
        return parsed
    if values.between(20_000, 80_000).all():  # Excel serial days: 1954..2119
        return pd.to_datetime(values, unit="D", origin="1899-12-30", utc=True)
    return None


def _day_first(text: pd.Series, path: Path, dayfirst: bool | None) -> bool | None:
    """For `dd/mm/yyyy` versus `mm/dd/yyyy` (also with `.` or `-`): the order the values
    prove, or `dayfirst` when given. Values that fit both orders need `--dayfirst`
    or `--date-format`; values that prove both orders are refused."""
    parts = text.str.extract(_SLASHED)
    found = parts.dropna()
    if found.empty:
        return None
    first, second = found[0].astype(int), found[1].astype(int)
    day_first, month_first = bool((first > 12).any()), bool((second > 12).any())
    if dayfirst is not None:
        if (dayfirst and month_first) or (not dayfirst and day_first):
            raise BadInput(f"OHLCV file {path}: the dates contradict --dayfirst={'yes' if dayfirst else 'no'}")
        return dayfirst
    if day_first and month_first:
        raise BadInput(f"OHLCV file {path}: the dates mix day-first and month-first orders; fix the file "
                       "or give --date-format")
    if not (day_first or month_first):
        raise BadInput(f"OHLCV file {path}: dates like {found.iloc[0].tolist()[0]}/{found.iloc[0].tolist()[1]}/... "
                       "could be day-first or month-first; pass --dayfirst or --date-format (e.g. %d/%m/%Y)")
    return day_first


def _parse_times(col: pd.Series, path: Path, *, date_format: str | None = None,
                 dayfirst: bool | None = None) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):  # Parquet and typed frames: already times
        return pd.to_datetime(col, utc=True)
    if date_format:
        parsed = pd.to_datetime(col.astype(str).str.strip(), format=date_format, utc=True, errors="coerce")
        if parsed.isna().all():
            raise BadInput(f"OHLCV file {path}: no time matches --date-format {date_format!r}")
        return parsed
    numeric = pd.to_numeric(col, errors="coerce")
    if numeric.notna().all() and len(col):
        dates = _numeric_dates(numeric, path)
        return dates if dates is not None else _epoch(numeric, path)
    text = col.astype(str).str.strip()
    order = _day_first(text, path, dayfirst)
    try:
        return pd.to_datetime(text, utc=True, format="mixed", errors="coerce", dayfirst=bool(order))
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadInput(f"OHLCV file {path}: cannot parse times ({exc})") from None


def load_ohlcv(path: str | Path, *, symbol: str | None = None, date_format: str | None = None,
               dayfirst: bool | None = None) -> OhlcvData:
    """Read and clean an OHLCV file. With `symbol`, only that instrument's rows (when
    the file has a symbol column). `date_format` (strftime codes) or `dayfirst` settle
    dates the values cannot."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BadInput(f"OHLCV file {p} does not exist")
    if not p.is_file():
        raise BadInput(f"OHLCV path {p} is not a file")
    if p.stat().st_size == 0:
        raise BadInput(f"OHLCV file {p} is empty")
    if p.stat().st_size > _MAX_BYTES:
        raise BadInput(f"OHLCV file {p} is larger than 4 GiB; split it by symbol")
    if p.suffix.lower() not in (".parquet", ".pq"):
        check_text_head(p, "OHLCV file")
    return clean_ohlcv(_rename(_read(p), p), p, symbol=symbol, date_format=date_format, dayfirst=dayfirst)


def frame_series(frame: pd.DataFrame, *, symbol: str | None = None, label: str = "OHLCV rows") -> Series:
    """One instrument's cleaned bars from an in-memory frame (the API's OHLCV rows): the
    same aliases, time parsing, sanity checks and de-duplication as a file."""
    # Optional columns left empty (no open, no volume) are absent, not NaN prices.
    data = clean_ohlcv(_rename(frame.dropna(axis=1, how="all"), Path(label)), Path(label), symbol=symbol)
    if len(data.series) != 1:
        raise BadInput(f"{label} hold {len(data.series)} symbols: give one symbol")
    return next(iter(data.series.values()))


def clean_ohlcv(df: pd.DataFrame, p: Path, *, symbol: str | None = None, date_format: str | None = None,
                dayfirst: bool | None = None) -> OhlcvData:
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
    df["time"] = _parse_times(df["time"], p, date_format=date_format, dayfirst=dayfirst)
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
    digits = "".join(ch for ch in text if ch in "0123456789")
    unit = text[len(digits):]
    if not digits or unit not in _UNITS or int(digits) <= 0:
        raise BadInput(f"unknown timeframe {timeframe!r}; use forms like 15m, 1h, 4h, 1d")
    return int(digits) * _UNITS[unit]


_DAY_NS = 86_400 * 1_000_000_000


def bar_seconds_of(data: OhlcvData) -> int | None:
    """The file's bar size: the median gap between bars of its longest series (None
    with fewer than 3 bars)."""
    return series_bar_seconds(max(data.series.values(), key=len))


def series_bar_seconds(series: Series) -> int | None:
    """The median gap between a series' bars in seconds (None with fewer than 3 bars)."""
    if len(series) < 3:
        return None
    return max(1, round(float(np.median(np.diff(series.ts))) / 1e9))


def timeframe_label(seconds: int) -> str:
    """`86400` -> `1d`, `14400` -> `4h`, `900` -> `15m`."""
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "m")):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def check_timeframe(data: OhlcvData, timeframe: str | None) -> tuple[str, int]:
    """The timeframe to use and its seconds per bar: the file's own when none is given;
    a given one that disagrees with the file's bar spacing is refused."""
    detected = bar_seconds_of(data)
    if timeframe is None:
        if detected is None:
            raise BadInput(f"OHLCV file {data.path}: too few bars to tell the bar size; pass --timeframe")
        return timeframe_label(detected), detected
    seconds = timeframe_seconds(timeframe)
    if detected is not None and not detected / 1.5 <= seconds <= detected * 1.5:
        raise BadInput(f"OHLCV file {data.path} has bars {timeframe_label(detected)} apart but --timeframe is "
                       f"{timeframe}; pass --timeframe {timeframe_label(detected)} or leave it out")
    return timeframe.strip(), seconds


def calendar_slack_ns(series: Series, bar_ns: int) -> int:
    """How far a window's first or last bar may lie from its start or end: one bar, or
    the gaps the file itself has between sessions (weekends, nights, holidays: the 99th
    percentile of its gaps), at most 5 days."""
    if len(series) < 2:
        return bar_ns
    usual = float(np.quantile(np.diff(series.ts), 0.99))
    return int(max(bar_ns, min(usual, 5 * _DAY_NS)))


def frame_arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """A frame's usable bars (high, low, close all finite): times (ns), high, low, close, and the row count."""
    cols = {str(c).lower(): c for c in df.columns}
    missing = [c for c in ("high", "low", "close") if c not in cols]
    if missing:
        raise ValueError(f"OHLCV frame lacks column(s): {', '.join(missing)}")
    times: pd.DatetimeIndex | None
    if isinstance(df.index, pd.DatetimeIndex):
        times = df.index
    else:
        time_col = next((cols[c] for c in ("timestamp", "ts", "time", "datetime", "date") if c in cols), None)
        times = pd.DatetimeIndex(pd.to_datetime(df[time_col], utc=True)) if time_col is not None else None
    h = pd.to_numeric(df[cols["high"]], errors="coerce").to_numpy(dtype=np.float64)
    lo = pd.to_numeric(df[cols["low"]], errors="coerce").to_numpy(dtype=np.float64)
    c = pd.to_numeric(df[cols["close"]], errors="coerce").to_numpy(dtype=np.float64)
    keep = np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)
    if times is not None:
        if times.tz is None:
            times = times.tz_localize("UTC")
        ts = times.tz_convert("UTC").as_unit("ns").asi8.astype(np.int64)
    else:
        ts = np.arange(len(df), dtype=np.int64) * 0
    total = len(df)
    return ts[keep], h[keep], lo[keep], c[keep], total
