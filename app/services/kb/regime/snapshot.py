"""The regime snapshot stored on runs (`regime_oos`, `regime_is`) and in KB trials."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

SCHEMA_VERSION = "regime_v1"

# The order of the feature vector used for similarity in the KB.
FEATURE_NAMES = (
    "atr_pct",
    "rsi",
    "bb_width_pct",
    "std_pct",
    "range_pct",
    "zscore",
    "trend_strength",
    "trend_dir",
    "efficiency_ratio",
    "return_pct",
)
EXTRA_FEATURES = ("drift_bps_per_bar",)


def _clean(value: Any) -> Any:
    """Finite floats only: NaN and infinities become None so they never reach JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class TagEvidence:
    metric: str
    value: float
    op: str
    threshold: float
    margin: float

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": _clean(self.value), "op": self.op,
                "threshold": self.threshold, "margin": _clean(self.margin)}


@dataclass(frozen=True)
class RegimeSnapshot:
    features: dict[str, float | None]
    regime_tags: tuple[str, ...]
    tag_evidence: dict[str, tuple[TagEvidence, ...]]
    warnings: tuple[str, ...]
    n_bars: int
    effective_n_bars: int
    ts_start: str | None
    ts_end: str | None
    timeframe: str | None
    instrument: str | None
    computed_at: str
    computation_source: str
    feature_params: dict[str, Any] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION

    def feature_vector(self) -> list[float | None]:
        return [self.features.get(name) for name in FEATURE_NAMES]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for name, value in self.features.items():
            out[name] = _clean(value)
        out.update(
            regime_tags=list(self.regime_tags),
            tag_evidence={tag: [e.to_dict() for e in items] for tag, items in self.tag_evidence.items()},
            warnings=list(self.warnings),
            n_bars=self.n_bars,
            effective_n_bars=self.effective_n_bars,
            ts_start=self.ts_start,
            ts_end=self.ts_end,
            timeframe=self.timeframe,
            instrument=self.instrument,
            computed_at=self.computed_at,
            computation_source=self.computation_source,
            feature_params=self.feature_params,
        )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegimeSnapshot:
        features: dict[str, float | None] = {}
        for name in FEATURE_NAMES + EXTRA_FEATURES:
            value = data.get(name)
            features[name] = float(value) if isinstance(value, int | float) and math.isfinite(value) else None
        return cls(
            features=features,
            regime_tags=_tags(data.get("regime_tags")),
            tag_evidence=_evidence(data.get("tag_evidence")),
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
            n_bars=int(data.get("n_bars") or 0),
            effective_n_bars=int(data.get("effective_n_bars") or 0),
            ts_start=data.get("ts_start"),
            ts_end=data.get("ts_end"),
            timeframe=data.get("timeframe"),
            instrument=data.get("instrument"),
            computed_at=str(data.get("computed_at") or ""),
            computation_source=str(data.get("computation_source") or ""),
            feature_params=dict(data.get("feature_params") or {}),
            schema_version=str(data.get("schema_version") or SCHEMA_VERSION),
        )


def _tags(value: Any) -> tuple[str, ...]:
    """Tags as a list, or one comma-separated string (never split into letters)."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        return ()
    return tuple(sorted({str(t).strip() for t in value if isinstance(t, str) and t.strip()}))


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _evidence(value: Any) -> dict[str, tuple[TagEvidence, ...]]:
    """Evidence per tag: `{tag: [rule, ...]}`, or a flat list of rules that each name
    their `tag` (the format of the system the plan came from)."""
    if isinstance(value, list):
        grouped: dict[str, list[Any]] = {}
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("tag"), str):
                grouped.setdefault(item["tag"], []).append(item)
        value = grouped
    if not isinstance(value, dict):
        return {}
    return {
        str(tag): tuple(
            TagEvidence(str(e.get("metric")), _number(e.get("value")), str(e.get("op")),
                        _number(e.get("threshold")), _number(e.get("margin")))
            for e in items if isinstance(e, dict)
        )
        for tag, items in value.items()
        if isinstance(items, list)
    }


def parse_regime_snapshot(value: Any) -> RegimeSnapshot | None:
    """A snapshot from a dict, JSON text or None; None for anything that is not one."""
    if value is None:
        return None
    if isinstance(value, RegimeSnapshot):
        return value
    if isinstance(value, str | bytes):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(value, dict):
        return None
    try:
        return RegimeSnapshot.from_dict(value)
    except (TypeError, ValueError):
        return None
