"""Scale check: the real `kb` commands (import of a sweep file, both backfills, ingest) on a
1,000,000-run workspace and on a 100,000-run one, each in its own process, with that
process's peak RSS (from wait4, through a small launcher: see `_LAUNCHER`). Flat memory
means the two peaks are about equal. Then
`kb serve` answers 200 concurrent recommend requests per round from a local client;
prints errors and latency percentiles.

Then one strategy of BENCH_TRIALS (1,000,000) trials in its own workspace: the cold
first answer of a `kb serve`, the server's memory per cached trial, `kb evaluate`, and
the first answer after a new sweep of 1,000 runs on the latest windows was seeded,
backfilled and ingested (the cached matrices take the new rows; the new revision's check
replays only the decisions those windows reach), then warm latency percentiles of one client, then the
first answer of a second `kb serve` started after the first stopped (from the matrix
files the first kept).

BENCH_RUNS (default 1,000,000) and BENCH_SMALL (100,000) set the two sizes;
BENCH_ROUNDS (5) the number of 200-request rounds; BENCH_TRIALS=0 skips the one-strategy part.
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
from _common import env_int, fresh_database, run, write_daily_ohlcv

from app.db import with_database
from app.db.embedded import database_url
from app.services.kb.synthetic.seed import seed_runs

ROOT = Path(__file__).resolve().parents[1]
KB = [sys.executable, "-m", "app.services.kb.cli"]
DB_NAME = os.environ.get("BENCH_DB", "kb_bench_scale")


# Linux keeps a process's peak RSS across exec, so a child's peak from wait4 counts the
# pages of the process that forked it: a `kb` command started from this bench (hundreds of
# MB once it has written a sweep) would report the bench's own peak. A small launcher
# starts each command instead and reports that command's peak.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "code = os.waitstatus_to_exitcode(status)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(str(usage.ru_maxrss))\n"
    "sys.exit(code)\n"
)


def run_measured(url: str, *argv: str) -> tuple[dict[str, object], float, float]:
    """Run one `kb` command; return its JSON report, wall seconds and peak RSS in MB."""
    started = time.perf_counter()
    # Both outputs go to files: reading one pipe while the other fills could stall the child.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as peak:
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, peak.name, *KB, *argv, "--json"], cwd=ROOT,
                              env={**os.environ, "DATABASE_URL": url}, stdout=out, stderr=err, check=False)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"kb {' '.join(argv)} failed ({proc.returncode}): {err.read().decode().strip()}")
        return orjson.loads(out.read()), wall, int(peak.read()) / 1024.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_serve(url: str) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "KB_API_TOKEN": "bench"}
    server = await asyncio.create_subprocess_exec(*KB, "serve", "--port", str(port), cwd=ROOT, env=env,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(600):
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    return server, port


def write_sweep(path: Path, rows: int, seed: int) -> Path:
    """A researcher's sweep export of `rows` runs (backtesting.py-style stats and param
    columns) on the seeded symbols and dates, written in parts (memory stays small)."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from app.services.kb.synthetic.seed import GRID_LOOKBACKS, GRID_Z_ENTRIES, SEED_EPOCH  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    strategies = np.array(["mean_rev", "breakout", "trend_follow"])
    writer = None
    for lo in range(0, rows, 500_000):
        n = min(500_000, rows - lo)
        k = rng.integers(0, 3, n)
        eligible, failure = rng.random(n) < 0.3, rng.integers(0, 3, n)  # the ineligible fail one gate each
        start = np.datetime64(SEED_EPOCH.replace(tzinfo=None), "ms") + rng.integers(0, 300, n) * np.timedelta64(1, "D")
        sharpe = np.where(eligible | (failure != 2), rng.uniform(0.1, 3, n), rng.uniform(-2, 0.09, n))
        drawdown = np.where(eligible | (failure != 1), rng.uniform(1, 25, n), rng.uniform(25.5, 80, n))
        table = pa.table({
            "strategy_name": strategies[k], "param_lookback": GRID_LOOKBACKS[rng.integers(0, len(GRID_LOOKBACKS), n)],
            "param_z_entry": GRID_Z_ENTRIES[rng.integers(0, len(GRID_Z_ENTRIES), n)],
            "symbol": np.char.add("SYM", k.astype(str)),
            "timeframe": np.full(n, "1d"), "Start": start,
            "End": start + rng.integers(20, 120, n) * np.timedelta64(1, "D"),
            "Sharpe Ratio": sharpe.round(4), "Max. Drawdown [%]": -drawdown.round(3),
            "# Trades": np.where(eligible | (failure != 0), rng.integers(5, 200, n), rng.integers(0, 5, n)),
            "Return [%]": rng.normal(5, 10, n).round(3),
            "run_id": np.char.add(f"s{seed}-", np.arange(lo, lo + n).astype(str)),
        })
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


async def api_load(url: str, ws: uuid.UUID, rounds: int) -> None:
    server, port = await start_serve(url)
    headers = {"Authorization": "Bearer bench"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120,
                                     limits=httpx.Limits(max_connections=200)) as client:
            tags = [["uptrend"], ["downtrend", "high_vol"], ["range"], ["low_vol"]]
            bodies = [{"workspace_id": str(ws), "strategy_name": s, "tags": t, "top_k": 20}
                      for s in ("mean_rev", "breakout", "trend_follow") for t in tags]
            for body in bodies[::len(tags)]:  # one per strategy: load each trial matrix once
                t0 = time.perf_counter()
                await client.post("/kb/trials/recommend", json=body, timeout=900)  # reads every row at 10M
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


async def timed_post(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = await client.post(path, json=body)
    if r.status_code != 200:
        raise SystemExit(f"{path} answered {r.status_code}: {r.text[:300]}")
    return (time.perf_counter() - t0) * 1000, r.json()


async def one_strategy(url: str, db_url: str, trials: int, ohlcv: Path) -> None:
    """A strategy of `trials` trials: cold answer, memory per trial, evaluate, the first
    answer after a 1,000-trial ingest, warm latency."""
    from app.db import Database  # noqa: PLC0415

    ws, strategy = uuid.uuid4(), "trend_follow"
    db = await Database(db_url, max_size=2).open()
    await seed_runs(db, ws, trials, eligible_share=1.0, strategies=(strategy,))
    await db.execute("VACUUM ANALYZE")
    steps = [("backfill-regime", "--ohlcv-file", str(ohlcv), "--timeframe", "1d", "--batch-size", "1000",
              "--limit", "all"), ("backfill-candidacy", "--batch-size", "1000", "--limit", "all"), ("ingest",)]
    for argv in steps:
        report, wall, peak = run_measured(url, *argv, "--workspace-id", str(ws))
        print(f"one strategy, {trials:,} runs: {argv[0]} in {wall:.1f}s, peak RSS {peak:,.0f} MB", flush=True)
    server, port = await start_serve(url)
    body = {"workspace_id": str(ws), "strategy_name": strategy, "tags": ["uptrend"], "top_k": 20}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600,
                                     headers={"Authorization": "Bearer bench"}) as client:
            before = rss_mb(server.pid)
            ms, answer = await timed_post(client, "/kb/trials/recommend", {**body, "wait_for_check": True})
            after = rss_mb(server.pid)
            cached = (await client.get("/kb/cache")).json()
            for kind in ("trials", "evidence"):
                for e in cached[kind]:
                    print(f"  cached {kind} matrix: {e['rows']:,} rows, {e['bytes'] / 2**20:,.0f} MB = "
                          f"{e['bytes_per_row']:,.0f} bytes per row", flush=True)
            print(f"cold first answer at {trials:,} trials: {ms:,.0f} ms (status {answer['status']}); "
                  f"serve RSS {before:,.0f} -> {after:,.0f} MB = {(after - before) * 2**20 / trials:,.0f} bytes "
                  "per trial (trial and evidence matrices, walk-forward check)", flush=True)
            t0 = time.perf_counter()
            r = await client.get("/kb/evaluate", params={"workspace_id": str(ws), "strategy_name": strategy})
            print(f"kb evaluate (API, check stored by the answer above): {(time.perf_counter() - t0) * 1000:,.0f} ms, "
                  f"{r.json().get('decisions')} decisions", flush=True)
            # A new sweep on the latest windows (its OOS windows start after every earlier one).
            await seed_runs(db, ws, 1000, eligible_share=1.0, strategies=(strategy,), days=(300, 310))
            for argv in steps:
                report, wall, _ = run_measured(url, *argv, "--workspace-id", str(ws))
                extra = f" ({report['mode']}, {report['inserted']:,} trials added)" if argv[0] == "ingest" else ""
                print(f"  +1,000 runs: {argv[0]} in {wall:.2f}s{extra}", flush=True)
            ms, answer = await timed_post(client, "/kb/trials/recommend", body)
            print(f"first answer after the 1,000-trial ingest: {ms:,.0f} ms (walk-forward check of revision "
                  f"{answer['walk_forward'].get('kb_revision')}, stale={answer['walk_forward'].get('stale')}; "
                  f"considered {answer['considered']:,})", flush=True)
            ms, answer = await timed_post(client, "/kb/trials/recommend", {**body, "wait_for_check": True})
            checks = [e["check"] for e in (await client.get("/kb/cache")).json()["evidence"] if e["check"]]
            lent = ", ".join(f"{c['lent']:,} / {c['decisions']:,}" for c in checks)
            print(f"the same with the new revision's check awaited: {ms:,.0f} ms "
                  f"(stale={answer['walk_forward'].get('stale')}; decisions lent by the check before / all: {lent})",
                  flush=True)
            latencies = [(await timed_post(client, "/kb/trials/recommend", body))[0] for _ in range(200)]
            print(f"warm, one client, 200 answers: p50 {np.percentile(latencies, 50):,.1f} ms, "
                  f"p95 {np.percentile(latencies, 95):,.1f} ms, p99 {np.percentile(latencies, 99):,.1f} ms", flush=True)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)
    await restarted(url, body)
    await db.close()


async def restarted(url: str, body: dict[str, object]) -> None:
    """A new `kb serve`: its first answer starts from the matrix files the last one kept
    (KB_MATRIX_CACHE), checked against the database."""
    server, port = await start_serve(url)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600,
                                     headers={"Authorization": "Bearer bench"}) as client:
            ms, answer = await timed_post(client, "/kb/trials/recommend", {**body, "wait_for_check": True})
            disk = (await client.get("/kb/cache")).json()["disk"]
            print(f"first answer of a restarted kb serve: {ms:,.0f} ms (status {answer['status']}; matrices read "
                  f"from files {disk['loads']}, files not trusted {disk['stale']}, files written {disk['saves']})",
                  flush=True)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)


async def main() -> None:
    os.environ.setdefault("KB_MATRIX_CACHE", tempfile.mkdtemp(prefix="bench-matrices-"))  # not the user's KB_HOME
    big, small, rounds = env_int("BENCH_RUNS", 1_000_000), env_int("BENCH_SMALL", 100_000), env_int("BENCH_ROUNDS", 5)
    db = await fresh_database(DB_NAME)
    url = with_database(database_url(), DB_NAME)
    ohlcv = write_daily_ohlcv(Path(tempfile.mkdtemp()))
    if big:  # BENCH_RUNS=0: only the one-strategy part
        spaces, peaks = {}, []
        for n in (small, big):
            ws = uuid.uuid4()
            t0 = time.perf_counter()
            sweep = write_sweep(ohlcv.parent / f"sweep-{n}.parquet", n, seed=n)
            print(f"wrote a {n:,}-run sweep file in {time.perf_counter() - t0:.1f}s "
                  f"({sweep.stat().st_size / 2**20:,.0f} MB)", flush=True)
            report, wall, peak = run_measured(url, "import", str(sweep), "--workspace-id", str(ws))
            sweep.unlink()
            peaks.append(peak)
            print(f"{'import':<19} {n:>9,} runs: read {report['rows']:,}, wrote {report['imported']:,} in {wall:.1f}s "
                  f"({report['rows'] / wall:,.0f} rows/s wall incl. start-up); peak RSS {peak:,.0f} MB", flush=True)
            spaces[n] = ws
        print(f"{'import':<19} peak RSS {peaks[0]:,.0f} MB at {small:,} runs vs {peaks[1]:,.0f} MB at {big:,} "
              f"({peaks[1] / peaks[0]:.2f}x for {big / small:.0f}x the runs)", flush=True)
        await db.execute("VACUUM ANALYZE")
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
    await db.close()
    trials = env_int("BENCH_TRIALS", 1_000_000)
    if trials:
        await one_strategy(url, url, trials, ohlcv)


if __name__ == "__main__":
    run(main())
