"""The dashboard and the report in a real headless Chromium (Debian's `chromium`), served
by a real `kb serve` process on a workspace made by `kb demo`.

Screenshots of every view are kept under `test-artifacts/screenshots/` (or
`$KB_TEST_ARTIFACTS/screenshots`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pytest
from playwright.async_api import Browser, Page, async_playwright

from app.cli.demo import demo_workspace_id

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("KB_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"
VIEWS = ("overview", "coverage", "strategy", "gate", "evaluation")
TOKEN = "dashboard-s3cret-token"
SEED = 11


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Debian's chromium package is needed for the browser tests (apt-get install -y chromium)"
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def demo_workspace(cli, tmp_path) -> uuid.UUID:
    code, _, err = await cli("demo", "--runs", "1500", "--seed", SEED, "--data-dir", tmp_path / "demo")
    assert code == 0, err
    return demo_workspace_id(SEED)


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log


async def _serve(db_url: str, tmp_path: Path, token: str | None) -> AsyncIterator[Server]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "KB_API_TOKEN"}
    env |= {"DATABASE_URL": db_url, **({"KB_API_TOKEN": token} if token else {})}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.services.kb.cli", "serve",
                                                    "--port", str(port), env=env, stdout=sink, stderr=sink, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(150):
                try:
                    if (await client.get(url + "/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"kb serve did not start: {log.read_text()}")
        yield Server(proc, url, log)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)


@pytest.fixture
async def server(db_url, tmp_path, demo_workspace) -> AsyncIterator[Server]:
    async for s in _serve(db_url, tmp_path, None):
        yield s


@pytest.fixture
async def token_server(db_url, tmp_path, demo_workspace) -> AsyncIterator[Server]:
    async for s in _serve(db_url, tmp_path, TOKEN):
        yield s


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield launched
        await launched.close()


class Watch:
    """Console errors and every request the page makes."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))


async def _open(page: Page, url: str, view: str) -> None:
    await page.goto(url)
    await page.wait_for_selector(f"body[data-ready={view}]", state="attached", timeout=20_000)


async def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def _points(page: Page, canvas_id: str) -> int:
    return await page.evaluate(
        "(id) => Chart.getChart(document.getElementById(id)).data.datasets.reduce((n, d) => n + d.data.length, 0)",
        canvas_id)


async def _check_views(page: Page, base: str, workspace: uuid.UUID, prefix: str) -> None:
    for view in VIEWS:
        await _open(page, f"{base}?workspace_id={workspace}#{view}" if base.startswith("http") else f"{base}#{view}",
                    view)
        await _shot(page, f"{prefix}-{view}")
        text = await page.inner_text("body")
        if view == "overview":
            assert await _points(page, "chart-trials") == 3
            assert "candidacy" in await page.inner_text("#ledger")
        if view == "coverage":
            strategies = await page.eval_on_selector_all("#heatmap thead th",
                                                         "ths => ths.slice(1).map(t => t.textContent)")
            tags = await page.eval_on_selector_all("#heatmap tbody th", "ths => ths.map(t => t.textContent)")
            assert sorted(strategies) == ["breakout", "mean_rev", "trend_follow"]
            cells = await page.eval_on_selector_all(
                "#heatmap td.cell", "tds => tds.map(t => t.dataset.tag + '|' + t.dataset.strategy)")
            assert len(cells) == len(set(cells)) == len(tags) * len(strategies)
            assert "blind spot" in text or await page.locator("td.cell.ok").count() > 0
        if view == "strategy":
            params = await page.eval_on_selector_all("#param-charts figure", "fs => fs.map(f => f.dataset.param)")
            assert params, "no parameter charts"
            first = "param-" + params[0]
            assert await _points(page, first) > 50
        if view == "evaluation":  # the demo's sweeps give the walk-forward replay decisions to show
            assert await page.locator("#evaluation-cards .card").count() == 5
            assert await _points(page, "chart-realised") == 5
        if view == "gate":
            assert await _points(page, "chart-funnel") == 5
            assert await page.locator("#reasons tbody tr").count() >= 1
        # Every chart has a text alternative: a summary on the canvas and a table of its values.
        for canvas, label, has_table in await page.eval_on_selector_all(
                ".view:not([hidden]) canvas",
                "cs => cs.map(c => [c.id, c.getAttribute('aria-label') || '', "
                "!!document.querySelector(`table[data-chart='${c.id}']`)])"):
            assert label and has_table, canvas
        content = await page.text_content(f"#view-{view}")
        for name in ("breakout", "mean_rev", "trend_follow"):
            if view in ("coverage", "strategy"):
                assert name in text
            assert name in content, (view, name)
        if view == "overview":  # found as text, not only drawn: the chart's table names each strategy
            assert "trend_follow" in await page.text_content("table[data-chart='chart-trials']")
        if view == "strategy":
            assert await page.locator("#top-trials tbody tr").count() > 0


async def test_dashboard_views_render_offline_with_no_console_errors(server, browser, demo_workspace,
                                                                     tmp_path) -> None:
    demo_dir = tmp_path / "demo"
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    watch = Watch(page)
    await _check_views(page, server.url + "/", demo_workspace, "dashboard")
    # mark the recommendation for a regime given as tags
    await _open(page, f"{server.url}/?workspace_id={demo_workspace}#strategy", "strategy")
    await page.select_option("#strategy-select", "trend_follow")
    await page.wait_for_selector("body[data-ready=strategy]", state="attached")
    await page.check("#tag-boxes input[value=uptrend]")
    await page.click("#recommend-tags")
    await page.locator("#recommend-result").filter(has_text="recommended").wait_for(timeout=20_000)
    await page.wait_for_selector("body[data-ready=strategy]", state="attached")
    stars = await page.evaluate("""() => [...document.querySelectorAll('#param-charts canvas')].filter(c =>
        Chart.getChart(c).data.datasets.some(d => d.label === 'recommended')).length""")
    assert stars >= 1
    await _shot(page, "dashboard-strategy-recommended")
    # or for the regime of uploaded bars (one symbol of the demo's OHLCV file)
    bars = pd.read_csv(demo_dir / "demo_ohlcv_1h.csv")
    upload = demo_dir / "aapl_last.csv"
    bars[bars["symbol"] == "AAPL"].drop(columns="symbol").tail(400).to_csv(upload, index=False)
    await page.set_input_files("#ohlcv-file", str(upload))
    await page.locator("#recommend-result").filter(has_text="reading aapl_last.csv").wait_for(timeout=20_000)
    await page.wait_for_selector("body[data-ready=strategy]", state="attached", timeout=20_000)
    assert (await page.inner_text("#recommend-result")).startswith("recommended")
    hosts = {urlsplit(u).hostname for u in watch.requests}
    assert hosts == {"127.0.0.1"}, watch.requests
    assert watch.errors == []
    # Swagger UI comes from the app too
    await page.goto(server.url + "/docs")
    await page.wait_for_selector(".swagger-ui .info", timeout=20_000)
    assert {urlsplit(u).hostname for u in watch.requests} == {"127.0.0.1"}
    assert watch.errors == []


async def test_with_a_token_the_page_asks_for_it_and_shows_nothing_before(token_server, browser,
                                                                          demo_workspace) -> None:
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    watch = Watch(page)
    await _open(page, f"{token_server.url}/?workspace_id={demo_workspace}#coverage", "login")
    await _shot(page, "token-prompt")
    assert await page.is_visible("#login")
    body = await page.inner_text("body")
    assert "trend_follow" not in body and "median" not in body
    assert await page.locator("#heatmap td").count() == 0
    await page.fill("#token", "wrong")
    await page.click("#login button")
    await page.locator("#login-error").filter(has_text="not the server's token").wait_for()
    await page.fill("#token", TOKEN)
    await page.click("#login button")
    await page.wait_for_selector("body[data-ready=coverage]", state="attached", timeout=20_000)
    assert "trend_follow" in await page.inner_text("#heatmap")
    # the session survives a reload without asking again
    await _open(page, f"{token_server.url}/?workspace_id={demo_workspace}#gate", "gate")
    cookies = await page.context.cookies()
    assert [c["httpOnly"] for c in cookies if c["name"] == "kb_session"] == [True]
    assert all(TOKEN not in c["value"] for c in cookies)
    assert all(TOKEN not in u for u in watch.requests)
    assert TOKEN not in token_server.log.read_text()
    # 401 answers to the unauthenticated first load are the only console errors
    assert all("401" in e for e in watch.errors), watch.errors


async def test_report_file_renders_from_disk_with_no_request_beyond_the_file(cli, browser, demo_workspace,
                                                                              tmp_path) -> None:
    out = tmp_path / "report.html"
    code, stdout, err = await cli("report", "--workspace-id", demo_workspace, "--out", out)
    assert code == 0 and "wrote" in stdout, err
    html = out.read_text()
    assert "http://" not in html and "https://" not in html
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    watch = Watch(page)
    await _check_views(page, out.as_uri(), demo_workspace, "report")
    assert {urlsplit(u).scheme for u in watch.requests} == {"file"}
    assert watch.errors == []
    assert not await page.is_visible("#recommend-controls")


async def test_report_refuses_a_directory_or_missing_folder(cli, tmp_path) -> None:
    code, _, err = await cli("report", "--workspace-id", uuid.uuid4(), "--out", tmp_path)
    assert code == 2 and "is a directory" in err
    code, _, err = await cli("report", "--workspace-id", uuid.uuid4(), "--out", tmp_path / "nope" / "r.html")
    assert code == 2 and "does not exist" in err
