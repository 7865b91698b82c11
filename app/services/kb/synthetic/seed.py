"""Bulk synthetic runs loaded with COPY, for benchmarks and scale checks."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np

from app.db import Database
from app.db.runs import copy_run_records
from app.db.workspaces import count_runs, ensure_workspace

_COLUMNS = ("id", "workspace_id", "created_at", "run_kind", "status", "strategy_name", "experiment_type",
            "params", "dataset_meta", "summary", "trade_count", "kb_status")
_STRATEGIES = ("mean_rev", "breakout", "trend_follow")
_CHUNK = 50_000
SEED_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
# A sweep's grid: each run tests one of these 40 sets, so a set recurs across windows as
# in a real KB (a walk-forward can score the set it would have chosen in a later window).
GRID_LOOKBACKS = np.array([5, 10, 15, 20, 30, 45, 60, 90])
GRID_Z_ENTRIES = np.array([1.0, 1.5, 2.0, 2.5, 3.0])


def _records(workspace_id: uuid.UUID, start: int, count: int, rng: np.random.Generator,
             eligible_share: float, strategies: tuple[str, ...], days: tuple[int, int]) -> list[tuple[object, ...]]:
    eligible = rng.random(count) < eligible_share
    # Ineligible rows fail one gate each, spread over the reasons.
    failure = rng.integers(0, 3, count)
    trades = np.where(eligible | (failure != 0), rng.integers(5, 200, count), rng.integers(0, 5, count))
    dd = np.where(eligible | (failure != 1), rng.uniform(1, 25, count), rng.uniform(25.5, 80, count))
    sharpe = np.where(eligible | (failure != 2), rng.uniform(0.1, 3, count), rng.uniform(-2, 0.09, count))
    ret = rng.normal(5, 10, count)
    lookback = GRID_LOOKBACKS[rng.integers(0, len(GRID_LOOKBACKS), count)]
    z = GRID_Z_ENTRIES[rng.integers(0, len(GRID_Z_ENTRIES), count)]
    strategy = rng.integers(0, len(strategies), count)
    oos_start = rng.integers(days[0], days[1], count)
    oos_len = rng.integers(20, 120, count)
    base_ms = int(SEED_EPOCH.timestamp() * 1000)
    ids = rng.integers(0, 2**63, size=(count, 2), dtype=np.int64).astype(np.uint64)
    out: list[tuple[object, ...]] = []
    for i in range(count):
        n = start + i
        day0 = oos_start[i]
        out.append((
            uuid.UUID(int=(int(ids[i, 0]) << 64) | int(ids[i, 1]), version=4),
            workspace_id,
            SEED_EPOCH + timedelta(seconds=n),
            "test_variant",
            "completed",
            strategies[strategy[i]],
            None,
            f'{{"lookback": {lookback[i]}, "z_entry": {z[i]:.1f}}}',
            f'{{"symbol": "SYM{strategy[i]}", "timeframe": "1d", "oos_start": {base_ms + int(day0) * 86_400_000},'
            f' "oos_end": {base_ms + int(day0 + oos_len[i]) * 86_400_000}}}',
            f'{{"trades": {trades[i]}, "sharpe": {sharpe[i]:.4f}, "max_drawdown_pct": -{dd[i]:.3f},'
            f' "return_pct": {ret[i]:.3f}}}',
            None,
            "excluded",
        ))
    return out


async def seed_runs(
    db: Database,
    workspace_id: uuid.UUID,
    runs: int,
    *,
    seed: int = 1,
    eligible_share: float = 0.3,
    strategies: tuple[str, ...] = _STRATEGIES,
    progress: Callable[[int, int], None] | None = None,
    days: tuple[int, int] = (0, 300),
) -> int:
    """Insert `runs` synthetic completed test variants with COPY; returns the count.

    The same seed, workspace and starting count give the same rows; the workspace and
    the rows already there are part of the seed, so run ids never collide. OOS windows
    start on a day in `days` (from SEED_EPOCH) and last 20-120 days."""
    async with db.acquire() as conn:
        await ensure_workspace(conn, workspace_id, f"seed {workspace_id}")
        start = await count_runs(conn, workspace_id)
        rng = np.random.default_rng([seed, workspace_id.int, start])
        done = 0
        while done < runs:
            count = min(_CHUNK, runs - done)
            records = _records(workspace_id, start + done, count, rng, eligible_share, strategies, days)
            await copy_run_records(conn, records, _COLUMNS)
            done += count
            if progress is not None:
                progress(done, runs)
    return done
