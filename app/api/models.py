"""The API's request bodies: validated at the edge, each field bounded."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.api.deps import NO_NUL
from app.timestamps import EARLIEST, LATEST, in_range

MAX_OHLCV_ROWS = 20_000


class WorkspaceRef(BaseModel):
    """A workspace by id (`workspace_id`) or by name or id (`workspace`): exactly one."""

    workspace_id: uuid.UUID | None = None
    workspace: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)

    @model_validator(mode="after")
    def _one_workspace(self) -> WorkspaceRef:
        if (self.workspace_id is None) == (self.workspace is None):
            raise ValueError("give exactly one of workspace_id or workspace (a name or an id)")
        return self

    @property
    def ref(self) -> str | uuid.UUID:
        return self.workspace_id if self.workspace_id is not None else str(self.workspace)


def _in_range(value: datetime | None) -> datetime | None:
    """Timestamps outside the accepted range are refused (422), not left to fail deeper down."""
    if value is None:
        return None
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not in_range(aware):
        raise ValueError(f"must be between {EARLIEST.date()} and {LATEST.date()}")
    return aware


class IngestRequest(WorkspaceRef):
    model_config = ConfigDict(extra="forbid")
    since: datetime | None = None
    dry_run: bool = False
    full: bool = False  # every run again, not only those written since the last ingest

    _since_range = field_validator("since")(_in_range)


class Bar(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timestamp: datetime

    _timestamp_range = field_validator("timestamp")(_in_range)
    open: float | None = None
    high: float = Field(gt=0)
    low: float = Field(gt=0)
    close: float = Field(gt=0)
    volume: float | None = None


class RecommendRequest(WorkspaceRef):
    model_config = ConfigDict(extra="forbid")
    strategy_name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    regime: dict[str, Any] | None = None
    ohlcv: list[Bar] | None = Field(default=None, max_length=MAX_OHLCV_ROWS)
    tags: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=32)
    symbol: str | None = Field(default=None, max_length=64)
    timeframe: str | None = Field(default=None, max_length=16)
    top_k: int = Field(default=20, ge=1, le=1000)
    min_sharpe: float | None = Field(default=None, allow_inf_nan=False)
    min_trades: int | None = Field(default=None, ge=0)
    max_drawdown: float | None = Field(default=None, ge=0, le=1)
    method: str = Field(default="expected", pattern="^(expected|median)$")
    pool: bool = False
    as_of: datetime | None = None
    # False: while the walk-forward check of a new KB revision runs, answer with the last
    # finished one (the answer's walk_forward says which revision it is of).
    wait_for_check: bool = False

    _as_of_range = field_validator("as_of")(_in_range)


MAX_IMPORT_RUNS = 50_000


class ImportRequest(WorkspaceRef):
    model_config = ConfigDict(extra="forbid")
    runs: list[dict[str, Any]] = Field(max_length=MAX_IMPORT_RUNS)
    source: str = Field(default="api", min_length=1, max_length=200, pattern=NO_NUL)
    dry_run: bool = False




class SyncRequest(WorkspaceRef):
    """`kb sync` over HTTP: the paths are the server's own files."""

    model_config = ConfigDict(extra="forbid")
    ohlcv: list[Annotated[str, Field(min_length=1, max_length=4096, pattern=NO_NUL)]] = Field(
        default_factory=list, max_length=1000)
    imports: list[Annotated[str, Field(min_length=1, max_length=4096, pattern=NO_NUL)]] = Field(
        default_factory=list, max_length=1000)
    batch_size: int = Field(default=1000, ge=1, le=50_000)
