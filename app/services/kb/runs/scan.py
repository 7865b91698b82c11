"""What every scan over `backtest_runs` shares: keyset paging bounds, the scan settings
of a command, and the hooks a caller hands to a long-running scan."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from app.far_time import minus_infinity

# `(created_at, id) > (START_OF_TIME, ZERO_ID)` selects every row (START_OF_TIME is
# -infinity, before BC dates too); `(since, ZERO_ID)` selects created_at >= since for every real id.
START_OF_TIME: datetime = minus_infinity()
ZERO_ID = uuid.UUID(int=0)


def keyset_start(since: datetime | None) -> tuple[datetime, uuid.UUID]:
    return (since or START_OF_TIME, ZERO_ID)


@dataclass(frozen=True)
class ScanOptions:
    """Scan settings common to the backfills: which rows, how many, how written."""

    workspace_id: uuid.UUID
    since: datetime | None = None
    limit: int = 1000
    dry_run: bool = False
    batch_size: int = 100
    resume: bool = False


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Hooks:
    """Callbacks into a running scan: progress (done, total), a stop flag polled between
    batches, and a call after each committed batch with its index."""

    progress: Callable[[int, int], None] | None = None
    should_stop: Callable[[], bool] = field(default=_never)
    after_batch: Callable[[int], None] | None = None
