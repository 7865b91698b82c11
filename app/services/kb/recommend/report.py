"""The walk-forward report (`kb evaluate`, the answer's `walk_forward`): what the nested
procedure realised, against the baselines, with its promises checked."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from app.numbers import rounded
from app.services.kb.recommend.evidence import EvidenceMatrix
from app.services.kb.recommend.nested import BLOCKS, COVERAGE, MIN_RULE_DECISIONS, Decision, Model, block_se
from app.services.kb.recommend.walkforward import MIN_PRIOR_WINDOWS

RELIABILITY_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _mean(ds: list[Decision], attr: str) -> float | None:
    return rounded(float(np.mean([getattr(d, attr) for d in ds]))) if ds else None


def _reliability(ds: list[Decision]) -> list[dict[str, Any]]:
    """Per confidence bin: how many answers, their mean confidence, and how often their
    realised Sharpe was above zero (what confidence claims)."""
    rows = []
    for lo, hi in itertools.pairwise(RELIABILITY_BINS):
        sub = [d for d in ds if lo <= d.confidence < hi or (hi == 1.0 and d.confidence == 1.0)]
        rows.append({"bin": f"{lo:.1f}-{hi:.1f}", "decisions": len(sub), "mean_confidence": _mean(sub, "confidence"),
                     "realised_positive": rounded(float(np.mean([d.realised > 0 for d in sub]))) if sub else None})
    return rows


def _terciles(ds: list[Decision]) -> dict[str, dict[str, Any]]:
    conf = np.array([d.confidence for d in ds])
    cuts = np.quantile(conf, [1 / 3, 2 / 3]) if len(ds) >= 3 else np.array([0.5, 0.5])
    groups = {"low": [d for d in ds if d.confidence <= cuts[0]],
              "mid": [d for d in ds if cuts[0] < d.confidence <= cuts[1]],
              "high": [d for d in ds if d.confidence > cuts[1]]}
    return {name: {"decisions": len(sub), "mean_confidence": _mean(sub, "confidence"),
                   "realised": _mean(sub, "realised")} for name, sub in groups.items()}


def summarize(m: EvidenceMatrix, model: Model) -> dict[str, Any]:
    """Uplift with a block standard error, hit rate, baselines, per-regime results,
    calibration of the promises, and the rule recommend applies now."""
    ds = list(model.decisions)
    rule = {"tuning": {"k": model.tuning.k, "shrink": model.tuning.shrink, "haircut": model.tuning.haircut},
            "regime_conditioned": model.conditioned, "regime_uplift": rounded(model.uplift),
            "regime_uplift_se": rounded(model.uplift_se),
            "regime_checked": model.checked,
            "rule": "condition on the regime only when its walk-forward uplift over the global best exceeds one "
                    f"standard error (unchecked before {MIN_RULE_DECISIONS} decisions)",
            "configurations_tried": len(model.tunings)}
    if not ds:
        return {"decisions": 0, "uplift": None, "reasons": ["not_enough_history"],
                "minimum_history": f"a decision needs {MIN_PRIOR_WINDOWS} earlier windows with dated OOS ranges "
                                   "and at least two parameter sets tested in its own window",
                **rule}
    diff = np.array([d.realised - d.realised_global for d in ds])
    per_tag: dict[str, list[Decision]] = {}
    for d in ds:
        for tag in m.oos_tags[d.window] or ("(untagged)",):
            per_tag.setdefault(tag, []).append(d)
    inside = [d.low <= d.realised <= d.high for d in ds]
    return {
        "decisions": len(ds), **rule,
        "tuning_chosen": {f"k={model.tunings[i].k},shrink={model.tunings[i].shrink}": int(c)
                          for i, c in zip(*np.unique([d.tuning for d in ds], return_counts=True), strict=True)},
        "conditioned_share": rounded(float(np.mean([d.conditioned for d in ds]))),
        "realised_sharpe": {"recommend": _mean(ds, "realised"), "global_best": _mean(ds, "realised_global"),
                            "median_set": _mean(ds, "realised_median"), "random_set": _mean(ds, "realised_random"),
                            "oracle": _mean(ds, "realised_oracle")},
        "regime_choice_realised": _mean(ds, "realised_regime"),
        "uplift": rounded(float(diff.mean())), "uplift_se": rounded(block_se(diff)),
        "blocks": math.ceil(len(ds) / math.ceil(len(ds) / BLOCKS)), "hit_rate": rounded(float((diff >= 0).mean())),
        "per_regime": {tag: {"decisions": len(sub), "recommend": _mean(sub, "realised"),
                             "global_best": _mean(sub, "realised_global")} for tag, sub in sorted(per_tag.items())},
        "calibration": _terciles(ds),
        "promises": {"mean_expected": _mean(ds, "expected"), "mean_raw_expected": _mean(ds, "raw_expected"),
                     "mean_realised": _mean(ds, "realised"), "interval_coverage": rounded(float(np.mean(inside))),
                     "interval_nominal": COVERAGE, "reliability": _reliability(ds)},
    }
