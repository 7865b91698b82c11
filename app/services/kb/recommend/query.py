"""What recommend() is asked: a strategy, the current regime (snapshot or tags), filters."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.services.kb.regime.snapshot import RegimeSnapshot


@dataclass(frozen=True)
class RecommendQuery:
    workspace_id: uuid.UUID
    strategy_name: str
    regime: RegimeSnapshot | None = None
    tags: tuple[str, ...] = ()
    symbol: str | None = None
    timeframe: str | None = None
    top_k: int = 20
    min_sharpe: float | None = None
    min_trades: int | None = None
    max_drawdown: float | None = None
    method: str = "expected"

    @property
    def tag_set(self) -> frozenset[str]:
        return frozenset(self.regime.regime_tags if self.regime is not None else self.tags)
