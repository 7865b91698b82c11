"""What ingest reads from a run for trials and evidence alike: its strategy parameters in
canonical form, and regime features and tags as Postgres array literals (for `unnest`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from app.services.kb.regime.snapshot import FEATURE_NAMES
from app.services.kb.runs.summary import ExtractedMetrics, extract_metrics, json_object

# Keys that describe the data a run saw, not the strategy's parameters.
DATASET_KEYS = frozenset({"oos_start", "oos_end", "date_min", "date_max", "start", "end", "oos_split",
                          "oos_ratio", "is_start", "is_end", "symbol", "timeframe"})


def params_key(params: Any) -> str:
    """Canonical JSON of a run's strategy parameters (dataset keys removed)."""
    return orjson.dumps({k: v for k, v in json_object(params).items() if k not in DATASET_KEYS},
                        option=orjson.OPT_SORT_KEYS).decode()


def pg_array(values: Sequence[Any]) -> str:
    """A Postgres array literal; strings are quoted, numbers printed exactly."""
    items = []
    for v in values:
        if isinstance(v, str):
            items.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            items.append(repr(float(v)))
    return "{" + ",".join(items) + "}"


def float_literal(numbers: list[float]) -> str:
    """`{a,b,...}` with each finite float as `repr` prints it. orjson prints the same
    shortest digits, and differs from `repr` only where either uses an exponent or
    writes a small number out in full (1e-05 against 0.00001): those take `repr`."""
    text = orjson.dumps(numbers)
    if b"e" in text or b"0.0000" in text:
        return "{" + ",".join(map(repr, numbers)) + "}"
    return "{" + text[1:-1].decode() + "}"


def feature_values(snapshot: dict[str, Any]) -> list[float] | None:
    """The snapshot's features as floats, or None unless every one is a finite number."""
    numbers: list[float] = []
    for name in FEATURE_NAMES:
        v: Any = snapshot.get(name)
        kind = type(v)
        if kind is float:
            if v - v != 0.0:  # NaN or infinity
                return None
            numbers.append(v)
        elif kind is int:
            try:
                numbers.append(float(v))
            except OverflowError:  # an integer beyond float range
                return None
        else:  # bool and anything else: no features
            return None
    return numbers


def feature_array(snapshot: dict[str, Any]) -> str | None:
    """The snapshot's features as an array literal, or None unless every one is finite."""
    numbers = feature_values(snapshot)
    return None if numbers is None else float_literal(numbers)


def tag_list(snapshot: dict[str, Any]) -> list[str]:
    tags = snapshot.get("regime_tags")
    return sorted(str(t) for t in tags if isinstance(t, str)) if isinstance(tags, list) else []


def _tags_literal(tags: list[str]) -> str:
    # Tags are short words: quoted as pg_array does, without its per-item type test.
    if not tags:
        return "{}"
    if any('"' in t or "\\" in t for t in tags):
        return pg_array(tags)
    return '{"' + '","'.join(tags) + '"}'


class ParsedRun(NamedTuple):
    """One run's JSON columns decoded once, for its trial and its evidence alike."""

    extracted: ExtractedMetrics
    meta: dict[str, Any]
    params: dict[str, Any]
    params_key: str
    regime: dict[str, Any]
    pre: dict[str, Any]
    features: str | None
    pre_features: str | None
    tags: list[str]
    pre_tags: list[str]
    tags_literal: str
    pre_tags_literal: str
    symbol: str | None  # stripped and upper-cased: one spelling for trials, evidence and scopes
    timeframe: str | None


def parse_run(row: Any) -> ParsedRun:
    meta, params = json_object(row["dataset_meta"]), json_object(row["params"])
    regime, pre = json_object(row["regime_oos"]), json_object(row["regime_pre"])
    symbol, timeframe = meta.get("symbol"), meta.get("timeframe")
    tags, pre_tags = tag_list(regime), tag_list(pre)
    return ParsedRun(
        extract_metrics(row["summary"], row["trade_count"]), meta, params, params_key(params), regime, pre,
        feature_array(regime) if regime else None, feature_array(pre) if pre else None, tags, pre_tags,
        _tags_literal(tags), _tags_literal(pre_tags),
        symbol.strip().upper() if isinstance(symbol, str) else None, timeframe if isinstance(timeframe, str) else None)
