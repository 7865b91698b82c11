"""recommend() by expected performance and `kb evaluate`, on evidence whose truth is known."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import orjson

from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, TrialCache, recommend
from app.services.kb.regime.snapshot import RegimeSnapshot
from tests.factories import SWEEP_DOWN as DOWN
from tests.factories import SWEEP_T0
from tests.factories import SWEEP_UP as UP
from tests.factories import sweep_windows as _windows


async def _answer(db, ws, snap: dict) -> dict:
    query = RecommendQuery(ws, "s", regime=RegimeSnapshot.from_dict(snap), top_k=5)
    return (await recommend(db, query, TrialCache())).to_dict()


async def test_picks_the_regime_appropriate_tested_set(db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rng = np.random.default_rng(0)
    # A earns in up windows, B in down windows; each loses in the other regime.
    await insert_runs(_windows(ws, 60, lambda name, up, w: round(
        (1.5 if (name == "A") == up else -1.0) + rng.normal(0, 0.2), 3)))
    assert (await ingest(db, ws)).evidence == 120
    up, down = await _answer(db, ws, UP), await _answer(db, ws, DOWN)
    assert up["params"]["set"] == "A" and down["params"]["set"] == "B"
    for answer in (up, down):
        assert answer["status"] == "ok" and answer["regime_conditioned"] is True
        assert answer["evidence"]["matched_on"] == "ex_ante"
        assert answer["expected_sharpe"] > 1.0 and answer["interval"][0] < answer["expected_sharpe"]
        assert answer["global_best"]["params"]["set"] in ("A", "B") and answer["runner_ups"]
        # top_k below 10 alone never degrades an answer that enough windows support
        assert "few_supporting_trials" not in answer["reasons"]
        assert answer["walk_forward"]["uplift"] > 1.0
        assert set(answer) >= {"status", "confidence", "params", "considered", "supporting_trials", "reasons"}


async def test_falls_back_to_the_global_best_when_regimes_carry_no_information(db, make_workspace,
                                                                               insert_runs) -> None:
    ws = await make_workspace()
    rng = np.random.default_rng(1)
    # B is better everywhere, whatever the regime: conditioning cannot add anything.
    await insert_runs(_windows(ws, 60, lambda name, up, w: round(
        (0.5 if name == "A" else 1.0) + rng.normal(0, 0.05), 3)))
    await ingest(db, ws)
    for snap in (UP, DOWN):
        answer = await _answer(db, ws, snap)
        assert answer["params"]["set"] == "B" and answer["regime_conditioned"] is False
        assert "regime_conditioning_no_gain" in answer["reasons"]
        assert answer["global_best"]["params"] == answer["params"]


async def test_only_sets_that_reached_the_kb_are_recommended(db, make_workspace, insert_runs) -> None:
    """B is best in down windows but never passed the gate: its failures and successes are
    evidence, yet the answer is a set from the KB."""
    ws = await make_workspace()
    rows = _windows(ws, 40, lambda name, up, w: (1.5 if (name == "A") == up else -1.0))
    for r in rows:
        if orjson.loads(orjson.dumps(r["params"]))["set"] == "B":
            r["kb_status"] = "excluded"
    await insert_runs(rows)
    await ingest(db, ws)
    answer = await _answer(db, ws, DOWN)
    assert answer["params"]["set"] == "A"


async def test_evaluate_command_reports_walk_forward_uplift(cli, db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rng = np.random.default_rng(2)
    await insert_runs(_windows(ws, 60, lambda name, up, w: round(
        (1.5 if (name == "A") == up else -1.0) + rng.normal(0, 0.2), 3)))
    await ingest(db, ws)
    code, out, err = await cli("evaluate", "--workspace-id", ws, "--strategy", "s", "--json")
    assert code == 0, err
    report = orjson.loads(out)
    # Nested: every tuning and the regime-vs-global-best choice come from earlier decisions
    # only, so the figure is below the best of the tunings tried (which was > 1.0 here).
    assert report["decisions"] > 20 and report["uplift"] > 0.5 and report["hit_rate"] > 0.5
    assert report["configurations_tried"] == 12 and report["promises"]["interval_nominal"] == 0.8
    assert report["realised_sharpe"]["recommend"] > report["realised_sharpe"]["global_best"]
    assert set(report["calibration"]) == {"low", "mid", "high"} and report["per_regime"]
    code, out, _ = await cli("evaluate", "--workspace-id", ws, "--strategy", "s")
    assert code == 0 and "WALK-FORWARD EVALUATION" in out and "Uplift:" in out


async def test_a_long_lived_cache_never_answers_from_deleted_runs(db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rng = np.random.default_rng(3)
    await insert_runs(_windows(ws, 40, lambda name, up, w: round(
        (1.5 if (name == "A") == up else -1.0) + rng.normal(0, 0.2), 3)))
    await ingest(db, ws)
    cache = TrialCache()  # one cache for the whole test, as in a running `kb serve`
    query = RecommendQuery(ws, "s", regime=RegimeSnapshot.from_dict(UP), top_k=5)
    assert (await recommend(db, query, cache)).to_dict()["params"]["set"] == "A"
    await db.execute("DELETE FROM backtest_runs WHERE workspace_id = $1 AND params->>'set' = 'A'", ws)
    after = (await recommend(db, query, cache)).to_dict()
    assert after["params"]["set"] == "B"
    assert all(t["params"]["set"] == "B" for t in after["supporting_trials"])
    # deleting the workspace and making it again never brings an old revision back
    await db.execute("DELETE FROM workspaces WHERE id = $1", ws)
    await make_workspace(workspace_id=ws)
    await insert_runs(_windows(ws, 20, lambda name, up, w: 1.0 if name == "A" else 0.2))
    await ingest(db, ws)
    assert (await recommend(db, query, cache)).to_dict()["params"]["set"] == "A"


async def test_evidence_and_global_best_are_scoped_to_the_instrument(db, make_workspace, insert_runs) -> None:
    """On SPY set A always wins, on QQQ set B: each symbol's answer and global best come
    from its own windows; other instruments only with pool=True, and the answer says so."""
    ws = await make_workspace()
    rows = []
    for symbol, winner in (("SPY", "A"), ("QQQ", "B")):
        for i, row in enumerate(_windows(ws, 30, lambda name, up, w, win=winner: 1.0 if name == win else -1.0)):
            row["dataset_meta"] = {**row["dataset_meta"], "symbol": symbol}
            row["created_at"] = row["created_at"] + timedelta(days=1 if symbol == "QQQ" else 0, seconds=i)
            rows.append(row)
    daily = _windows(ws, 30, lambda name, up, w: 5.0 if name == "B" else -5.0)
    for row in daily:  # another bar size: never mixed into an hourly answer
        row["dataset_meta"] = {**row["dataset_meta"], "timeframe": "1d", "symbol": "SPY"}
        row["created_at"] = row["created_at"] + timedelta(days=3)
    await insert_runs(rows + daily)
    await ingest(db, ws)
    cache = TrialCache()

    async def ask(**kw) -> dict:
        return (await recommend(db, RecommendQuery(ws, "s", regime=RegimeSnapshot.from_dict(UP), top_k=5, **kw),
                                cache)).to_dict()

    spy, qqq = await ask(symbol="SPY", timeframe="1h"), await ask(symbol="qqq", timeframe="1h")
    assert spy["params"]["set"] == "A" and spy["global_best"]["params"]["set"] == "A"
    assert qqq["params"]["set"] == "B" and qqq["global_best"]["params"]["set"] == "B"
    assert spy["scope"] == {"symbol": "SPY", "timeframe": "1h", "pooled": False, "as_of": None, "windows": 30}
    assert "pooled_instruments" not in spy["reasons"]
    pooled = await ask(symbol="SPY", timeframe="1h", pool=True)
    assert pooled["scope"]["pooled"] and pooled["scope"]["windows"] == 60 and "pooled_instruments" in pooled["reasons"]
    daily_answer = await ask(symbol="SPY", timeframe="1d")
    assert daily_answer["params"]["set"] == "B" and daily_answer["scope"]["windows"] == 30
    early = await ask(symbol="SPY", timeframe="1h", as_of=SWEEP_T0 + timedelta(days=100))
    assert early["scope"]["windows"] == 10  # only windows that ended before as_of
    nothing = await ask(symbol="IWM", timeframe="1h")
    assert nothing["status"] == "none" and any("--pool" in a for a in nothing["suggested_actions"])


async def test_runs_without_trades_are_evidence_with_sharpe_zero(db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = _windows(ws, 4, lambda name, up, w: 1.0)
    for row in rows[:3]:
        row["summary"] = {"trades": 0, "sharpe": None}
    rows[3]["summary"] = {"trades": 12, "max_drawdown_pct": -3.0}  # traded, but no Sharpe: not evidence
    await insert_runs(rows)
    result = await ingest(db, ws)
    assert result.evidence_notes == {"no_trades_sharpe_0": 3}
    assert result.evidence_skipped == {"no_sharpe": 1}
    sharpe = await db.fetch("SELECT sharpe FROM kb_evidence WHERE workspace_id = $1", ws)
    assert sorted(r["sharpe"] for r in sharpe) == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


async def test_bar_sizes_are_never_mixed(cli, db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    hourly = _windows(ws, 12, lambda name, up, w: 1.0)
    daily = _windows(ws, 12, lambda name, up, w: 2.0)
    for row in daily:
        row["dataset_meta"] = {**row["dataset_meta"], "timeframe": "1d"}
        row["created_at"] = row["created_at"] + timedelta(days=2)
    await insert_runs(hourly + daily)
    await ingest(db, ws)
    for argv in (("evaluate", "--workspace-id", ws, "--strategy", "s"),
                 ("recommend", "--workspace-id", ws, "--strategy", "s", "--tags", "uptrend")):
        code, _, err = await cli(*argv)
        assert code == 2 and "several bar sizes (1d, 1h)" in err and "--timeframe" in err, err
        code, out, err = await cli(*argv, "--timeframe", "1d", "--json")
        assert code == 0, err
        assert orjson.loads(out)["scope"]["timeframe"] == "1d"


async def test_a_check_after_an_ingest_lends_the_decisions_it_cannot_have_changed(db, make_workspace,
                                                                                insert_runs) -> None:
    """A server's check of the new revision replays only the decisions the new windows can
    reach, and reports what a check from scratch reports."""
    from app.services.kb.recommend.evaluate import evaluate_matrix

    ws = await make_workspace()
    rng = np.random.default_rng(4)
    sharpe = lambda name, up, w: round((1.5 if (name == "A") == up else -1.0) + rng.normal(0, 0.2), 3)  # noqa: E731
    rows = _windows(ws, 70, sharpe)
    await insert_runs(rows[:120])  # 60 windows first
    await ingest(db, ws)
    cache = TrialCache()
    query = RecommendQuery(ws, "s", regime=RegimeSnapshot.from_dict(UP), top_k=5)
    await recommend(db, query, cache)
    await insert_runs(rows[120:])  # 10 later windows
    await ingest(db, ws)
    answer = (await recommend(db, query, cache)).to_dict()
    matrix = await cache.evidence.get(db, ws, "s", scope=query.scope)
    check = matrix.memo["check"].result()
    assert check.revision == answer["walk_forward"]["kb_revision"] and matrix.n_windows == 70
    assert check.reused >= 30 and check.reused < len(check.outcomes)
    shown = [e["check"] for e in cache.evidence.describe() if e["check"]]  # as GET /kb/cache shows it
    assert shown == [{"revision": check.revision, "decisions": len(check.outcomes), "lent": check.reused}]
    fresh = evaluate_matrix(await TrialCache().evidence.get(db, ws, "s", scope=query.scope))  # nothing to lend
    assert fresh.reused == 0 and fresh.summary == check.summary
    assert fresh.model.to_json() == check.model.to_json()
