"""A run's out-of-sample (and in-sample) window, from `dataset_meta` then `params`.

First match wins:
1. `oos_start` + `oos_end` (both inclusive);
2. `date_min`/`date_max` (or `start`/`end`) with `oos_split` (first OOS bar) or
   `oos_ratio` (the last r of the range);
3. `date_min`/`date_max` (or `start`/`end`) alone: the whole range is OOS.
Timestamps follow `app.timestamps` (ISO 8601, naive means UTC, or epoch numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from app.timestamps import BadTimestamp, parse_timestamp

MISSING_DATE_RANGE = "missing_date_range"
INVALID_DATE_RANGE = "invalid_date_range"

__all__ = ["INVALID_DATE_RANGE", "MISSING_DATE_RANGE", "BadTimestamp", "RunWindows", "Window", "extract_windows",
           "parse_since", "parse_timestamp", "timestamp"]


def parse_since(text: str) -> datetime:
    """`--since`: a date (midnight UTC) or an ISO timestamp (naive means UTC). A bare
    number is a date, never epoch seconds: `2025` is 2025-01-01, `20250101` and
    `2025-01` are read as dates too."""
    value = text.strip()
    try:
        if value.isdigit() and len(value) == 4:
            return parse_timestamp(f"{value}-01-01")
        if value.isdigit() and len(value) == 8:
            return parse_timestamp(f"{value[:4]}-{value[4:6]}-{value[6:]}")
        if len(value) == 7 and value[4] == "-" and (value[:4] + value[5:]).isdigit():
            return parse_timestamp(f"{value}-01")
    except BadTimestamp:
        raise BadTimestamp(f"not a date: {value!r}") from None
    try:
        float(value)
    except ValueError:
        return parse_timestamp(value)
    raise BadTimestamp(f"a number is not a date: {value!r} (write 2025-01-01)")


# Runs of one sweep share their window's timestamps: each value is parsed once (typed:
# True, 1 and 1.0 are different keys; failures are not cached).
_parse_cached = lru_cache(maxsize=4096, typed=True)(parse_timestamp)
_CACHED = (str, int, float)


def timestamp(value: Any) -> datetime:
    """`parse_timestamp`, remembering the texts and epoch numbers it has read."""
    return _parse_cached(value) if type(value) in _CACHED else parse_timestamp(value)


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class RunWindows:
    oos: Window | None
    is_: Window | None
    reason: str | None  # None when `oos` is usable
    source: str = ""


def _lookup(sources: list[dict[str, Any]], *names: str) -> tuple[Any, str] | None:
    for source in sources:
        for name in names:
            value = source.get(name)
            if value is not None and value != "":
                return value, name
    return None


def _ratio(value: Any) -> float | None:
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        return None
    return ratio if math.isfinite(ratio) and 0.0 < ratio < 1.0 else None


def _window(start: datetime, end: datetime) -> Window | None:
    return Window(start, end) if end >= start else None


def extract_windows(dataset_meta: Any, params: Any) -> RunWindows:
    """The run's windows, or a reason (`missing_date_range`, `invalid_date_range`)."""
    sources = [s for s in (dataset_meta, params) if isinstance(s, dict)]
    try:
        for source in sources:
            if source.get("oos_start") is not None and source.get("oos_end") is not None:
                oos_start = timestamp(source["oos_start"])
                oos_end = timestamp(source["oos_end"])
                if oos_end < oos_start:
                    return RunWindows(None, None, INVALID_DATE_RANGE)
                is_window = None
                is_start = _lookup(sources, "is_start")
                is_end = _lookup(sources, "is_end")
                if is_start and is_end:
                    is_window = _window(timestamp(is_start[0]), timestamp(is_end[0]))
                return RunWindows(Window(oos_start, oos_end), is_window, None, "oos_start/oos_end")
        lo = _lookup(sources, "date_min", "start")
        hi = _lookup(sources, "date_max", "end")
        if lo is None or hi is None:
            return RunWindows(None, None, MISSING_DATE_RANGE)
        start, end = timestamp(lo[0]), timestamp(hi[0])
        if end < start:
            return RunWindows(None, None, INVALID_DATE_RANGE)
        split = _lookup(sources, "oos_split")
        if split is not None:
            first_oos = timestamp(split[0])
            if not start < first_oos <= end:
                return RunWindows(None, None, INVALID_DATE_RANGE)
            # The in-sample part ends just before the first OOS bar.
            return RunWindows(Window(first_oos, end), Window(start, first_oos - timedelta(microseconds=1)),
                              None, "range+oos_split")
        ratio_value = _lookup(sources, "oos_ratio")
        if ratio_value is not None:
            ratio = _ratio(ratio_value[0])
            if ratio is None:
                return RunWindows(None, None, INVALID_DATE_RANGE)
            first_oos = end - (end - start) * ratio
            return RunWindows(Window(first_oos, end), Window(start, first_oos - timedelta(microseconds=1)),
                              None, "range+oos_ratio")
        return RunWindows(Window(start, end), None, None, "range")
    except BadTimestamp:
        return RunWindows(None, None, INVALID_DATE_RANGE)
