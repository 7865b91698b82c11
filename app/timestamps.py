"""Timestamps, one set of rules for every input (run windows, imports, API bodies, OHLCV
files): the accepted range, how an epoch number's unit is read from its magnitude, and
datetime to epoch nanoseconds. Scalar and vectorised forms share the same constants."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

# Timestamps a run, an import or an API body may carry.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
RANGE_TEXT = "1900..2200"

# An epoch number's unit by its magnitude: below a bound, that unit (1e11 s is the year
# 5138, so a larger number cannot be seconds); above them all, nanoseconds.
EPOCH_UNITS: tuple[tuple[float, str, float], ...] = (
    (1e11, "s", 1e9), (1e14, "ms", 1e6), (1e17, "us", 1e3), (math.inf, "ns", 1.0))
# The largest epoch nanosecond count an int64 (and so pandas) can hold: 2262-04-11.
MAX_EPOCH_NS = 9.2e18


class BadTimestamp(ValueError):
    pass


def epoch_to_ns(values: np.ndarray) -> np.ndarray:
    """Epoch numbers (float64) to nanoseconds, each by its own magnitude (a column that
    mixes seconds and milliseconds is read right row by row). NaN stays NaN; values past
    MAX_EPOCH_NS come out beyond it for the caller to refuse."""
    out = np.full(len(values), np.nan)
    magnitude = np.abs(values)
    lower = 0.0
    for bound, _unit, scale in EPOCH_UNITS:
        rows = (magnitude >= lower) & (magnitude < bound)
        out[rows] = values[rows] * scale
        lower = bound
    return out


# "No time known" in int64 nanosecond arrays (times before 1970 are negative, so not -1).
UNKNOWN_NS = -(2**63)


def to_ns(value: datetime | None) -> int:
    """Epoch nanoseconds of an aware datetime (microsecond precision, as stored); UNKNOWN_NS for None."""
    if value is None:
        return UNKNOWN_NS
    return int(value.timestamp() * 1e6) * 1000


def in_range(ts: datetime) -> bool:
    return EARLIEST <= ts <= LATEST


def parse_timestamp(value: Any) -> datetime:
    """A UTC-aware datetime from ISO text (naive means UTC), a date, a datetime or an
    epoch number (unit by magnitude), within EARLIEST..LATEST."""
    if isinstance(value, bool) or value is None:
        raise BadTimestamp(f"not a timestamp: {value!r}")
    if isinstance(value, datetime):
        ts = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        ts = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer with hundreds of digits
            raise BadTimestamp("epoch out of range") from None
        if not math.isfinite(number):
            raise BadTimestamp(f"not a timestamp: {value!r}")
        per_second = next(1e9 / scale for bound, _unit, scale in EPOCH_UNITS if abs(number) < bound)
        try:
            ts = datetime.fromtimestamp(number / per_second, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise BadTimestamp(f"epoch out of range: {value!r}") from exc
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            raise BadTimestamp(f"not a timestamp: {value[:40]!r}")
        try:
            return parse_timestamp(float(text))
        except (ValueError, BadTimestamp):
            pass
        try:
            ts = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as exc:
            raise BadTimestamp(f"not an ISO 8601 timestamp: {text!r}") from exc
        ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    else:
        raise BadTimestamp(f"not a timestamp: {type(value).__name__}")
    ts = ts.astimezone(UTC)
    if not in_range(ts):
        raise BadTimestamp(f"timestamp out of range: {value!r}")
    return ts
