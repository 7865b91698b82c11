"""What recommend answers: one frozen result per answer, rendered at the edge (CLI, API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExpectedChoice:
    """The expected-performance method's part of an answer."""

    expected_sharpe: float | None
    interval: list[float | None]
    runner_ups: list[dict[str, Any]]
    global_best: dict[str, Any]
    regime_conditioned: bool
    evidence: dict[str, Any]
    walk_forward: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # further keys beside these (scope, calibration)


@dataclass(frozen=True)
class Recommendation:
    status: str  # ok | degraded | none
    confidence: float
    params: dict[str, Any]
    considered: int
    supporting_trials: list[dict[str, Any]]
    reasons: tuple[str, ...]
    suggested_actions: tuple[str, ...]
    query: dict[str, Any]
    method: str
    param_spread: dict[str, Any] = field(default_factory=dict)
    nearest_distance: float | None = None
    expected: ExpectedChoice | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status, "confidence": self.confidence, "params": self.params,
            "param_spread": self.param_spread, "considered": self.considered,
            "supporting_trials": self.supporting_trials, "reasons": list(self.reasons),
            "suggested_actions": list(self.suggested_actions), "query": self.query, "method": self.method,
        }
        if self.nearest_distance is not None:
            out["nearest_distance"] = self.nearest_distance
        if self.expected is not None:
            e = self.expected
            out.update(expected_sharpe=e.expected_sharpe, interval=e.interval, runner_ups=e.runner_ups,
                       global_best=e.global_best, regime_conditioned=e.regime_conditioned, evidence=e.evidence,
                       walk_forward=e.walk_forward, **e.extra)
        return out
