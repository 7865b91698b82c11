"""KB at scale: 100,000 trials of one strategy. Prints ingest trials/s and rows/s (trials
and evidence) on a fresh workspace beside two same-run baselines (reading the ingest's
pages alone; a plain INSERT ... SELECT of as many evidence rows straight from the runs),
then recommend latency p50/p95/p99 over 1,000 queries, in process and through HTTP on
loopback. BENCH_TRIALS / BENCH_QUERIES override the sizes (BENCH_QUERIES=0: ingest only)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import orjson
import uvicorn
from _common import env_int, fresh_database, peak_rss_mb, run

from app.api.app import create_app
from app.db import Database
from app.db import trials as trials_db
from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, TrialCache, recommend
from app.services.kb.regime.snapshot import FEATURE_NAMES, RegimeSnapshot
from app.services.kb.runs.scan import keyset_start


def fake_regime(rng: np.random.Generator) -> dict:
    f = {"atr_pct": rng.uniform(0.002, 0.03), "rsi": rng.uniform(20, 80), "bb_width_pct": rng.uniform(0.01, 0.1),
         "std_pct": rng.uniform(0.002, 0.03), "range_pct": rng.uniform(0.02, 0.3), "zscore": rng.normal(0, 1.2),
         "trend_strength": rng.uniform(0, 1), "trend_dir": float(rng.integers(-1, 2)),
         "efficiency_ratio": rng.uniform(0, 1), "return_pct": rng.normal(0, 0.1)}
    tags = sorted(rng.choice(["uptrend", "downtrend", "flat", "high_vol", "low_vol", "noisy", "choppy"], 2,
                             replace=False).tolist())
    return {**f, "regime_tags": tags, "schema_version": "regime_v1"}


async def load_candidates(db: Database, ws: uuid.UUID, n: int, rng: np.random.Generator,
                          strategies: tuple[str, ...]) -> None:
    """COPY `n` candidate runs with random params, metrics and regimes (strategies in turn)."""
    base = datetime(2025, 1, 1, tzinfo=UTC)
    records = [
        (uuid.uuid4(), ws, base + timedelta(seconds=i), "test_variant", "completed", strategies[i % len(strategies)],
         "candidate",
         orjson.dumps({"fast": int(rng.integers(5, 30)), "slow": int(rng.integers(40, 200)),
                       "mode": str(rng.choice(["a", "b"]))}).decode(),
         orjson.dumps({"trades": int(rng.integers(5, 200)), "sharpe": float(rng.uniform(0.1, 3)),
                       "max_drawdown_pct": -float(rng.uniform(1, 25)), "return_pct": float(rng.normal(5, 5))}).decode(),
         orjson.dumps(fake_regime(rng)).decode())
        for i in range(n)
    ]
    async with db.acquire() as conn:
        await conn.copy_records_to_table("backtest_runs", records=records, columns=(
            "id", "workspace_id", "created_at", "run_kind", "status", "strategy_name", "kb_status", "params",
            "summary", "regime_oos"))


def percentiles(samples: list[float]) -> str:
    p50, p95, p99 = np.percentile(np.array(samples) * 1000, [50, 95, 99])
    return f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms"


async def read_pages(db: Database, ws: uuid.UUID, size: int = 1000) -> tuple[int, float]:
    """Baseline: the ingest's page reads alone (every selected run, keyset pages)."""
    started = time.perf_counter()
    cursor = keyset_start(None)
    n = 0
    async with db.acquire() as conn:
        while page := await trials_db.ingest_page(conn, ws, cursor, size):
            n += len(page)
            cursor = (page[-1]["created_at"], page[-1]["id"])
    return n, time.perf_counter() - started


async def insert_select(db: Database, ws: uuid.UUID) -> tuple[int, float]:
    """Baseline: one INSERT ... SELECT of an evidence row per run, built in SQL from the
    run's columns (no parsing in Python, no hashes, no conflicts); the rows are then removed."""
    started = time.perf_counter()
    async with db.acquire() as conn:
        status = await conn.execute(
            "INSERT INTO kb_evidence (workspace_id, source_run_id, strategy_name, params, sharpe, n_trades,"
            " oos_features, oos_tags, eligible, content_hash) "
            "SELECT workspace_id, id, strategy_name, params, (summary->>'sharpe')::float8,"
            " (summary->>'trades')::bigint,"
            " ARRAY(SELECT (regime_oos->>f)::float8 FROM unnest($2::text[]) f),"
            " ARRAY(SELECT jsonb_array_elements_text(regime_oos->'regime_tags')), true, md5(id::text) "
            "FROM backtest_runs WHERE workspace_id = $1", ws, list(FEATURE_NAMES))
        elapsed = time.perf_counter() - started
        await conn.execute("TRUNCATE kb_evidence")  # the bench database holds this workspace only
    return int(status.split()[-1]), elapsed


async def main() -> None:
    trials, queries = env_int("BENCH_TRIALS", 100_000), env_int("BENCH_QUERIES", 1000)
    rng = np.random.default_rng(0)
    db = await fresh_database("kb_bench_kb")
    ws = uuid.uuid4()
    await db.execute("INSERT INTO workspaces (id, name) VALUES ($1, 'bench')", ws)
    await load_candidates(db, ws, trials, rng, ("strat",))
    async with db.acquire() as conn:
        await conn.execute("VACUUM ANALYZE backtest_runs")
    n, wall = await read_pages(db, ws)
    print(f"baseline, page reads alone: {n:,} runs in {wall:.1f}s = {n / wall:,.0f} runs/s")
    n, wall = await insert_select(db, ws)
    print(f"baseline, INSERT ... SELECT into kb_evidence: {n:,} rows in {wall:.1f}s = {n / wall:,.0f} rows/s")
    result = await ingest(db, ws)
    rows = result.inserted + result.evidence
    print(f"ingest (fresh workspace): {result.inserted:,} trials + {result.evidence:,} evidence rows in "
          f"{result.elapsed_s:.1f}s = {result.inserted / result.elapsed_s:,.0f} trials/s, "
          f"{rows / result.elapsed_s:,.0f} rows/s; peak RSS {peak_rss_mb():.0f} MB")
    again = await ingest(db, ws, full=True)
    print(f"re-ingest (all unchanged): {again.skipped:,} skipped in {again.elapsed_s:.1f}s")
    if queries <= 0:
        await db.close()
        return
    regimes = [fake_regime(rng) for _ in range(queries)]
    cache = TrialCache()
    await recommend(db, RecommendQuery(ws, "strat", regime=RegimeSnapshot.from_dict(regimes[0])), cache)  # warm
    samples = []
    for r in regimes:
        started = time.perf_counter()
        out = await recommend(db, RecommendQuery(ws, "strat", regime=RegimeSnapshot.from_dict(r)), cache)
        samples.append(time.perf_counter() - started)
    assert out.status in ("ok", "degraded", "none")
    print(f"recommend in process over {trials:,} trials: {percentiles(samples)}")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(db), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn exposes no event for "listening")
        await asyncio.sleep(0.05)
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) as client:
        body = lambda r: {"workspace_id": str(ws), "strategy_name": "strat",  # noqa: E731
                          "regime": r}
        await client.post("/kb/trials/recommend", json=body(regimes[0]))
        samples = []
        for r in regimes:
            started = time.perf_counter()
            resp = await client.post("/kb/trials/recommend", json=body(r))
            samples.append(time.perf_counter() - started)
            assert resp.status_code == 200, resp.text
        print(f"recommend over HTTP (loopback, same process client): {percentiles(samples)}")
        concurrent = 200
        started = time.perf_counter()
        results = await asyncio.gather(*(client.post("/kb/trials/recommend", json=body(regimes[i % queries]))
                                         for i in range(concurrent)))
        wall = time.perf_counter() - started
        errors = sum(1 for r in results if r.status_code != 200)
        print(f"{concurrent} concurrent HTTP recommends: {errors} errors, all done in {wall * 1000:.0f} ms")
    server.should_exit = True
    await task
    print(f"features per trial: {len(FEATURE_NAMES)}; peak RSS {peak_rss_mb():.0f} MB")
    await db.close()


if __name__ == "__main__":
    run(main())
