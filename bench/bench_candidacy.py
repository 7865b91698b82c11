"""backfill-candidacy at scale: 1,000,000 runs over 10 workspaces, ~30% eligible.

Prints seed rows/s, then per batch size: scanned rows/s, updated rows/s, peak memory.
BENCH_RUNS overrides the total (default 1,000,000).
"""

from __future__ import annotations

import time
import uuid

from _common import env_int, fresh_database, peak_rss_mb, run

from app.services.kb.backfill.candidacy import CandidacyOptions, backfill_candidacy
from app.services.kb.synthetic.seed import seed_runs


async def main() -> None:
    total = env_int("BENCH_RUNS", 1_000_000)
    db = await fresh_database("kb_bench_candidacy")
    workspaces = [uuid.UUID(int=i + 1) for i in range(10)]
    started = time.perf_counter()
    for i, ws in enumerate(workspaces):
        await seed_runs(db, ws, total // 10, seed=i, eligible_share=0.3)
    seeded = time.perf_counter() - started
    print(f"seed: {total:,} runs in {seeded:.1f}s = {total / seeded:,.0f} rows/s")
    await db.execute("VACUUM ANALYZE backtest_runs")
    for ws, batch in ((workspaces[0], 100), (workspaces[1], 1000)):
        dry_started = time.perf_counter()
        dry = await backfill_candidacy(db, CandidacyOptions(workspace_id=ws, limit=10**8, dry_run=True,
                                                            batch_size=batch))
        dry_s = time.perf_counter() - dry_started
        result = await backfill_candidacy(db, CandidacyOptions(workspace_id=ws, limit=10**8, batch_size=batch))
        c, s = result.counters, result.elapsed_s
        print(f"batch {batch:>5}: scanned {c.scanned:,} in {s:.2f}s = {c.scanned / s:,.0f} rows/s; "
              f"updated {c.updated:,} = {c.updated / s:,.0f} rows/s; "
              f"dry run {dry.counters.scanned / dry_s:,.0f} rows/s; peak RSS {peak_rss_mb():.0f} MB")
    await db.close()


if __name__ == "__main__":
    run(main())
