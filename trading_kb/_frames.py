"""Database rows as pandas DataFrames: JSON columns expanded, times as UTC timestamps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pandas as pd

from app.services.kb.runs.summary import decode_summary

WORKSPACE_COLUMNS = ("id", "name", "created_at", "runs", "trials")
TRIAL_COLUMNS = ("id", "source_run_id", "strategy_name", "symbol", "timeframe", "experiment_type", "kb_status",
                 "sharpe", "return_frac", "max_dd_frac", "win_rate", "profit_factor", "n_trades", "dsr",
                 "regime_tags", "regime_pre_tags", "regime_ts_end", "ingested_at", "updated_at")
RUN_COLUMNS = ("id", "created_at", "run_kind", "status", "strategy_name", "experiment_type", "kb_status",
               "import_source", "trade_count", "regime_tags")
# The dataset_meta keys that hold times; every other key is kept as it is.
META_TIMES = ("oos_start", "oos_end", "is_start", "is_end")
TIME_COLUMNS = ("created_at", "regime_ts_end", "ingested_at", "updated_at", *META_TIMES)
PARAM_PREFIX = "param_"


def _object(raw: Any) -> dict[str, Any]:
    """A JSON object column's value as a dict ({} for NULL, bad JSON or a non-object)."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str | bytes):
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _times(frame: pd.DataFrame) -> pd.DataFrame:
    """Time columns as UTC timestamps; a value pandas cannot hold (beyond 2262) is NaT."""
    for column in TIME_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce", format="mixed")
    return frame


def _ids(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """UUID columns as text: they compare, print, group and save to Parquet like strings."""
    for column in columns:
        if column in frame.columns:
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    return frame


def _expand(base: pd.DataFrame, parts: Sequence[tuple[list[dict[str, Any]], str, str]]) -> pd.DataFrame:
    """`base` with one column per key of each list of dicts (one dict per row). A key is
    named `<prefix><key>`; when that name is taken already, `<fallback><key>`."""
    blocks = [base]
    taken = set(base.columns)
    for dicts, prefix, fallback in parts:
        block = pd.DataFrame.from_records(dicts, index=base.index) if dicts else pd.DataFrame(index=base.index)
        names = {}
        for key in block.columns:
            name = f"{prefix}{key}"
            names[key] = name if name not in taken else f"{fallback}{key}"
            taken.add(names[key])
        blocks.append(block.rename(columns=names))
    return pd.concat(blocks, axis=1)


def workspaces_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """`list_workspaces` as a frame: id, name, created_at (UTC), runs, trials."""
    frame = pd.DataFrame.from_records(rows, columns=list(WORKSPACE_COLUMNS))
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame.astype({"runs": "int64", "trials": "int64"})


def trials_frame(rows: Sequence[Any]) -> pd.DataFrame:
    """Active trials (rows by column name, such as asyncpg Records), one row each, their
    parameters as `param_<name>` columns."""
    base = pd.DataFrame.from_records([[r[c] for c in TRIAL_COLUMNS] for r in rows], columns=list(TRIAL_COLUMNS))
    params = [_object(r["params"]) for r in rows]
    frame = _expand(base, [(params, PARAM_PREFIX, "param__")])
    return _times(_ids(frame, ("id", "source_run_id")))


def runs_frame(rows: Sequence[Any]) -> pd.DataFrame:
    """Runs, one row each: `dataset_meta` keys (symbol, timeframe, oos_start, ...) and
    `summary` metrics (sharpe, trades, ...) as columns of their own names, parameters as
    `param_<name>`; a key whose name is taken already gets a `meta_` or `summary_` prefix."""
    base = pd.DataFrame.from_records([[r[c] for c in RUN_COLUMNS] for r in rows], columns=list(RUN_COLUMNS))
    meta = [_object(r["dataset_meta"]) for r in rows]
    summary = [decode_summary(r["summary"]) or {} for r in rows]
    params = [_object(r["params"]) for r in rows]
    frame = _expand(base, [(meta, "", "meta_"), (summary, "", "summary_"), (params, PARAM_PREFIX, "param__")])
    return _times(_ids(frame, ("id",)))
