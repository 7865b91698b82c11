"""A notebook's arguments made into what the app takes: the regime of prices, tags, times, paths."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from app.errors import BadInput
from app.services.kb.regime.features import current_regime
from app.services.kb.regime.ohlcv import OhlcvData, Series, check_timeframe, frame_series, load_ohlcv
from app.services.kb.regime.snapshot import RegimeSnapshot
from app.timestamps import BadTimestamp, parse_timestamp

PathLike = str | os.PathLike[str]
FRAME_LABEL = "ohlcv DataFrame"
TIME_NAMES = ("timestamp", "time", "datetime", "date", "ts")
METHODS = ("expected", "median")


def paths(value: PathLike | Iterable[PathLike] | None, what: str) -> tuple[Path, ...]:
    """One path or several as a tuple of Paths (a lone string is one path, not characters)."""
    if value is None:
        return ()
    if isinstance(value, str | os.PathLike):
        return (Path(value),)
    if isinstance(value, pd.DataFrame):
        raise BadInput(f"{what} takes file paths; import a DataFrame with import_runs(df, ...)")
    items = list(value)
    if not all(isinstance(v, str | os.PathLike) for v in items):
        raise BadInput(f"{what} takes a file path or a list of them")
    return tuple(Path(v) for v in items)


def tags(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Regime tags from `"trend_up,high_vol"` or a list of names."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(t).strip() for t in items if str(t).strip())


def as_of(value: datetime | str | None) -> datetime | None:
    """A UTC time from a datetime, a pandas Timestamp or ISO text (naive means UTC)."""
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except BadTimestamp as exc:
        raise BadInput(f"as_of: {exc}") from None


def method(value: str) -> str:
    if value not in METHODS:
        raise BadInput(f"method must be one of {', '.join(METHODS)}, got {value!r}")
    return value


def _flatten_columns(frame: pd.DataFrame, symbol: str | None) -> pd.DataFrame:
    """yfinance-style two-level columns (field, ticker) reduced to one ticker's fields."""
    columns = frame.columns
    if not isinstance(columns, pd.MultiIndex):
        return frame
    if columns.nlevels != 2:
        raise BadInput(f"the {FRAME_LABEL} has {columns.nlevels} column levels; give one level of column names")
    tickers = [str(t) for t in columns.get_level_values(1).unique()]
    if len(tickers) == 1:
        return frame.droplevel(1, axis=1)
    wanted = [t for t in tickers if symbol is not None and t.upper() == symbol.strip().upper()]
    if not wanted:
        raise BadInput(f"the {FRAME_LABEL} holds {len(tickers)} tickers ({', '.join(tickers[:5])}): pass symbol=")
    picked = frame.xs(wanted[0], axis=1, level=1)
    return picked if isinstance(picked, pd.DataFrame) else picked.to_frame()


def normalise_frame(frame: pd.DataFrame, symbol: str | None) -> pd.DataFrame:
    """Columns as text (any case: timestamp, open, high, low, close, volume, symbol); a
    DatetimeIndex is the time when no column holds it."""
    out = _flatten_columns(frame, symbol)
    out = out.rename(columns=lambda c: str(c).strip())
    has_time = any(str(c).lower() in TIME_NAMES for c in out.columns)
    if not has_time and isinstance(out.index, pd.DatetimeIndex):
        out = out.reset_index(drop=False, names="timestamp")
    elif not has_time and out.index.name is not None and str(out.index.name).lower() in TIME_NAMES:
        out = out.reset_index(drop=False)
    return out.reset_index(drop=True)


def _series_of_frame(frame: pd.DataFrame, symbol: str | None) -> Series:
    if frame.empty:
        raise BadInput(f"the {FRAME_LABEL} has no rows")
    return frame_series(normalise_frame(frame, symbol), symbol=symbol, label=FRAME_LABEL)


def _series_of_file(path: Path, symbol: str | None) -> Series:
    data = load_ohlcv(path, symbol=symbol)
    if len(data.series) != 1:
        raise BadInput(f"OHLCV file {path} holds {len(data.series)} symbols: pass symbol=")
    return next(iter(data.series.values()))


def regime(ohlcv: pd.DataFrame | PathLike, symbol: str | None, timeframe: str | None) -> RegimeSnapshot:
    """The current regime: the trailing bars of a price file or DataFrame (one instrument).
    The bar size is the prices' own; a `timeframe` that disagrees with it is refused."""
    if isinstance(ohlcv, pd.DataFrame):
        series, where = _series_of_frame(ohlcv, symbol), Path(FRAME_LABEL)
    elif isinstance(ohlcv, str | os.PathLike):
        where = Path(ohlcv)
        series = _series_of_file(where, symbol)
    else:
        raise BadInput(f"ohlcv takes a DataFrame or a file path, not {type(ohlcv).__name__}")
    data = OhlcvData(where, {series.symbol: series}, has_symbol_column=False, rows=len(series))
    label, _seconds = check_timeframe(data, timeframe)
    return current_regime(series, timeframe=label, source="python")


def import_frame_of(df: Any) -> pd.DataFrame:
    """The runs to import: a DataFrame with text column names (a named index is a column)."""
    if not isinstance(df, pd.DataFrame):
        raise BadInput(f"import_runs takes a pandas DataFrame, not {type(df).__name__}; "
                       "for files use sync(imports=[...])")
    frame = df.reset_index() if any(n is not None for n in df.index.names) else df
    return frame.rename(columns=str)


def pairs(value: dict[str, Any] | None, what: str) -> dict[str, str]:
    """`map=` or `set=`: field names to text."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"{what} takes a dict of field -> {'column' if what == 'map' else 'value'}")
    return {str(k).strip(): str(v) for k, v in value.items()}
