"""The plan's import path for the regime snapshot type (it lives in `regime.snapshot`)."""

from app.services.kb.regime.snapshot import FEATURE_NAMES, RegimeSnapshot, parse_regime_snapshot

__all__ = ["FEATURE_NAMES", "RegimeSnapshot", "parse_regime_snapshot"]
