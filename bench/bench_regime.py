"""backfill-regime at scale: a 10-year hourly series (87,600 bars) and 100,000 runs with
distinct OOS windows. Prints engine snapshots/s, end-to-end runs/s per batch size, peak memory.
BENCH_RUNS overrides the run count."""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from _common import env_int, fresh_database, peak_rss_mb, run

from app.services.kb.backfill.regime import RegimeOptions, backfill_regime
from app.services.kb.regime.features import compute_feature_batch, snapshot_dicts
from app.services.kb.regime.ohlcv import load_ohlcv

BARS = 87_600
START = datetime(2015, 1, 1, tzinfo=UTC)


def write_series(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, BARS)))
    ts = pd.date_range(START, periods=BARS, freq="h", tz="UTC")
    path = folder / "series.parquet"
    pd.DataFrame({"timestamp": ts, "open": close, "high": close * 1.003, "low": close * 0.997,
                  "close": close}).to_parquet(path)
    return path


async def main() -> None:
    runs = env_int("BENCH_RUNS", 100_000)
    folder = Path(tempfile.mkdtemp())
    data = load_ohlcv(write_series(folder), symbol="BENCH")
    series = data.series["BENCH"]
    rng = np.random.default_rng(1)
    ends = rng.integers(400, BARS, runs)
    starts = ends - rng.integers(60, 1500, runs)
    started = time.perf_counter()
    batch = compute_feature_batch(series.high, series.low, series.close, starts, ends)
    mid = time.perf_counter()
    snaps = snapshot_dicts(batch, series.ts, starts, ends, source="bench", timeframe="1h", instrument="BENCH")
    done = time.perf_counter()
    blobs = [orjson.dumps(s) for s in snaps]
    ser = time.perf_counter()
    print(f"engine: {runs:,} distinct windows; features {runs / (mid - started):,.0f}/s; "
          f"features+tags+evidence {runs / (done - started):,.0f} snapshots/s; "
          f"with JSON {runs / (ser - started):,.0f}/s ({len(blobs[0])} bytes each)")
    del snaps, blobs
    for batch_size in (1000, 100):
        db = await fresh_database("kb_bench_regime")
        ws = uuid.uuid4()
        await db.execute("INSERT INTO workspaces (id, name) VALUES ($1, 'bench')", ws)
        base = datetime(2025, 1, 1, tzinfo=UTC)
        records = [
            (uuid.uuid4(), ws, base + timedelta(seconds=i), "test_variant", "completed",
             orjson.dumps({"symbol": "BENCH", "timeframe": "1h",
                           "oos_start": (START + timedelta(hours=int(starts[i]))).isoformat(),
                           "oos_end": (START + timedelta(hours=int(ends[i]))).isoformat()}).decode())
            for i in range(runs)
        ]
        async with db.acquire() as conn:
            await conn.copy_records_to_table("backtest_runs", records=records, columns=(
                "id", "workspace_id", "created_at", "run_kind", "status", "dataset_meta"))
            await conn.execute("VACUUM ANALYZE backtest_runs")
        result = await backfill_regime(db, RegimeOptions(workspace_id=ws, timeframe="1h", symbol="BENCH",
                                                         limit=runs, batch_size=batch_size), data, 3600)
        c = result.counters
        print(f"batch {batch_size:>5}: {c.scanned:,} runs in {result.elapsed_s:.1f}s = "
              f"{c.scanned / result.elapsed_s:,.0f} runs/s end to end; updated {c.updated:,}; "
              f"skipped {c.rejected:,}; peak RSS {peak_rss_mb():.0f} MB")
        await db.close()


if __name__ == "__main__":
    run(main())
