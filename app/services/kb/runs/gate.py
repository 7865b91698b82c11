"""The candidacy gate: which test variants are trustworthy enough to become KB candidates.

Pure functions only; nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Callable
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
DSR_TOO_LOW = "dsr_too_low"
INVALID_METRICS = "invalid_metrics"
INVALID_SUMMARY = "invalid_summary"


@dataclass(frozen=True)
class CandidacyConfig:
    require_regime: bool = True
    min_trades: int = 5
    max_drawdown: float = 0.25
    max_overfit_gap: float = 0.30
    min_sharpe: float = 0.1
    min_dsr: float | None = None  # off by default: the plan's gate stays as it was


@dataclass(frozen=True, slots=True)
class VariantMetricsForCandidacy:
    """OOS metrics of one variant. Drawdown is a fraction (0.12 means 12%)."""

    n_trades_oos: int
    max_dd_frac_oos: float | None
    sharpe_oos: float | None
    overfit_gap: float | None = None
    dsr: float | None = None  # deflated Sharpe ratio, when its window's other sets are known


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


@dataclass(frozen=True)
class _Subject:
    metrics: VariantMetricsForCandidacy
    regime_present: bool
    experiment: str  # normalised experiment type
    raw_experiment: str | None


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


@dataclass(frozen=True)
class GateRule:
    """One gate: the value it reads, the threshold it compares with, the verdict (None:
    skipped), the reason a failure gives and the note an --explain shows when skipped."""

    gate: str
    reason: str
    value: Callable[[_Subject, CandidacyConfig], object]
    threshold: Callable[[CandidacyConfig], object]
    verdict: Callable[[_Subject, CandidacyConfig], bool | None]
    skipped_note: str = ""


# The spec's gates in order; the first failure is the reason. Thresholds live in CandidacyConfig.
GATE_RULES: tuple[GateRule, ...] = (
    GateRule("experiment_type", UNKNOWN_EXPERIMENT_TYPE, lambda s, c: s.raw_experiment,
             lambda c: "|".join(KNOWN_EXPERIMENT_TYPES), lambda s, c: s.experiment in KNOWN_EXPERIMENT_TYPES),
    GateRule("not_manual", MANUAL_EXCLUDED, lambda s, c: s.raw_experiment, lambda c: "!= manual",
             lambda s, c: s.experiment != "manual"),
    GateRule("regime_oos", MISSING_REGIME, lambda s, c: "present" if s.regime_present else "absent",
             lambda c: "required" if c.require_regime else "not required",
             lambda s, c: s.regime_present if c.require_regime else None),
    GateRule("min_trades", INSUFFICIENT_TRADES, lambda s, c: s.metrics.n_trades_oos, lambda c: c.min_trades,
             lambda s, c: s.metrics.n_trades_oos >= c.min_trades),
    GateRule("max_drawdown", DD_TOO_HIGH, lambda s, c: s.metrics.max_dd_frac_oos, lambda c: c.max_drawdown,
             lambda s, c: _at_most(s.metrics.max_dd_frac_oos, c.max_drawdown), "no drawdown recorded: check skipped"),
    GateRule("max_overfit_gap", OVERFIT_TOO_HIGH, lambda s, c: s.metrics.overfit_gap, lambda c: c.max_overfit_gap,
             lambda s, c: _at_most(s.metrics.overfit_gap, c.max_overfit_gap),
             "in-sample metrics unknown: check skipped"),
    GateRule("min_sharpe", SHARPE_TOO_LOW, lambda s, c: s.metrics.sharpe_oos, lambda c: c.min_sharpe,
             lambda s, c: None if s.metrics.sharpe_oos is None else s.metrics.sharpe_oos >= c.min_sharpe,
             "no Sharpe recorded: check skipped"),
    GateRule("min_dsr", DSR_TOO_LOW, lambda s, c: s.metrics.dsr, lambda c: "off" if c.min_dsr is None else c.min_dsr,
             lambda s, c: None if c.min_dsr is None or s.metrics.dsr is None else s.metrics.dsr >= c.min_dsr,
             "no deflated Sharpe (bars or bar size of the window unknown): check skipped"),
)


def _subject(metrics: VariantMetricsForCandidacy, regime_oos: object | None, experiment_type: str | None) -> _Subject:
    return _Subject(metrics, regime_oos is not None, (experiment_type or "").strip().lower(), experiment_type)


def evaluate_gates(
    metrics: VariantMetricsForCandidacy,
    regime_oos: object | None,
    experiment_type: str | None,
    config: CandidacyConfig,
) -> list[GateCheck]:
    """Every gate in order with its outcome (for `--explain`)."""
    s = _subject(metrics, regime_oos, experiment_type)
    checks = []
    for rule in GATE_RULES:
        verdict = rule.verdict(s, config)
        value = rule.value(s, config)
        note = rule.skipped_note if verdict is None and value is None else ""
        checks.append(GateCheck(rule.gate, value, rule.threshold(config), verdict, note))
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
    if not all(_finite(v) for v in (metrics.max_dd_frac_oos, metrics.sharpe_oos, metrics.overfit_gap, metrics.dsr)) \
            or metrics.n_trades_oos < 0:
        return CandidacyDecision(False, INVALID_METRICS)
    s = _subject(metrics, regime_oos, experiment_type)
    for rule in GATE_RULES:
        if rule.verdict(s, cfg) is False:
            return CandidacyDecision(False, rule.reason)
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
