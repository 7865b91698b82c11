"""backfill-regime at scale, end to end, with all three snapshots per run.

Runs like `kb seed`'s (three symbols, daily bars, OOS windows of 60-180 days in a
300-day span) that also name an in-sample window (60-300 days just before the OOS one),
so each written run gets `regime_oos`, `regime_is` and `regime_pre`. Two sizes, each in
a fresh workspace: the backfill's runs/s, and a same-run baseline: the batched snapshot
write alone (the same runs and snapshots, made ready beforehand, written by the same
guarded UPDATE in transactions of the same batch size; no read, no computing).
A first line times the engine alone on 100,000 distinct hourly windows.

BENCH_SMALL (20,000) and BENCH_RUNS (200,000) set the sizes; BENCH_BATCH (1000) the batch.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from _common import env_int, fresh_database, peak_rss_mb, run, write_daily_ohlcv

from app.db import Database
from app.db.runs import copy_run_records
from app.db.workspaces import ensure_workspace
from app.services.kb.backfill.regime import RegimeJob, RegimeOptions, backfill_regime, file_digest
from app.services.kb.regime.features import compute_feature_batch, snapshot_dicts
from app.services.kb.regime.ohlcv import OhlcvData, load_ohlcv

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
_COLUMNS = ("id", "workspace_id", "created_at", "run_kind", "status", "strategy_name", "params", "dataset_meta",
            "summary", "kb_status")


async def seed(db: Database, ws: uuid.UUID, runs: int) -> None:
    """`runs` completed test variants with OOS and IS windows (epoch milliseconds)."""
    rng = np.random.default_rng([7, runs])
    day, base = 86_400_000, int(EPOCH.timestamp() * 1000)
    sym = rng.integers(0, 3, runs)
    oos_start = base + rng.integers(0, 300, runs) * day
    oos_end = oos_start + rng.integers(60, 180, runs) * day
    is_end = oos_start - day
    is_start = is_end - rng.integers(60, 300, runs) * day
    # The same windows in every workspace of this size; ids of the workspace's own.
    ids = np.random.default_rng(ws.int).integers(0, 2**63, size=(runs, 2), dtype=np.int64).astype(np.uint64)
    records = [
        (uuid.UUID(int=(int(ids[i, 0]) << 64) | int(ids[i, 1]), version=4), ws, EPOCH + timedelta(seconds=i),
         "test_variant", "completed", "mean_rev", '{"lookback": 20}',
         f'{{"symbol": "SYM{sym[i]}", "timeframe": "1d", "oos_start": {oos_start[i]}, "oos_end": {oos_end[i]}, '
         f'"is_start": {is_start[i]}, "is_end": {is_end[i]}}}', '{"trades": 40, "sharpe": 1.0}', "excluded")
        for i in range(runs)
    ]
    async with db.acquire() as conn:
        await ensure_workspace(conn, ws, "bench regime")
        for lo in range(0, runs, 50_000):
            await copy_run_records(conn, records[lo : lo + 50_000], _COLUMNS)


async def write_alone(db: Database, ws: uuid.UUID, data: OhlcvData, batch: int) -> tuple[int, float]:
    """The baseline: the same guarded batched write, its snapshots made ready beforehand."""
    job = RegimeJob(RegimeOptions(workspace_id=ws, timeframe="1d", batch_size=batch), data, 86_400,
                    file_digest(data.path))
    after = (datetime(1970, 1, 1, tzinfo=UTC), uuid.UUID(int=0))
    batches = []
    async with db.acquire() as conn:
        while page := await job.fetch_page(conn, after, batch):
            batches.append([o for o in job.evaluate(page) if o.reason is None])
            after = (page[-1]["created_at"], page[-1]["id"])
        written, spent, backfill_id = 0, 0.0, uuid.uuid4()
        for passed in batches:
            started = time.perf_counter()
            async with conn.transaction():
                written += await job.write(conn, passed, backfill_id)
            spent += time.perf_counter() - started
    return written, spent


def engine_line() -> None:
    bars = 87_600
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, bars)))
    ts = pd.date_range(EPOCH, periods=bars, freq="h").as_unit("ns").asi8
    ends = rng.integers(400, bars, 100_000)
    starts = ends - rng.integers(60, 1500, len(ends))
    started = time.perf_counter()
    computed = compute_feature_batch(close * 1.003, close * 0.997, close, starts, ends)
    mid = time.perf_counter()
    snaps = snapshot_dicts(computed, ts, starts, ends, source="bench", timeframe="1h", instrument="BENCH")
    blobs = [orjson.dumps(s) for s in snaps]
    done = time.perf_counter()
    print(f"engine: {len(ends):,} distinct windows; features {len(ends) / (mid - started):,.0f}/s; "
          f"snapshots as JSON {len(ends) / (done - started):,.0f}/s ({len(blobs[0])} bytes each)", flush=True)


async def main() -> None:
    sizes = (env_int("BENCH_SMALL", 20_000), env_int("BENCH_RUNS", 200_000))
    batch = env_int("BENCH_BATCH", 1000)
    engine_line()
    data = load_ohlcv(write_daily_ohlcv(Path(tempfile.mkdtemp())), symbol=None)
    db = await fresh_database("kb_bench_regime")
    for runs in sizes:
        base_ws, ws = uuid.uuid4(), uuid.uuid4()
        await seed(db, base_ws, runs)
        await seed(db, ws, runs)
        await db.execute("VACUUM ANALYZE backtest_runs")
        written, spent = await write_alone(db, base_ws, data, batch)
        print(f"{runs:>9,} runs  baseline, batched snapshot write alone: {written:,} runs in {spent:.1f}s = "
              f"{written / spent:,.0f} runs/s", flush=True)
        result = await backfill_regime(db, RegimeOptions(workspace_id=ws, timeframe="1d", limit=runs,
                                                         batch_size=batch), data, 86_400)
        c = result.counters
        pre = await db.fetchval("SELECT count(*) FROM backtest_runs WHERE workspace_id = $1 AND regime_pre IS NOT NULL"
                                " AND regime_is IS NOT NULL", ws)
        rate = c.scanned / result.elapsed_s
        print(f"{runs:>9,} runs  backfill-regime: {c.scanned:,} runs in {result.elapsed_s:.1f}s = {rate:,.0f} runs/s "
              f"end to end ({rate / (written / spent):.2f}x the write alone); updated {c.updated:,} "
              f"({pre:,} with all three snapshots); skipped {c.rejected:,}; peak RSS {peak_rss_mb():.0f} MB",
              flush=True)
    await db.close()


if __name__ == "__main__":
    run(main())
