"""The candidacy gate: which test variants are trustworthy enough to become KB candidates.

Pure functions only; nothing here touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KNOWN_EXPERIMENT_TYPES = ("tune", "sweep", "ablation", "manual")

PASSED = "passed_all_gates"
UNKNOWN_EXPERIMENT_TYPE = "unknown_experiment_type"
MANUAL_EXCLUDED = "manual_experiment_excluded"
MISSING_REGIME = "missing_regime_oos"
INSUFFICIENT_TRADES = "insufficient_oos_trades"
DD_TOO_HIGH = "dd_too_high"
OVERFIT_TOO_HIGH = "overfit_too_high"
SHARPE_TOO_LOW = "sharpe_too_low"
INVALID_METRICS = "invalid_metrics"
INVALID_SUMMARY = "invalid_summary"


@dataclass(frozen=True)
class CandidacyConfig:
    require_regime: bool = True
    min_trades: int = 5
    max_drawdown: float = 0.25
    max_overfit_gap: float = 0.30
    min_sharpe: float = 0.1


@dataclass(frozen=True, slots=True)
class VariantMetricsForCandidacy:
    """OOS metrics of one variant. Drawdown is a fraction (0.12 means 12%)."""

    n_trades_oos: int
    max_dd_frac_oos: float | None
    sharpe_oos: float | None
    overfit_gap: float | None = None


@dataclass(frozen=True)
class GateCheck:
    """One gate as applied to one run, for `--explain`."""

    gate: str
    value: object
    threshold: object
    passed: bool | None  # None: skipped (value unknown or gate disabled)
    note: str = ""


@dataclass(frozen=True, slots=True)
class CandidacyDecision:
    eligible: bool
    reason: str
    checks: tuple[GateCheck, ...] = field(default=(), compare=False)


def _finite(value: float | None) -> bool:
    return value is None or value - value == 0.0


def evaluate_gates(
    metrics: VariantMetricsForCandidacy,
    regime_oos: object | None,
    experiment_type: str | None,
    config: CandidacyConfig,
) -> list[GateCheck]:
    """Every gate in order with its outcome (for `--explain`)."""
    exp = (experiment_type or "").strip().lower()
    dd = metrics.max_dd_frac_oos
    checks = [
        GateCheck("experiment_type", experiment_type, "|".join(KNOWN_EXPERIMENT_TYPES),
                  exp in KNOWN_EXPERIMENT_TYPES),
        GateCheck("not_manual", experiment_type, "!= manual", exp != "manual"),
        GateCheck(
            "regime_oos",
            "present" if regime_oos is not None else "absent",
            "required" if config.require_regime else "not required",
            (regime_oos is not None) if config.require_regime else None,
        ),
        GateCheck("min_trades", metrics.n_trades_oos, config.min_trades,
                  metrics.n_trades_oos >= config.min_trades),
        GateCheck("max_drawdown", dd, config.max_drawdown, None if dd is None else dd <= config.max_drawdown,
                  "" if dd is not None else "no drawdown recorded: check skipped"),
        GateCheck("max_overfit_gap", metrics.overfit_gap, config.max_overfit_gap,
                  None if metrics.overfit_gap is None else metrics.overfit_gap <= config.max_overfit_gap,
                  "" if metrics.overfit_gap is not None else "in-sample metrics unknown: check skipped"),
        GateCheck("min_sharpe", metrics.sharpe_oos, config.min_sharpe,
                  None if metrics.sharpe_oos is None else metrics.sharpe_oos >= config.min_sharpe,
                  "" if metrics.sharpe_oos is not None else "no Sharpe recorded: check skipped"),
    ]
    return checks


def is_candidate(
    metrics: VariantMetricsForCandidacy,
    regime_oos: object | None = None,
    experiment_type: str | None = "sweep",
    config: CandidacyConfig | None = None,
) -> CandidacyDecision:
    """Decide whether a variant may become a KB candidate.

    `regime_oos` is the run's OOS regime snapshot; the gate only asks whether one is
    present, so any non-None value counts. Checks run in the spec's order and the first
    failure is the reason. Non-finite metrics never pass. `evaluate_gates` gives the
    same verdicts gate by gate, for explanations.
    """
    cfg = config or CandidacyConfig()
    dd, sharpe, gap = metrics.max_dd_frac_oos, metrics.sharpe_oos, metrics.overfit_gap
    if not (_finite(dd) and _finite(sharpe) and _finite(gap)) or metrics.n_trades_oos < 0:
        return CandidacyDecision(False, INVALID_METRICS)
    exp = (experiment_type or "").strip().lower()
    if exp not in KNOWN_EXPERIMENT_TYPES:
        return CandidacyDecision(False, UNKNOWN_EXPERIMENT_TYPE)
    if exp == "manual":
        return CandidacyDecision(False, MANUAL_EXCLUDED)
    if cfg.require_regime and regime_oos is None:
        return CandidacyDecision(False, MISSING_REGIME)
    if metrics.n_trades_oos < cfg.min_trades:
        return CandidacyDecision(False, INSUFFICIENT_TRADES)
    if dd is not None and dd > cfg.max_drawdown:
        return CandidacyDecision(False, DD_TOO_HIGH)
    if gap is not None and gap > cfg.max_overfit_gap:
        return CandidacyDecision(False, OVERFIT_TOO_HIGH)
    if sharpe is not None and sharpe < cfg.min_sharpe:
        return CandidacyDecision(False, SHARPE_TOO_LOW)
    return CandidacyDecision(True, PASSED)


def explain_candidacy(
    metrics: VariantMetricsForCandidacy,
    regime_oos: object | None,
    experiment_type: str | None,
    config: CandidacyConfig,
) -> CandidacyDecision:
    """`is_candidate`'s decision together with every gate's value, threshold and verdict."""
    decision = is_candidate(metrics, regime_oos, experiment_type, config)
    return CandidacyDecision(decision.eligible, decision.reason,
                             tuple(evaluate_gates(metrics, regime_oos, experiment_type, config)))
