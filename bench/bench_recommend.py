"""Walk-forward quality of recommend() in a synthetic regime-switching market.

For each seed: build the market, sweep both strategies over rolling windows, load the
runs, run backfill-regime (with ex-ante snapshots), backfill-candidacy and ingest, then
replay history walk-forward exactly as `kb evaluate` does. Prints realised OOS Sharpe on
the windows that follow each decision for recommend, the global best (as of that time),
the median set, a random tested set, the best set of the true current regime and the
oracle, overall and per true regime; then confidence calibration and the evaluate time.

BENCH_BARS (default 100000 hourly bars, about 48,000 runs) and BENCH_SEEDS (default 1,2).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import env_int, fresh_database, run

from app.db import with_database
from app.db.embedded import database_url
from app.db.runs import copy_runs
from app.db.workspaces import ensure_workspace
from app.services.kb.backfill.candidacy import CandidacyOptions, backfill_candidacy
from app.services.kb.backfill.regime import RegimeOptions, backfill_regime
from app.services.kb.ingest import ingest
from app.services.kb.recommend.cache import EvidenceCache
from app.services.kb.recommend.evaluate import evaluate_matrix
from app.services.kb.recommend.walkforward import sums_of
from app.services.kb.regime.ohlcv import load_ohlcv
from app.services.kb.synthetic.world import GRIDS, REGIMES, make_world, sweep_runs, true_regime

COLUMNS = ("id", "workspace_id", "created_at", "run_kind", "status", "strategy_name", "experiment_type",
           "params", "dataset_meta", "summary", "trade_count")


def true_regime_best(world, m, wf) -> tuple[list[float], list[str]]:
    """Realised Sharpe of the set with the best mean over earlier windows of the same true
    regime (the regime of the bars just before the decision), and that regime."""
    t0 = int(world.ts[0])
    bar_ns = int(world.ts[1] - world.ts[0])
    idx = {j: int((m.start_ns[j] - t0) // bar_ns) for j in range(m.n_windows)}
    regime_of = {j: REGIMES[int(world.regime[max(idx[j] - 1, 0)])] for j in idx}
    realised, labels = [], []
    for d in wf.decisions:
        j = d.window
        prior = [w for w in range(m.n_windows) if 0 <= m.end_ns[w] < m.start_ns[j] and regime_of[w] == regime_of[j]]
        if prior:
            n, total, _ = sums_of(m, np.array(prior))
            means = np.where(m.eligible & (n > 0), total / np.maximum(n, 1), -np.inf)
            best = int(np.argmax(means))
        else:
            best = d.global_best
        value = m.row(j)[best]
        realised.append(float(value) if np.isfinite(value) else d.realised_global)
        e = idx[j] + 199
        labels.append(true_regime(world, idx[j], e))
    return realised, labels


async def one_seed(seed: int, bars: int) -> None:
    db = await fresh_database(f"kb_bench_recommend_{seed}")
    ws = uuid.uuid4()
    world = make_world(bars, seed)
    rows = sweep_runs(world, ws, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "world.csv"
        world.frame().to_csv(path, index=False)
        async with db.acquire() as conn:
            await ensure_workspace(conn, ws, "bench")
            await copy_runs(conn, rows, COLUMNS)
        data = load_ohlcv(path)
        t = time.monotonic()
        await backfill_regime(db, RegimeOptions(workspace_id=ws, symbol="SYN", timeframe="1h", limit=10**8,
                                                batch_size=1000), data, 3600)
        await backfill_candidacy(db, CandidacyOptions(workspace_id=ws, limit=10**8, batch_size=1000))
        ing = await ingest(db, ws)
        pipeline_s = time.monotonic() - t
    print(f"\n== seed {seed}: {bars:,} bars, {len(rows):,} runs, pipeline {pipeline_s:.1f}s, "
          f"{ing.inserted:,} trials, {ing.evidence:,} evidence rows")
    cache = EvidenceCache()
    for strategy in GRIDS:
        t = time.monotonic()
        m = await cache.get(db, ws, strategy)
        check = evaluate_matrix(m)
        report, wf = check.summary, check.model
        eval_s = time.monotonic() - t
        trb, labels = true_regime_best(world, m, wf)
        rs = report["realised_sharpe"]
        print(f"-- {strategy}: {report['decisions']} decisions (nested: tuning and regime-vs-global choice from "
              f"earlier decisions only), tuning now k={report['tuning']['k']} shrink={report['tuning']['shrink']}, "
              f"conditioned share {report['conditioned_share']:.2f}, evaluate (load + replay of "
              f"{report['configurations_tried']} tunings) {eval_s:.1f}s")
        print(f"   {'method':<22}{'realised Sharpe':>16}")
        for name, value in (("recommend", rs["recommend"]), ("global best", rs["global_best"]),
                            ("median set", rs["median_set"]), ("random tested set", rs["random_set"]),
                            ("true-regime best", float(np.mean(trb))), ("oracle", rs["oracle"])):
            print(f"   {name:<22}{value:>16.3f}")
        print(f"   uplift {report['uplift']:+.3f} +- {report['uplift_se']:.3f} (block SE), "
              f"hit rate {report['hit_rate']:.2f}")
        print(f"   {'true regime':<12}{'n':>5}{'recommend':>11}{'global':>9}{'true-best':>11}")
        for regime in REGIMES:
            sel = [i for i, lab in enumerate(labels) if lab == regime]
            if sel:
                rec = np.mean([wf.decisions[i].realised for i in sel])
                glo = np.mean([wf.decisions[i].realised_global for i in sel])
                print(f"   {regime:<12}{len(sel):>5}{rec:>11.3f}{glo:>9.3f}{np.mean([trb[i] for i in sel]):>11.3f}")
        pr = report["promises"]
        print(f"   promises: mean expected {pr['mean_expected']:+.3f} (raw {pr['mean_raw_expected']:+.3f}) vs "
              f"realised {pr['mean_realised']:+.3f}; 80% interval coverage {pr['interval_coverage']:.2f}")
        print("   reliability (P(Sharpe>0) bin: n, claimed, observed): " + "; ".join(
            f"{r['bin']}: {r['decisions']}, {r['mean_confidence']}, {r['realised_positive']}"
            for r in pr["reliability"] if r["decisions"]))
        cal = report["calibration"]
        print("   confidence tercile realised: " + ", ".join(
            f"{k} {v['realised']:.3f} (conf {v['mean_confidence']:.2f})" for k, v in cal.items() if v["decisions"]))
    await db.close()
    cli_latency(f"kb_bench_recommend_{seed}", ws, len(rows))


def _time_kb(url: str, argv: list[str], times: int) -> list[float]:
    env = {**os.environ, "DATABASE_URL": url}
    out = []
    for _ in range(times):
        t = time.monotonic()
        subprocess.run([sys.executable, "-m", "app.services.kb.cli", *argv], env=env, check=True, capture_output=True)
        out.append(time.monotonic() - t)
    return out


def cli_latency(name: str, ws: uuid.UUID, runs: int) -> None:
    """Wall time of a `kb recommend` process against a `kb status` process on the same
    workspace, after the first recommend of this revision stored its walk-forward check."""
    url = with_database(database_url(), name)
    status = ["status", "--workspace-id", str(ws), "--json"]
    for strategy in GRIDS:
        rec = ["recommend", "--workspace-id", str(ws), "--strategy", strategy, "--tags", "uptrend", "--json"]
        first = _time_kb(url, rec, 1)[0]
        r, s = _time_kb(url, rec, 5), _time_kb(url, status, 5)
        print(f"   CLI {strategy} ({runs:,} runs): first recommend {first:.2f}s (replays and stores the check); "
              f"then recommend median {statistics.median(r):.2f}s vs status {statistics.median(s):.2f}s "
              f"= {statistics.median(r) / statistics.median(s):.2f}x")


async def main() -> None:
    bars = env_int("BENCH_BARS", 100_000)
    seeds = [int(s) for s in __import__("os").environ.get("BENCH_SEEDS", "1,2").split(",")]
    for seed in seeds:
        await one_seed(seed, bars)


if __name__ == "__main__":
    run(main())
