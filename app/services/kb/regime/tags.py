"""The regime tag rules as one table: each threshold written once, giving both the tag
masks over many windows and the evidence (metric, value, op, threshold, margin) that
explains each tag."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

WEAK_TREND = 0.3
STRONG_TREND = 0.6


@dataclass(frozen=True)
class Condition:
    metric: str  # a feature, or `abs_zscore`
    op: str  # "<", ">", ">=" or "==" (equality is with the threshold)
    threshold: float

    def mask(self, column: np.ndarray) -> np.ndarray:
        if self.op == "<":
            return column < self.threshold
        if self.op == ">":
            return column > self.threshold
        if self.op == ">=":
            return column >= self.threshold
        return column == self.threshold

    def evidence(self, value: float) -> dict[str, Any]:
        if self.op == "==":
            margin = 0.0
        elif self.op == "<":
            margin = self.threshold - value
        else:
            margin = value - self.threshold
        return {"metric": self.metric, "value": value, "op": self.op, "threshold": self.threshold, "margin": margin}


@dataclass(frozen=True)
class TagRule:
    """A tag fires when every `all_of` condition holds and, if `any_of` is given, at
    least one of those; its evidence is the `all_of` conditions and the `any_of` ones
    that hold."""

    tag: str
    all_of: tuple[Condition, ...]
    any_of: tuple[Condition, ...] = ()


_WEAK = Condition("trend_strength", "<", WEAK_TREND)
_STRONG = Condition("trend_strength", ">=", STRONG_TREND)

# Sorted by tag: a row's tags come out in sorted order without a per-row sort.
TAG_RULES: tuple[TagRule, ...] = (
    TagRule("choppy", (_WEAK, Condition("bb_width_pct", "<", 0.02))),
    TagRule("downtrend", (_STRONG, Condition("trend_dir", "==", -1.0))),
    TagRule("efficient", (Condition("efficiency_ratio", ">", 0.7),)),
    TagRule("flat", (_WEAK,)),
    TagRule("high_vol", (Condition("atr_pct", ">", 0.015),)),
    TagRule("low_vol", (Condition("atr_pct", "<", 0.005),)),
    TagRule("mean_reverting", (_WEAK, Condition("abs_zscore", ">", 1.0))),
    TagRule("noisy", (Condition("efficiency_ratio", "<", 0.3),)),
    TagRule("overbought", (), (Condition("zscore", ">", 1.5), Condition("rsi", ">", 70.0))),
    TagRule("oversold", (), (Condition("zscore", "<", -1.5), Condition("rsi", "<", 30.0))),
    TagRule("trending", (_STRONG, Condition("trend_dir", "==", 0.0))),
    TagRule("uptrend", (_STRONG, Condition("trend_dir", "==", 1.0))),
)

# Every tag a snapshot can carry, in display order.
REGIME_TAGS = ("uptrend", "downtrend", "trending", "flat", "choppy", "mean_reverting", "efficient", "noisy",
               "high_vol", "low_vol", "overbought", "oversold")


def _columns(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**values, "abs_zscore": np.abs(values["zscore"])}


def tag_regime_batch(values: Mapping[str, np.ndarray]) -> list[dict[str, list[dict[str, Any]]]]:
    """Per row, the regime tags and the evidence of each (keys in sorted tag order).
    Rules are tested on whole columns; evidence is built only for the rows a rule tags."""
    cols = _columns(values)
    n = len(cols["trend_strength"])
    as_lists: dict[str, list[float]] = {}
    out: list[dict[str, list[dict[str, Any]]]] = [{} for _ in range(n)]
    for rule in TAG_RULES:
        mask = np.ones(n, dtype=bool)
        for cond in rule.all_of:
            mask &= cond.mask(cols[cond.metric])
        if rule.any_of:
            hits = [cond.mask(cols[cond.metric]) for cond in rule.any_of]
            mask &= np.logical_or.reduce(hits)
        for cond in (*rule.all_of, *rule.any_of):
            if cond.metric not in as_lists:
                as_lists[cond.metric] = cols[cond.metric].tolist()
        for i in np.flatnonzero(mask).tolist():
            found = [cond.evidence(as_lists[cond.metric][i]) for cond in rule.all_of]
            found += [e for cond in rule.any_of if (e := cond.evidence(as_lists[cond.metric][i]))["margin"] > 0]
            out[i][rule.tag] = found
    return out
