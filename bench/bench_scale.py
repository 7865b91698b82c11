"""Scale check: the real `kb` commands on a 1,000,000-run workspace and on a 100,000-run
one, each in its own process, with that process's peak RSS (from wait4). Flat memory
means the two peaks are about equal. Then `kb serve` answers 200 concurrent recommend
requests per round from a local client; prints errors and latency percentiles.

BENCH_RUNS (default 1,000,000) and BENCH_SMALL (100,000) set the two sizes;
BENCH_ROUNDS (5) the number of 200-request rounds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
from _common import env_int, fresh_database, run

from app.db import with_database
from app.db.embedded import database_url
from app.services.kb.synthetic.seed import SEED_EPOCH, seed_runs

ROOT = Path(__file__).resolve().parents[1]
KB = [sys.executable, "-m", "app.services.kb.cli"]
DB_NAME = "kb_bench_scale"


def write_daily_ohlcv(folder: Path) -> Path:
    """Daily bars for the seeded symbols SYM0..SYM2, a year before the first OOS window
    to well past the last."""
    rng = np.random.default_rng(3)
    days = pd.date_range(pd.Timestamp(SEED_EPOCH) - pd.Timedelta(days=400), periods=1000, freq="D")
    frames = []
    for k in range(3):
        close = 100 * np.exp(np.cumsum(rng.normal(0.0003 * (k - 1), 0.015, len(days))))
        frames.append(pd.DataFrame({"symbol": f"SYM{k}", "timestamp": days, "open": close,
                                    "high": close * 1.01, "low": close * 0.99, "close": close}))
    path = folder / "daily.parquet"
    pd.concat(frames).to_parquet(path)
    return path


def run_measured(url: str, *argv: str) -> tuple[dict[str, object], float, float]:
    """Run one `kb` command; return its JSON report, wall seconds and peak RSS in MB."""
    started = time.perf_counter()
    # Both outputs go to files: reading one pipe while the other fills could stall the child,
    # and wait4 (for this child's own peak RSS) must be what reaps it.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*KB, *argv, "--json"], cwd=ROOT, env={**os.environ, "DATABASE_URL": url},
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"kb {' '.join(argv)} failed ({proc.returncode}): {err.read().decode().strip()}")
        return orjson.loads(out.read()), wall, usage.ru_maxrss / 1024.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def api_load(url: str, ws: uuid.UUID, rounds: int) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "KB_API_TOKEN": "bench"}
    server = await asyncio.create_subprocess_exec(*KB, "serve", "--port", str(port), cwd=ROOT, env=env,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    headers = {"Authorization": "Bearer bench"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120,
                                     limits=httpx.Limits(max_connections=200)) as client:
            for _ in range(100):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            tags = [["uptrend"], ["downtrend", "high_vol"], ["range"], ["low_vol"]]
            bodies = [{"workspace_id": str(ws), "strategy_name": s, "tags": t, "top_k": 20}
                      for s in ("mean_rev", "breakout", "trend_follow") for t in tags]
            for body in bodies[::len(tags)]:  # one per strategy: load each trial matrix once
                t0 = time.perf_counter()
                await client.post("/kb/trials/recommend", json=body)
                print(f"API: cold first recommend for {body['strategy_name']} "
                      f"{(time.perf_counter() - t0) * 1000:,.0f} ms (loads its trials)", flush=True)

            async def one(i: int) -> tuple[float, int]:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/kb/trials/recommend", json=bodies[i % len(bodies)])
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0
                return time.perf_counter() - t0, code

            latencies, errors, started = [], 0, time.perf_counter()
            for _ in range(rounds):
                results = await asyncio.gather(*(one(i) for i in range(200)))
                latencies += [t for t, _ in results]
                errors += sum(code != 200 for _, code in results)
            total = time.perf_counter() - started
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)
    ms = np.array(latencies) * 1000
    print(f"API: {len(ms)} recommends in rounds of 200 concurrent, {errors} errors, "
          f"{len(ms) / total:,.0f} req/s; latency p50 {np.percentile(ms, 50):,.0f} ms, "
          f"p95 {np.percentile(ms, 95):,.0f} ms, p99 {np.percentile(ms, 99):,.0f} ms")


async def main() -> None:
    big, small, rounds = env_int("BENCH_RUNS", 1_000_000), env_int("BENCH_SMALL", 100_000), env_int("BENCH_ROUNDS", 5)
    db = await fresh_database(DB_NAME)
    url = with_database(database_url(), DB_NAME)
    spaces = {}
    for n in (small, big):
        ws = uuid.uuid4()
        t0 = time.perf_counter()
        await seed_runs(db, ws, n)
        print(f"seeded {n:,} runs in {time.perf_counter() - t0:.1f}s", flush=True)
        spaces[n] = ws
    await db.execute("VACUUM ANALYZE")
    await db.close()
    ohlcv = write_daily_ohlcv(Path(tempfile.mkdtemp()))
    steps = [
        ("backfill-regime", ["--ohlcv-file", str(ohlcv), "--timeframe", "1d", "--batch-size", "1000",
                             "--limit", "100000000"], "total_scanned", "updated"),
        ("backfill-candidacy", ["--batch-size", "1000", "--limit", "100000000"], "total_scanned", "updated"),
        ("ingest", [], "scanned", "inserted"),
    ]
    for command, extra, scanned_key, written_key in steps:
        peaks = []
        for n, ws in spaces.items():
            report, wall, peak = run_measured(url, command, "--workspace-id", str(ws), *extra)
            scanned, written = int(report[scanned_key]), int(report[written_key])
            peaks.append(peak)
            print(f"{command:<19} {n:>9,} runs: scanned {scanned:,}, wrote {written:,} in {wall:.1f}s "
                  f"({scanned / wall:,.0f} rows/s wall incl. start-up); peak RSS {peak:,.0f} MB", flush=True)
        print(f"{command:<19} peak RSS {peaks[0]:,.0f} MB at {small:,} runs vs {peaks[1]:,.0f} MB at {big:,} "
              f"({peaks[1] / peaks[0]:.2f}x for {big / small:.0f}x the runs)", flush=True)
    await api_load(url, spaces[big], rounds)


if __name__ == "__main__":
    run(main())
