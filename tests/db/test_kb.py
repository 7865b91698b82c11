"""Ingest, status, recommend and the HTTP API against PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from datetime import timedelta

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from app.db import trials as trials_db
from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, TrialCache, aggregate_params, recommend
from app.services.kb.regime import compute_regime_snapshot
from app.services.kb.status import workspace_status as kb_status
from tests.factories import API_TOKEN, START, iso, run_row, trend_snapshot, trend_snapshot_frame, up_then_down


async def test_end_to_end_backfills_grow_trials_and_support(cli, db, make_workspace, insert_runs, tmp_path):
    """Candidates exist only after backfill-regime then backfill-candidacy --require-regime."""
    path = tmp_path / "aapl.csv"
    up_then_down().to_csv(path, index=False)
    ws = await make_workspace()
    rows = [run_row(ws, i, strategy_name="trend",
                    params={"fast": 5 + i % 7, "slow": 50},
                    dataset_meta={"symbol": "AAPL", "timeframe": "1h", "oos_start": iso(200 + i * 10),
                                  "oos_end": iso(700 + i * 10)}) for i in range(30)]
    # five runs already in the KB before the backfill
    rows += [run_row(ws, 100 + i, strategy_name="trend", kb_status="candidate", params={"fast": 9, "slow": 60},
                     regime_oos=trend_snapshot(1, seed=i)) for i in range(5)]
    await insert_runs(rows)
    query = RecommendQuery(ws, "trend", regime=compute_regime_snapshot(up_then_down().iloc[300:700]), top_k=50)
    cache = TrialCache()
    await ingest(db, ws)
    a = (await kb_status(db, ws)).to_dict()["active_trials"]
    before = (await recommend(db, query, cache)).to_dict()
    code, _, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", path, "--symbol", "AAPL",
                             "--timeframe", "1h")
    assert code == 0, err
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--require-regime", "--json")
    assert orjson.loads(out)["updated"] == 30
    status = (await kb_status(db, ws)).to_dict()
    assert status["eligible"] == 35 and status["active_trials"] == a == 5  # the plan's "KB trial count" rose
    code, out, _ = await cli("ingest", "--workspace-id", ws, "--json")
    assert code == 0 and orjson.loads(out)["inserted"] == 30
    code, out, _ = await cli("status", "--workspace-id", ws, "--json")
    b = orjson.loads(out)["active_trials"]
    assert b == 35 > a
    assert set(orjson.loads(out)) >= {"runs_by_kb_status", "eligible", "active_trials"}
    after = (await recommend(db, query, cache)).to_dict()
    assert len(after["supporting_trials"]) > len(before["supporting_trials"])
    assert after["status"] == "ok" and before["status"] in ("none", "degraded")


async def test_ingest_is_idempotent_and_archives_rejected(db, make_workspace, insert_runs):
    ws = await make_workspace()
    rows = [run_row(ws, i, kb_status="candidate", regime_oos=trend_snapshot(1, seed=i),
                    params={"fast": i, "oos_ratio": 0.3}) for i in range(12)]
    rows.append(run_row(ws, 50, kb_status="promoted", summary='"broken"'))
    await insert_runs(rows)
    first = await ingest(db, ws)
    assert (first.inserted, first.updated, first.skipped, first.errors) == (12, 0, 0, 1)
    assert first.error_examples == {"invalid_summary": [str(rows[-1]["id"])]}
    again = await ingest(db, ws)  # nothing was written since: nothing is read
    assert (again.mode, again.scanned, again.inserted, again.updated, again.archived) == ("incremental", 0, 0, 0, 0)
    full = await ingest(db, ws, full=True)
    assert (full.mode, full.inserted, full.updated, full.skipped, full.archived) == ("full", 0, 0, 12, 0)
    dry = await ingest(db, ws, dry_run=True)
    assert (dry.inserted, dry.updated) == (0, 0)
    trial = await db.fetchrow("SELECT * FROM kb_trials WHERE source_run_id = $1", rows[0]["id"])
    assert orjson.loads(trial["params"]) == {"fast": 0}  # the window key is not a strategy parameter
    assert trial["max_dd_frac"] == pytest.approx(0.12) and trial["return_frac"] == pytest.approx(0.08)
    assert len(trial["regime_features"]) == 10 and "uptrend" in trial["regime_tags"]
    await db.execute("UPDATE backtest_runs SET kb_status = 'rejected' WHERE id = $1", rows[1]["id"])
    await db.execute("UPDATE backtest_runs SET kb_status = 'promoted' WHERE id = $1", rows[2]["id"])
    assert (await ingest(db, ws, dry_run=True)).archived == 1
    third = await ingest(db, ws)  # reads the two runs changed, not the workspace
    assert (third.scanned, third.updated, third.archived, third.skipped) == (1, 1, 1, 0)
    assert (await kb_status(db, ws)).to_dict()["active_trials"] == 11


async def test_recommend_prefers_the_nearest_regime(db, make_workspace, insert_runs):
    ws = await make_workspace()
    ups = [run_row(ws, i, strategy_name="s", kb_status="candidate", regime_oos=trend_snapshot(1, 0.002, i),
                   params={"fast": 10, "mode": "long"}) for i in range(12)]
    downs = [run_row(ws, 100 + i, strategy_name="s", kb_status="candidate", regime_oos=trend_snapshot(-1, 0.002, i),
                     params={"fast": 30, "mode": "short"}) for i in range(12)]
    await insert_runs(ups + downs)
    await ingest(db, ws)
    query = RecommendQuery(ws, "s", regime=compute_regime_snapshot(pd.DataFrame(trend_snapshot_frame(1))), top_k=10)
    result = (await recommend(db, query)).to_dict()
    up_ids = {str(r["id"]) for r in ups}
    assert result["status"] == "ok" and result["considered"] == 24
    assert {t["run_id"] for t in result["supporting_trials"]} <= up_ids
    assert result["params"] == {"fast": 10, "mode": "long"}
    assert isinstance(result["params"]["fast"], int)
    assert 0 < result["confidence"] <= 1
    by_tags = (await recommend(db, RecommendQuery(ws, "s", tags=("downtrend",), top_k=5))).to_dict()
    assert by_tags["params"]["mode"] == "short"


async def test_concurrent_cold_requests_share_one_trial_load(db, make_workspace, insert_runs, monkeypatch):
    ws = await make_workspace()
    await insert_runs([run_row(ws, i, strategy_name="s", kb_status="candidate", regime_oos=trend_snapshot(1, 0.002, i))
                       for i in range(30)])
    await ingest(db, ws)
    loads = 0
    snapshot = trials_db.strategy_snapshot

    def counting_snapshot(db, query, *args):
        nonlocal loads
        loads += query == "load_trials"
        return snapshot(db, query, *args)

    monkeypatch.setattr(trials_db, "strategy_snapshot", counting_snapshot)
    cache = TrialCache()
    results = await asyncio.gather(*(recommend(db, RecommendQuery(ws, "s", tags=("uptrend",), top_k=5), cache)
                                     for _ in range(50)))
    assert loads == 1
    assert {r.considered for r in results} == {30}


async def test_statuses_relaxation_and_abstention(db, make_workspace, insert_runs):
    ws = await make_workspace()
    rows = [run_row(ws, i, strategy_name="s", kb_status="candidate", regime_oos=trend_snapshot(1, 0.002, i),
                    dataset_meta={"symbol": "AAPL", "timeframe": "1h"}) for i in range(5)]
    await insert_runs(rows)
    await ingest(db, ws)
    up = compute_regime_snapshot(pd.DataFrame(trend_snapshot_frame(1)))
    few = (await recommend(db, RecommendQuery(ws, "s", regime=up))).to_dict()
    assert few["status"] == "degraded" and "few_supporting_trials" in few["reasons"]
    # Another instrument's trials are never used silently: only with pool=True, and the answer says so.
    scoped = (await recommend(db, RecommendQuery(ws, "s", regime=up, symbol="MSFT", method="median"))).to_dict()
    assert scoped["status"] == "none" and "no_trials" in scoped["reasons"]
    assert any("--pool" in a for a in scoped["suggested_actions"])
    pooled = (await recommend(db, RecommendQuery(ws, "s", regime=up, symbol="MSFT", pool=True))).to_dict()
    assert pooled["status"] == "degraded" and pooled["considered"] == 5
    none = (await recommend(db, RecommendQuery(ws, "unknown", regime=up))).to_dict()
    assert none["status"] == "none" and "no_trials" in none["reasons"] and none["suggested_actions"]
    wild = compute_regime_snapshot(pd.DataFrame(crash_frame()))
    far = (await recommend(db, RecommendQuery(ws, "s", regime=wild))).to_dict()
    assert far["status"] == "none" and "out_of_distribution" in far["reasons"] and far["params"] == {}
    assert far["method"] == "expected"  # the abstention of the method asked for, not the median one


def crash_frame() -> dict:
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(-0.01, 0.08, 200)))
    return {"timestamp": pd.date_range("2024-03-01", periods=200, freq="h", tz="UTC"),
            "high": close * 1.2, "low": close * 0.8, "close": close}


def test_aggregate_params_weighted() -> None:
    params = [{"n": 10, "x": 1.5, "mode": "a"}, {"n": 20, "x": 2.5, "mode": "b"}, {"n": 30, "x": 3.5, "mode": "b"}]
    chosen, spread = aggregate_params(params, np.array([5.0, 1.0, 1.0]))
    assert chosen == {"n": 10, "x": 1.5, "mode": "a"}
    chosen, spread = aggregate_params(params, np.array([1.0, 1.0, 1.0]))
    assert chosen == {"n": 20, "x": 2.5, "mode": "b"} and spread["mode"]["agreement"] == pytest.approx(2 / 3)


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def test_api_auth_validation_and_isolation(api, db, make_workspace, insert_runs):
    ws, other = await make_workspace(), await make_workspace("other")
    await insert_runs([run_row(ws, i, strategy_name="s", kb_status="candidate", regime_oos=trend_snapshot(1, 0.002, i))
                       for i in range(12)])
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get(f"/kb/status?workspace_id={ws}")).status_code == 401
    assert (await api.get(f"/kb/status?workspace_id={ws}", headers={"Authorization": "Bearer nope"})).status_code == 401
    r = await api.post("/kb/trials/ingest", json={"workspace_id": str(ws)}, headers=AUTH)
    assert r.status_code == 200 and r.json()["inserted"] == 12
    body = {"workspace_id": str(ws), "strategy_name": "s", "tags": ["uptrend"], "top_k": 5}
    r = await api.post("/kb/trials/recommend", json=body, headers=AUTH)
    # 12 windows of evidence: a top_k of 5 only limits what is shown, never the status
    assert r.status_code == 200 and r.json()["status"] == "ok" and len(r.json()["supporting_trials"]) == 5
    assert set(r.json()) >= {"status", "confidence", "params", "considered", "supporting_trials", "reasons"}
    bars = [{"timestamp": (START + timedelta(hours=i)).isoformat(), "high": 101 + i * 0.2, "low": 99 + i * 0.2,
             "close": 100 + i * 0.2} for i in range(120)]
    r = await api.post("/kb/trials/recommend", json={**body, "tags": None, "ohlcv": bars}, headers=AUTH)
    assert r.status_code == 200 and r.json()["query"]["features"]["trend_strength"] > 0.9
    # another workspace's data is not reachable by naming the strategy
    r = await api.post("/kb/trials/recommend", json={**body, "workspace_id": str(other)}, headers=AUTH)
    assert r.json()["considered"] == 0 and r.json()["supporting_trials"] == []
    assert (await api.get(f"/kb/status?workspace_id={other}", headers=AUTH)).json()["active_trials"] == 0
    for bad in [
        {**body, "workspace_id": "not-a-uuid"},
        {**body, "top_k": 0},
        {**body, "top_k": "many"},
        {**body, "regime": {"rsi": 50}, "tags": None},
        {**body, "ohlcv": bars},  # two regime inputs
        {**body, "strategy_name": ""},
        {**body, "unexpected": 1},
        {**body, "tags": None, "ohlcv": bars[:10]},
        {**body, "strategy_name": "s'; DROP TABLE kb_trials; --"},
    ]:
        r = await api.post("/kb/trials/recommend", json=bad, headers=AUTH)
        if bad.get("strategy_name", "").startswith("s'"):
            assert r.status_code == 200 and r.json()["status"] == "none"
        else:
            assert r.status_code == 422, bad
    assert await db.fetchval("SELECT count(*) FROM kb_trials") == 12
    r = await api.post("/kb/trials/recommend", content=b"x" * 100, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    r = await api.get(f"/kb/status?workspace_id={uuid.uuid4()}", headers=AUTH)
    assert r.status_code == 404
    assert (await api.get(f"/kb/backfill-runs?workspace_id={ws}", headers=AUTH)).json() == []
    assert (await api.get("/openapi.json")).status_code == 401
    assert "/kb/trials/recommend" in (await api.get("/openapi.json", headers=AUTH)).json()["paths"]


async def test_serve_refuses_open_bind_without_token(cli, monkeypatch):
    monkeypatch.delenv("KB_API_TOKEN", raising=False)
    code, _, err = await cli("serve", "--host", "0.0.0.0")
    assert code == 2 and "refusing to listen" in err


async def test_recommend_cli(cli, db, make_workspace, insert_runs, tmp_path):
    ws = await make_workspace()
    await insert_runs([run_row(ws, i, strategy_name="s", kb_status="candidate",
                               regime_oos=trend_snapshot(1, 0.002, i)) for i in range(12)])
    await cli("ingest", "--workspace-id", ws)
    path = tmp_path / "up.csv"
    pd.DataFrame(trend_snapshot_frame(1)).to_csv(path, index=False)
    code, out, _ = await cli("recommend", "--workspace-id", ws, "--strategy", "s", "--ohlcv-file", path,
                             "--symbol", "AAPL", "--json")
    assert code == 0 and orjson.loads(out)["status"] == "ok"
    code, out, _ = await cli("recommend", "--workspace-id", ws, "--strategy", "s", "--tags", "uptrend")
    assert code == 0 and "RECOMMENDATION" in out and "Status:         degraded" not in out
    code, _, err = await cli("recommend", "--workspace-id", ws, "--strategy", "s")
    assert code == 2 and "--ohlcv-file or as --tags" in err


async def test_seed_twice_and_into_two_workspaces(cli, db) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    for ws in (a, a, b):
        code, _, err = await cli("seed", "--workspace-id", ws, "--runs", "1500", "--seed", "3")
        assert code == 0, err
    counts = dict(await db.fetch("SELECT workspace_id, count(*) FROM backtest_runs GROUP BY 1"))
    assert counts == {a: 3000, b: 1500}
    # A sweep's grid: sets recur across windows, so a walk-forward can score its choices.
    assert await db.fetchval("SELECT count(DISTINCT params) FROM backtest_runs WHERE workspace_id = $1", a) <= 40


async def test_kb_serve_process_under_concurrent_requests(db, db_url, make_workspace, insert_runs):
    """The real server process (uvicorn on uvloop/httptools): auth, 50 concurrent
    recommends on a cold cache all answered, clean exit on SIGTERM."""
    ws = await make_workspace()
    await insert_runs([run_row(ws, i, strategy_name="s", kb_status="candidate", regime_oos=trend_snapshot(1, 0.002, i))
                       for i in range(40)])
    await ingest(db, ws)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": db_url, "KB_API_TOKEN": "tok"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.services.kb.cli", "serve", "--port",
                                                str(port), env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(200):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            body = {"workspace_id": str(ws), "strategy_name": "s", "tags": ["uptrend"], "top_k": 5}
            assert (await client.post("/kb/trials/recommend", json=body)).status_code == 401
            auth = {"Authorization": "Bearer tok"}
            replies = await asyncio.gather(*(client.post("/kb/trials/recommend", json=body, headers=auth)
                                             for _ in range(50)))
            assert [r.status_code for r in replies] == [200] * 50
            assert {r.json()["considered"] for r in replies} == {40}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert b"Application shutdown complete" in err and b"Traceback" not in err


async def test_trade_counts_beyond_32_bits_are_stored_and_ingest_keeps_both_snapshots(db, make_workspace,
                                                                                     insert_runs):
    ws = await make_workspace()
    up, down = trend_snapshot(1, seed=3), trend_snapshot(-1, seed=4)
    rows = [run_row(ws, 0, strategy_name="s", kb_status="candidate", regime_oos=up, regime_pre=down,
                    summary={"trades": 2**31, "sharpe": 1.2, "max_drawdown_pct": -5.0}),
            run_row(ws, 1, strategy_name="s", kb_status="candidate", regime_oos=up)]
    rows[1]["trade_count"] = None
    rows[1]["summary"] = '{"trades": 18446744073709551616, "sharpe": 1.0}'
    await insert_runs(rows)
    result = await ingest(db, ws)
    assert result.inserted == 1 and result.errors == 1
    assert "invalid_metrics" in result.error_examples  # beyond what any count column holds
    stored = await db.fetchrow("SELECT n_trades, regime_tags, regime_pre_tags, regime_pre_features IS NOT NULL AS pre"
                               " FROM kb_trials WHERE workspace_id = $1", ws)
    assert stored["n_trades"] == 2**31 and stored["pre"]
    assert "downtrend" in stored["regime_pre_tags"] and "uptrend" in stored["regime_tags"]


async def test_api_refuses_non_finite_thresholds(api, make_workspace):
    ws = await make_workspace()
    body = '{"workspace_id": "' + str(ws) + '", "strategy_name": "s", "tags": ["uptrend"], "min_sharpe": NaN}'
    r = await api.post("/kb/trials/recommend", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422 and "detail" in r.json()


async def test_ingest_retries_a_page_whose_connection_was_killed(db, db_url, make_workspace, insert_runs) -> None:
    """Held at a known point (its upsert waits on a trial row another session locked), the
    ingest's connection is terminated; it writes the page again and the counts stay exact."""
    import asyncio

    import asyncpg

    ws = await make_workspace()
    rows = [run_row(ws, i, strategy_name="s", kb_status="candidate", regime_oos=trend_snapshot(1, seed=i),
                    params={"fast": i}) for i in range(6)]
    await insert_runs(rows)
    await ingest(db, ws)
    await db.execute("UPDATE backtest_runs SET summary = jsonb_set(summary, '{sharpe}', '2.5') WHERE workspace_id = $1",
                     ws)
    holder = await asyncpg.connect(db_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM kb_trials WHERE workspace_id = $1 FOR UPDATE", ws)
        task = asyncio.create_task(ingest(db, ws))
        blocked = None
        for _ in range(600):  # a bounded poll of the database state, never a sleep-and-hope
            blocked = await holder.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND $1 = ANY(pg_blocking_pids(pid))",
                holder.get_server_pid())
            if blocked is not None:
                break
            await asyncio.sleep(0.05)
        assert blocked is not None, "ingest never reached the locked row"
        await holder.execute("SELECT pg_terminate_backend($1)", blocked)
        await tx.rollback()
        result = await asyncio.wait_for(task, 60)
    finally:
        await holder.close()
    assert result.retried_pages == 1 and result.updated == 6 and result.inserted == 0
    sharpe = await db.fetch("SELECT sharpe FROM kb_trials WHERE workspace_id = $1 AND archived_at IS NULL", ws)
    assert [r["sharpe"] for r in sharpe] == [2.5] * 6
