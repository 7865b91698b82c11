"""The plan's import path for the candidacy gate (it lives in `runs.gate`)."""

from app.services.kb.runs.gate import (
    KNOWN_EXPERIMENT_TYPES,
    CandidacyConfig,
    CandidacyDecision,
    GateCheck,
    VariantMetricsForCandidacy,
    explain_candidacy,
    is_candidate,
)

__all__ = ["KNOWN_EXPERIMENT_TYPES", "CandidacyConfig", "CandidacyDecision", "GateCheck",
           "VariantMetricsForCandidacy", "explain_candidacy", "is_candidate"]
