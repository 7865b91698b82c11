"""The dashboard's JSON routes, the session cookie, the Host check and the vendored docs."""

from __future__ import annotations

import httpx
import pytest

from app.api.app import create_app
from app.services.kb.ingest import ingest
from app.services.kb.regime.tags import REGIME_TAGS
from tests.factories import API_TOKEN, run_row, trend_snapshot

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def _regime(tags: list[str]) -> dict:
    return {**trend_snapshot(1), "regime_tags": tags, "tag_evidence": {}}


async def _workspace(db, make_workspace, insert_runs):
    ws = await make_workspace()
    rows = [run_row(ws, i, strategy_name="a" if i % 3 else "b", kb_status="candidate",
                    params={"n": i % 7, "mode": "x" if i % 2 else "y"},
                    summary={"trades": 30, "sharpe": 0.5 + i / 100, "max_drawdown_pct": -5.0, "return_pct": 3.0},
                    regime_oos=_regime(["uptrend", "high_vol"] if i % 2 else ["flat"]),
                    dataset_meta={"symbol": "AAPL", "timeframe": "1h", "oos_start": f"2024-01-{1 + i % 20:02d}",
                                  "oos_end": f"2024-02-{1 + i % 20:02d}"})
            for i in range(30)]
    await insert_runs(rows)
    await ingest(db, ws)
    return ws


async def test_dashboard_routes_describe_the_workspace(api, db, make_workspace, insert_runs) -> None:
    ws = await _workspace(db, make_workspace, insert_runs)
    assert (await api.get(f"/kb/dashboard/coverage?workspace_id={ws}")).status_code == 401
    cover = (await api.get(f"/kb/dashboard/coverage?workspace_id={ws}", headers=AUTH)).json()
    assert cover["strategies"] == ["a", "b"]
    assert len(cover["cells"]) == len(cover["tags"]) * 2 and cover["tags"][: len(REGIME_TAGS)] == list(REGIME_TAGS)
    cell = {(c["tag"], c["strategy"]): c for c in cover["cells"]}
    assert cell[("flat", "a")]["trials"] == 10 and cell[("flat", "a")]["state"] == "ok"
    assert cell[("uptrend", "b")]["trials"] == 5 and cell[("downtrend", "a")]["state"] == "blind"
    points = (await api.get(f"/kb/dashboard/strategy?workspace_id={ws}&strategy_name=a", headers=AUTH)).json()
    assert points["trials"] == 20 == points["shown"] and not points["sampled"]
    assert points["params"] == [{"name": "mode", "numeric": False}, {"name": "n", "numeric": True}]
    assert {p["bucket"] for p in points["points"]} == {"uptrend", "flat"}
    gate = (await api.get(f"/kb/dashboard/gate?workspace_id={ws}", headers=AUTH)).json()
    assert [f["n"] for f in gate["funnel"]] == [30, 30, 30, 30, 30] and gate["latest_candidacy"] is None
    overview = (await api.get(f"/kb/dashboard/overview?workspace_id={ws}", headers=AUTH)).json()
    assert overview["active_trials_by_strategy"] == {"a": 20, "b": 10} and overview["backfills"] == []
    listed = (await api.get("/kb/workspaces", headers=AUTH)).json()
    assert str(ws) in {w["id"] for w in listed}
    missing = await api.get("/kb/dashboard/gate?workspace_id=00000000-0000-0000-0000-000000000001", headers=AUTH)
    assert missing.status_code == 404
    paths = (await api.get("/openapi.json", headers=AUTH)).json()["paths"]
    assert {"/kb/dashboard/coverage", "/kb/dashboard/strategy", "/kb/dashboard/gate", "/kb/workspaces",
            "/kb/runs"} <= set(paths)


async def test_session_cookie_is_the_token_without_holding_it(api) -> None:
    assert (await api.post("/kb/session", json={"token": "nope"})).status_code == 401
    resp = await api.post("/kb/session", json={"token": API_TOKEN})
    assert resp.status_code == 204
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and API_TOKEN not in cookie
    assert (await api.get("/kb/workspaces")).status_code == 200  # the client keeps the cookie
    assert (await api.get("/docs")).status_code == 200
    await api.delete("/kb/session")
    assert (await api.get("/kb/workspaces")).status_code == 401


async def test_page_and_assets_are_served_by_the_app(api) -> None:
    page = await api.get("/")
    assert page.status_code == 200 and "/static/vendor/chart.umd.min.js" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text
    lib = await api.get("/static/vendor/chart.umd.min.js")
    assert lib.status_code == 200 and lib.headers["content-type"].startswith("text/javascript")
    for bad in ("/static/../app.py", "/static/vendor/../../api/app.py", "/static/nope.js", "/static/dashboard.html"):
        assert (await api.get(bad)).status_code == 404, bad


@pytest.mark.parametrize("host, status", [("localhost:8000", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200),
                                          ("evil.example:8000", 421), ("127.0.0.1.evil.example", 421), ("", 421)])
async def test_without_a_token_only_loopback_host_names_are_answered(db, monkeypatch, host, status) -> None:
    monkeypatch.delenv("KB_API_TOKEN", raising=False)
    app = create_app(db)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            resp = await client.get("/healthz", headers={"host": host})
            assert resp.status_code == status
            if status == 421:
                assert "localhost" in resp.json()["detail"]


async def test_a_non_ascii_token_works_as_utf8_bytes(db, monkeypatch) -> None:
    token = "clé-ünïcode-令牌"
    monkeypatch.setenv("KB_API_TOKEN", token)
    app = create_app(db)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            good = {"Authorization": b"Bearer " + token.encode()}
            assert (await client.get("/kb/workspaces", headers=good)).status_code == 200
            assert (await client.get("/kb/workspaces", headers={"Authorization": "Bearer cl"})).status_code == 401
            assert (await client.post("/kb/session", json={"token": token})).status_code == 204
            assert (await client.get("/kb/workspaces")).status_code == 200
