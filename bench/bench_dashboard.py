"""Dashboard render times in headless Chromium: each view of a 100,000-trial workspace
(4 strategies), from navigation to the view drawn, against the same views of a
1,000-trial workspace measured in the same run as the baseline; then `kb report` on the
big workspace (build time, file size, render time from disk).

BENCH_TRIALS overrides 100,000. Needs Debian's chromium (`apt-get install -y chromium`).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import uvicorn
from _common import env_int, fresh_database, run
from bench_kb import load_candidates
from playwright.async_api import async_playwright

from app.api.app import create_app
from app.db import Database
from app.services.kb.dashboard import report_data
from app.services.kb.ingest import ingest
from app.web import report_page

VIEWS = ("overview", "coverage", "strategy", "gate", "evaluation")
STRATEGIES = ("sma_cross", "bollinger", "breakout", "rsi")


async def workspace(db: Database, trials: int, seed: int) -> uuid.UUID:
    rng = np.random.default_rng(seed)
    ws = uuid.uuid4()
    await db.execute("INSERT INTO workspaces (id, name) VALUES ($1, $2)", ws, f"bench {trials:,}")
    await load_candidates(db, ws, trials, rng, STRATEGIES)
    await ingest(db, ws)
    return ws


async def render(page, url: str, view: str) -> float:
    """A full page load (not a same-document hash change) until the view is drawn."""
    await page.goto("about:blank")
    started = time.perf_counter()
    await page.goto(url)
    await page.wait_for_selector(f"body[data-ready={view}]", state="attached", timeout=60_000)
    return time.perf_counter() - started


async def main() -> None:
    big_n = env_int("BENCH_TRIALS", 100_000)
    db = await fresh_database("kb_bench_dashboard")
    small = await workspace(db, 1000, 1)
    big = await workspace(db, big_n, 2)
    await db.execute("VACUUM ANALYZE")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(db), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.05)
    chromium = shutil.which("chromium")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        for label, ws in (("baseline 1,000 trials", small), (f"{big_n:,} trials", big)):
            parts = []
            for view in VIEWS:
                url = f"http://127.0.0.1:{port}/?workspace_id={ws}#{view}"
                await render(page, url, view)  # warm: server caches, browser cache
                times = [await render(page, url, view) for _ in range(3)]
                parts.append(f"{view} {np.median(times) * 1000:.0f} ms")
            print(f"{label}: " + ", ".join(parts) + " (median of 3, navigation to drawn)")
        started = time.perf_counter()
        html = report_page(await report_data(db, big))
        built = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "report.html"
            path.write_text(html, encoding="utf-8")
            times = [await render(page, f"{path.as_uri()}#{view}", view) for view in VIEWS]
        print(f"kb report on {big_n:,} trials: built in {built:.1f}s, {len(html.encode()) / 1e6:.1f} MB; views from "
              f"file:// " + ", ".join(f"{v} {t * 1000:.0f} ms" for v, t in zip(VIEWS, times, strict=True)))
        await browser.close()
    server.should_exit = True
    await task
    await db.close()


if __name__ == "__main__":
    run(main())
