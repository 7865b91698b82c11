"""Market regimes: OHLCV loading, the feature engine, the snapshot type and the tag rules."""

from app.services.kb.regime.features import (
    MIN_EFFECTIVE_BARS,
    REGIME_WINDOW_BARS,
    compute_regime_snapshot,
    current_regime,
)
from app.services.kb.regime.tags import REGIME_TAGS

__all__ = ["MIN_EFFECTIVE_BARS", "REGIME_TAGS", "REGIME_WINDOW_BARS", "compute_regime_snapshot", "current_regime"]
