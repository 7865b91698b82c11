"""What recommend() is asked: a strategy, the current regime (snapshot or tags), filters."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.services.kb.regime.snapshot import RegimeSnapshot


@dataclass(frozen=True)
class Scope:
    """Which evidence an answer may use: the query's instrument (unless `pool`), its bar
    size (never mixed with another), and only windows that ended before `as_of`."""

    symbol: str | None = None
    timeframe: str | None = None
    pool: bool = False
    as_of: datetime | None = None

    @classmethod
    def of(cls, symbol: str | None, timeframe: str | None, pool: bool = False,
           as_of: datetime | None = None) -> Scope:
        return cls(symbol.strip().upper() if symbol else None, timeframe or None, pool, as_of)

    def admits(self, symbol: str | None, timeframe: str | None, end: datetime | None) -> bool:
        if self.timeframe is not None and timeframe != self.timeframe:
            return False
        if self.symbol is not None and not self.pool and (symbol or "").upper() != self.symbol:
            return False
        return self.as_of is None or (end is not None and end < self.as_of)

    def key(self) -> str:
        """A stable text key of the scope (stored checks are per scope)."""
        return "|".join(["" if v is None else str(v) for v in (self.symbol, self.timeframe)]
                        + [str(self.pool), "" if self.as_of is None else self.as_of.isoformat()])

    def describe(self, windows: int) -> dict[str, Any]:
        return {"symbol": self.symbol, "timeframe": self.timeframe,
                "pooled": self.pool or self.symbol is None, "as_of": None if self.as_of is None else
                self.as_of.isoformat(), "windows": windows}


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
    pool: bool = False
    as_of: datetime | None = None

    @property
    def scope(self) -> Scope:
        timeframe = self.timeframe or (self.regime.timeframe if self.regime is not None else None)
        return Scope.of(self.symbol, timeframe, self.pool, self.as_of)

    @property
    def tag_set(self) -> frozenset[str]:
        return frozenset(self.regime.regime_tags if self.regime is not None else self.tags)
