"""Validate imported rows in bulk: one pass per column, not per cell.

The result is the records to stage (one tuple per good row, in `STAGING_COLUMNS`
order) and a reason for every bad row, keyed by its 1-based row number in the file.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd

from app.ids import time_ordered_ids
from app.services.kb.importing.fields import Mapping, split_strategy_repr
from app.services.kb.importing.jsontext import json_objects
from app.services.kb.runs.summary import decode_summary
from app.timestamps import EARLIEST, LATEST, RANGE_TEXT, epoch_to_ns

STAGING_COLUMNS = ("source_id", "created_at", "run_kind", "status", "strategy_name", "experiment_type", "params",
                   "dataset_meta", "summary", "trade_count")
# The `backtest_runs` columns an import writes: a checked record, then where it came from.
RUN_COLUMNS = ("import_source_id", *STAGING_COLUMNS[1:], "workspace_id", "import_source", "id")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The checked values a row is made of (its content hash, when it has no id of its own).
_CONTENT = ("created_at", "run_kind", "status", "strategy_name", "experiment_type", "params", "symbol",
            "timeframe", "oos_start", "oos_end", "trades", "sharpe", "max_drawdown_pct", "return_pct", "win_rate",
            "profit_factor")
# In-sample window fields join a row's content hash only when given, so files exported
# before they existed hash as they always did.
_CONTENT_WHEN_GIVEN = ("is_start", "is_end")
_META = ("symbol", "timeframe", "oos_start", "oos_end", "is_start", "is_end")
_METRICS = ("trades", "sharpe", "max_drawdown_pct", "return_pct", "win_rate", "profit_factor")
RUN_KINDS = frozenset({"backtest", "tune_variant", "test_variant"})
STATUSES = frozenset({"pending", "running", "completed", "failed", "skipped", "success"})
DEFAULTS = {"run_kind": "test_variant", "status": "completed", "experiment_type": "sweep"}
MAX_TEXT = 500
MAX_TRADES = 2**31 - 1  # the trade_count column is a 32-bit integer
_MIN_TS = pd.Timestamp(EARLIEST)
_MAX_TS = pd.Timestamp(LATEST)


@dataclass
class Prepared:
    records: list[tuple[Any, ...]]
    errors: list[tuple[int, str]] = field(default_factory=list)  # (row number, reason)
    total: int = 0
    notes: dict[str, int] = field(default_factory=dict)  # kept rows with a value left out, by why


class _Checker:
    """Collects the first reason each row is bad; the offending value is shown only for
    the rows flagged, so a clean column costs no string formatting."""

    def __init__(self, index: pd.Index) -> None:
        self.bad = pd.Series("", index=index, dtype=object)

    def flag(self, mask: pd.Series, reason: str, shown: pd.Series | None = None) -> None:
        fresh = mask.to_numpy(dtype=bool, na_value=False) & (self.bad.to_numpy() == "")
        if not fresh.any():
            return
        if shown is None:
            self.bad[fresh] = reason
        else:
            values = shown[fresh].astype(str).str.slice(0, 40).map(repr)
            self.bad[fresh] = (reason + ": " + values).to_numpy()


def _blank_to_na(series: pd.Series) -> pd.Series:
    """Text stripped; empty text is missing. Non-text values pass unchanged."""
    if isinstance(series.dtype, pd.StringDtype):
        stripped = series.str.strip()
        return stripped.mask(stripped == "")
    if series.dtype == object:
        try:
            stripped = series.str.strip()
        except AttributeError:  # no text in the column at all
            return series
        kept = series.where(stripped.isna(), stripped)
        return kept.mask((stripped == "").fillna(False).astype(bool))
    return series


def _text(series: pd.Series, name: str, check: _Checker) -> pd.Series:
    values = _blank_to_na(series)
    present = values.notna()
    if isinstance(values.dtype, pd.StringDtype):
        text = values
    else:
        text = values.where(~present, values.astype(str).str.strip()).astype(object)
    check.flag(present & text.str.contains("\x00", regex=False).fillna(False).astype(bool),
               f"{name} contains a NUL character")
    check.flag(present & (text.str.len() > MAX_TEXT).fillna(False).astype(bool),
               f"{name} is longer than {MAX_TEXT} characters")
    return text


def _number(series: pd.Series, name: str, check: _Checker, scale: float) -> pd.Series:
    if series.dtype.kind in "iuf":
        numbers = series.astype("float64")
    elif series.dtype.kind == "b":
        check.flag(series.notna(), f"{name} is not a number")
        return pd.Series(np.nan, index=series.index)
    else:
        values = _blank_to_na(series)
        if values.dtype == object:  # JSON true/false must not read as 1/0
            booleans = pd.Series(np.fromiter((type(v) is bool for v in values), bool, len(values)),
                                 index=values.index)
            if booleans.any():
                check.flag(booleans, f"{name} is not a number")
                values = values.mask(booleans)
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        check.flag(values.notna() & numbers.isna(), f"{name} is not a number", values)
    finite = np.isfinite(numbers.to_numpy())
    check.flag(numbers.notna() & ~finite, f"{name} is not a finite number")
    numbers = numbers.where(finite)
    return numbers * scale if scale != 1.0 else numbers


def _count(series: pd.Series, name: str, check: _Checker) -> pd.Series:
    numbers = _number(series, name, check, 1.0)
    present = numbers.notna()
    check.flag(present & (numbers != np.floor(numbers.fillna(0.0))), f"{name} is not a whole number")
    check.flag(present & ((numbers < 0) | (numbers > MAX_TRADES)), f"{name} is out of range (0..{MAX_TRADES:,})")
    return numbers


def _enum(series: pd.Series, name: str, check: _Checker, allowed: frozenset[str]) -> pd.Series:
    text = _text(series, name, check).str.lower()
    check.flag(text.notna() & ~text.isin(allowed), f"unknown {name} (one of {', '.join(sorted(allowed))})", series)
    return text


def _timestamps(series: pd.Series, name: str, check: _Checker) -> pd.Series:
    """ISO 8601 (naive means UTC), native timestamps, or epoch numbers (`app.timestamps`)."""
    values = _blank_to_na(series)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    if values.isna().all():  # a field not given (or given as blanks): nothing to parse or flag
        return out
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(values.dtype):
        out = pd.to_datetime(values, utc=True, errors="coerce").astype("datetime64[us, UTC]")
    else:
        numbers = (values.astype("float64") if values.dtype.kind in "iuf"
                   else pd.to_numeric(values, errors="coerce"))
        numeric = numbers.notna()
        if numeric.any():
            raw = numbers[numeric].astype("float64").to_numpy()
            seconds = epoch_to_ns(raw) / 1e9
            ok = np.isfinite(seconds) & (np.abs(seconds) < 7.2e9)  # within 1742..2198
            micros = np.where(ok, np.round(seconds * 1e6), 0).astype("int64")
            stamped = pd.Series(pd.to_datetime(micros, unit="us", utc=True), index=numbers.index[numeric])
            out[numeric] = stamped.where(ok)
        text = values.notna() & ~numeric
        if text.any():
            raw_text = values[text].astype(str).str.replace(r"[zZ]$", "+00:00", regex=True)
            out[text] = pd.to_datetime(raw_text, utc=True, errors="coerce", format="ISO8601")
    present = values.notna()
    check.flag(present & out.isna(), f"{name} is not a timestamp", values)
    inside = (out >= _MIN_TS) & (out <= _MAX_TS)
    check.flag(out.notna() & ~inside, f"{name} is outside {RANGE_TEXT}")
    return out.where(inside)


def _param_values(series: pd.Series) -> list[Any]:
    """A param column as plain values; floats that are all whole numbers (ints read with
    blanks) become ints again."""
    values = _list(series)
    if series.dtype.kind == "f":
        present = [v for v in values if v is not None]
        if present and all(math.isfinite(v) and v == int(v) for v in present):
            return [None if v is None else int(v) for v in values]
        return [None if v is None or not math.isfinite(v) else v for v in values]
    return values


def _params(frame: pd.DataFrame, mapping: Mapping, check: _Checker) -> list[dict[str, Any]]:
    n = len(frame)
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    if mapping.strategy_repr is not None and "strategy_name" not in mapping.columns:
        for i, value in enumerate(frame[mapping.strategy_repr].tolist()):
            split = split_strategy_repr(value) if isinstance(value, str) else None
            if split is not None:
                out[i].update(split[1])
    if "params" in mapping.columns or "params" in mapping.constants:
        raw = (frame[mapping.columns["params"]].tolist() if "params" in mapping.columns
               else [mapping.constants["params"]] * n)
        bad = np.zeros(n, dtype=bool)
        for i, value in enumerate(raw):
            if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
                continue
            obj = decode_summary(value)  # a dict, or JSON text of one
            if obj is None:
                bad[i] = True
            else:
                out[i].update(obj)
        check.flag(pd.Series(bad, index=frame.index), "params is not a JSON object")
    if mapping.param_columns:
        names = list(mapping.param_columns)
        given = _dicts(names, [_param_values(frame[mapping.param_columns[p]]) for p in names], n)
        if not any(out):  # the param columns are the only params: no merging needed
            return given
        for target, extra in zip(out, given, strict=True):
            target.update(extra)
    return out


def _dicts(keys: list[str], columns: list[list[Any]], n: int) -> list[dict[str, Any]]:
    """One dict per row of the columns' values, leaving out missing (None) values.
    Columns with no value at all are dropped first; if no column has gaps, the rows
    are zipped whole (the common case: no per-value test)."""
    kept = [(k, c) for k, c in zip(keys, columns, strict=True) if c.count(None) < n]
    names = [k for k, _ in kept]
    values = [c for _, c in kept]
    if not kept:
        return [{} for _ in range(n)]
    if any(None in c for c in values):
        return [{k: v for k, v in zip(names, row, strict=True) if v is not None}
                for row in zip(*values, strict=True)]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _column(frame: pd.DataFrame, mapping: Mapping, name: str) -> pd.Series | None:
    if name in mapping.columns:
        return frame[mapping.columns[name]]
    if name in mapping.constants:
        return pd.Series([mapping.constants[name]] * len(frame), index=frame.index, dtype=object)
    return None


def _list(series: pd.Series) -> list[Any]:
    """Plain Python values, None for missing."""
    if series.dtype.kind == "f":
        return [None if v != v else v for v in series.to_numpy().tolist()]  # noqa: PLR0124 (NaN test)
    missing = series.isna().to_numpy()
    values = series.to_numpy(dtype=object).tolist()
    if missing.any():
        return [None if m else v for v, m in zip(values, missing.tolist(), strict=True)]
    return values


def _micros(series: pd.Series) -> list[int | None]:
    """Timestamps as microseconds since the epoch (the staging table's form)."""
    missing = series.isna().to_numpy()
    naive = series.astype("datetime64[us, UTC]").dt.tz_convert(None)
    values = naive.to_numpy(dtype="datetime64[us]").view("int64").tolist()
    return [None if m else v for v, m in zip(values, missing.tolist(), strict=True)]


def prepare(frame: pd.DataFrame, mapping: Mapping, first_row: int = 1) -> Prepared:
    """Check every row; bad rows get a reason, good rows become staging records."""
    frame = frame.reset_index(drop=True)
    n = len(frame)
    check = _Checker(frame.index)
    empty = pd.Series([None] * n, index=frame.index, dtype=object)

    def get(name: str) -> pd.Series:
        found = _column(frame, mapping, name)
        return empty if found is None else found

    strategy = _text(get("strategy_name"), "strategy_name", check)
    if mapping.strategy_repr is not None and "strategy_name" not in mapping.columns:
        names = frame[mapping.strategy_repr].map(
            lambda v: (split_strategy_repr(v) or (None, None))[0] if isinstance(v, str) else None)
        strategy = strategy.where(strategy.notna(), names)
    text = {f: _text(get(f), f, check) for f in ("symbol", "timeframe", "experiment_type", "source_id")}
    kinds = _enum(get("run_kind"), "run_kind", check, RUN_KINDS)
    statuses = _enum(get("status"), "status", check, STATUSES)
    stamps = {f: _timestamps(get(f), f, check) for f in ("oos_start", "oos_end", "is_start", "is_end", "created_at")}
    trades = _count(get("trades"), "trades", check)
    # A profit factor is +inf when no trade lost (vectorbt exports it so): left out, not refused.
    factor = pd.to_numeric(_blank_to_na(get("profit_factor")), errors="coerce")
    no_losses = factor == np.inf
    metrics = {f: _number(get(f).mask(no_losses) if f == "profit_factor" else get(f), f, check, mapping.scale(f))
               for f in ("sharpe", "max_drawdown_pct", "return_pct", "win_rate", "profit_factor")}
    params = None if _params_from_columns_only(mapping) else _params(frame, mapping, check)
    check.flag(strategy.isna(), "no strategy_name")
    for prefix in ("oos", "is"):
        _check_window(stamps[f"{prefix}_start"], stamps[f"{prefix}_end"], prefix, check)
    no_trades = trades.notna() & (trades == 0) & metrics["sharpe"].isna()

    good = (check.bad == "").to_numpy()
    bad_rows = np.flatnonzero(~good)
    errors = [(first_row + int(i), str(check.bad.iat[int(i)])) for i in bad_rows]
    keep = np.flatnonzero(good)
    sub = lambda s: s.iloc[keep]  # noqa: E731
    params_json = _params_json(frame, mapping, params, keep.tolist())
    columns: dict[str, list[Any]] = {
        "created_at": _micros(sub(stamps["created_at"])),
        "run_kind": _list(sub(kinds)),
        "status": _list(sub(statuses)),
        "strategy_name": _list(sub(strategy)),
        "params": params_json,
        **{f: _iso(sub(stamps[f])) for f in ("oos_start", "oos_end", "is_start", "is_end")},
        "trades": [None if v is None else int(v) for v in _list(sub(trades))],
        **{f: _list(sub(s)) for f, s in text.items()},
        **{f: _list(sub(s)) for f, s in metrics.items()},
    }
    for name, default in DEFAULTS.items():
        columns[name] = [default if v is None else v for v in columns[name]]
    columns["source_id"] = _source_ids(columns)
    columns["dataset_meta"] = _objects(columns, _META)
    columns["summary"] = _objects(columns, _METRICS)
    columns["trade_count"] = columns["trades"]
    records = list(zip(*(columns[c] for c in STAGING_COLUMNS), strict=True)) if len(keep) else []
    notes = {"profit_factor infinite (no losing trade), left out": int(no_losses.to_numpy()[keep].sum()),
             "no trades and no Sharpe: kept, counted as evidence with Sharpe 0": int(no_trades.to_numpy()[keep].sum())}
    return Prepared(records=records, errors=errors, total=n, notes={k: v for k, v in notes.items() if v})


def _params_from_columns_only(mapping: Mapping) -> bool:
    return not (mapping.strategy_repr is not None and "strategy_name" not in mapping.columns) and not (
        "params" in mapping.columns or "params" in mapping.constants)


def _params_json(frame: pd.DataFrame, mapping: Mapping, params: list[dict[str, Any]] | None,
                 keep: list[int]) -> list[str]:
    """The kept rows' params as JSON text with sorted keys. From param columns alone
    (`params` None) the keys are sorted here, as OPT_SORT_KEYS would."""
    if params is not None:
        return [orjson.dumps(params[i], option=orjson.OPT_SORT_KEYS).decode() for i in keep]
    names = sorted(mapping.param_columns)
    given = [_param_values(frame[mapping.param_columns[p]]) for p in names]
    return json_objects(names, [[values[i] for i in keep] for values in given], len(keep))


def run_records(records: list[tuple[Any, ...]], workspace_id: uuid.UUID, source: str,
                imported_at: datetime) -> list[tuple[Any, ...]]:
    """Checked records as `RUN_COLUMNS` rows; a row with no creation time gets the import's.
    Ids are time-ordered (`app.ids`)."""
    ids = time_ordered_ids(len(records))
    return [(r[0], imported_at if r[1] is None else _EPOCH + timedelta(microseconds=r[1]), *r[2:],
             workspace_id, source, i) for r, i in zip(records, ids, strict=True)]


def _check_window(start: pd.Series, end: pd.Series, prefix: str, check: _Checker) -> None:
    check.flag(start.notna() & end.notna() & (end < start), f"{prefix}_end is before {prefix}_start")
    check.flag(start.notna() ^ end.notna(), f"{prefix}_start and {prefix}_end must be given together")


def _objects(columns: dict[str, list[Any]], keys: tuple[str, ...]) -> list[str]:
    """JSON objects of the given columns, leaving out missing values."""
    values = [columns[k] for k in keys]
    return json_objects(keys, values, len(values[0]))


def _iso(series: pd.Series) -> list[str | None]:
    """Timestamps as ISO 8601 UTC text, to the second, as `dataset_meta` keeps them."""
    missing = series.isna().to_numpy()
    if missing.all():
        return [None] * len(series)
    naive = series.astype("datetime64[us, UTC]").dt.tz_convert(None).to_numpy(dtype="datetime64[s]")
    text = np.char.add(np.datetime_as_string(naive, unit="s"), "Z").tolist()
    if missing.any():
        return [None if m else t for t, m in zip(text, missing.tolist(), strict=True)]
    return text


def _source_ids(columns: dict[str, list[Any]]) -> list[str]:
    """The row's own id, or a hash of its content (so re-importing it adds nothing)."""
    out = []
    for own, *values in zip(columns["source_id"], *(columns[c] for c in (*_CONTENT, *_CONTENT_WHEN_GIVEN)),
                            strict=True):
        if own is not None:
            out.append(own)
            continue
        text = "\x1f".join("" if v is None else repr(v) for v in values[:len(_CONTENT)])
        extra = values[len(_CONTENT):]
        if any(v is not None for v in extra):
            text += "\x1f" + "\x1f".join("" if v is None else repr(v) for v in extra)
        out.append("sha1:" + hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest())
    return out

