"""Extract OOS metrics from a run's `summary`, never raising on messy data.

Summaries in the wild are JSON objects, JSON strings holding an object (sometimes with
Python's NaN/Infinity literals), null, or hold strings where numbers belong. Everything
unusable becomes a reason (`invalid_summary`, `invalid_metrics`) instead of an error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

from app.services.kb.runs.gate import INVALID_METRICS, INVALID_SUMMARY, VariantMetricsForCandidacy


class _Invalid(Exception):
    pass


def to_number(value: Any) -> float | None:
    """None for absent/null; a finite float; raises `_Invalid` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Invalid
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range (PostgreSQL prints 1e309 so)
            raise _Invalid from None
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            raise _Invalid from None
    else:
        raise _Invalid
    if not math.isfinite(number):
        raise _Invalid
    return number


def _num(value: Any) -> float | None:
    """`to_number` with a fast path for the plain numbers almost every summary holds."""
    kind = type(value)
    if kind is float:
        if value - value != 0.0:  # NaN or infinity
            raise _Invalid
        return float(value)
    if kind is int and -(2**63) <= value < 2**63:
        return float(value)
    return to_number(value)


def decode_summary(raw: Any) -> dict[str, Any] | None:
    """The summary as a dict, or None when it is not (or does not hold) a JSON object.

    `raw` may be a dict, JSON text of an object, or JSON text of a string that itself
    holds JSON (double-encoded legacy rows).
    """
    if type(raw) is str:  # the common case, JSON text of an object: one parse
        try:
            first = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if type(first) is dict:
                return first
    value = raw
    for _ in range(3):  # object, JSON text, double-encoded JSON text
        if isinstance(value, dict):
            return value
        if not isinstance(value, str | bytes):
            return None
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            try:
                # Python's json accepts NaN/Infinity literals that some writers emitted.
                value = json.loads(value)
            except (ValueError, RecursionError):
                return None
    return value if isinstance(value, dict) else None


def json_object(raw: Any) -> dict[str, Any]:
    """A JSON object column (dataset_meta, params, regime) as a dict; {} when it is not one."""
    return decode_summary(raw) or {} if raw is not None else {}


@dataclass(frozen=True, slots=True)
class ExtractedMetrics:
    metrics: VariantMetricsForCandidacy | None
    reason: str | None  # None when usable
    return_frac: float | None = None
    win_rate: float | None = None
    profit_factor: float | None = None


def extract_metrics(summary: Any, trade_count: Any = None) -> ExtractedMetrics:
    """The gate's inputs from a run's `summary` and `trade_count` column."""
    data = decode_summary(summary) if summary is not None else None
    if data is None:
        return ExtractedMetrics(None, INVALID_SUMMARY)
    try:
        trades = _num(trade_count)
        if trades is None:
            trades = _num(data.get("trades"))
        if trades is None:
            trades = _num(data.get("trade_count"))
        if trades is None:
            trades = 0.0
        if trades < 0 or trades != int(trades) or trades > 2**31:
            raise _Invalid
        dd_pct = _num(data.get("max_drawdown_pct"))
        sharpe = _num(data.get("sharpe"))
        return_pct = _num(data.get("return_pct"))
        win_rate = _num(data.get("win_rate"))
        profit_factor = _num(data.get("profit_factor"))
    except _Invalid:
        return ExtractedMetrics(None, INVALID_METRICS)
    metrics = VariantMetricsForCandidacy(
        n_trades_oos=int(trades),
        max_dd_frac_oos=None if dd_pct is None else abs(dd_pct) / 100.0,
        sharpe_oos=sharpe,
        overfit_gap=None,  # in-sample metrics are not stored for test variants
    )
    return ExtractedMetrics(
        metrics,
        None,
        return_frac=None if return_pct is None else return_pct / 100.0,
        win_rate=win_rate,
        profit_factor=profit_factor,
    )
