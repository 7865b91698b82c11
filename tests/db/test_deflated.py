"""The deflated Sharpe ratio of runs and trials: stored by ingest, shown by --explain,
an optional gate (--min-dsr), from the sets tried on each run's own window."""

from __future__ import annotations

import statistics

import orjson

from app.services.kb.backfill.candidacy import WindowStats, deflated_of
from app.services.kb.ingest import ingest
from app.services.kb.runs.deflated import deflated_sharpe
from tests.factories import run_row, trend_snapshot

SHARPES = (2.5, 1.0, 0.5, 0.2, -0.5)
WINDOW = {"symbol": "SPY", "timeframe": "1h", "oos_start": "2024-01-01T00:00:00", "oos_end": "2024-01-09T08:00:00"}


def _rows(ws, kb_status: str) -> list[dict]:
    snap = trend_snapshot(1, seed=1)  # its n_bars (200) is the window's bar count
    return [run_row(ws, i, strategy_name="s", kb_status=kb_status, params={"n": i}, regime_oos=snap,
                    dataset_meta=WINDOW, experiment_type="sweep",
                    summary={"trades": 30, "sharpe": sharpe, "max_drawdown_pct": -5.0})
            for i, sharpe in enumerate(SHARPES)]


def _expected(sharpe: float) -> float:
    # 1h bars: 252 days x 24 bars a year; 5 sets tried on the window; the sample variance of their Sharpe.
    return deflated_sharpe(sharpe, 200, 252 * 24, 5, statistics.variance(SHARPES)).dsr


async def test_ingest_stores_each_trials_deflated_sharpe(db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    await insert_runs(_rows(ws, "candidate"))
    result = await ingest(db, ws)
    assert result.dsr_updated == 5
    rows = await db.fetch("SELECT sharpe, dsr, dsr_inputs FROM kb_trials WHERE workspace_id = $1", ws)
    for r in rows:
        assert abs(r["dsr"] - _expected(r["sharpe"])) < 1e-6
        inputs = orjson.loads(r["dsr_inputs"])
        assert inputs["n_trials"] == 5 and inputs["n_bars"] == 200
    best = max(rows, key=lambda r: r["sharpe"])
    assert 0 < best["dsr"] < 1 and best["dsr"] == max(r["dsr"] for r in rows)
    assert (await ingest(db, ws)).dsr_updated == 0  # unchanged values are not rewritten


async def test_min_dsr_gate_and_explain(cli, db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = _rows(ws, "excluded")
    ids = await insert_runs(rows)
    threshold = (_expected(2.5) + _expected(1.0)) / 2  # between the best run and the next
    code, out, err = await cli("backfill-candidacy", "--workspace-id", ws, "--min-dsr", f"{threshold:.6f}",
                               "--min-sharpe", "0", "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["passed"] == 1 and report["reasons"]["dsr_too_low"] == 3  # -0.5 fails min_sharpe first
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--explain", str(ids[1]), "--min-dsr", "0.9")
    assert code == 0 and "min_dsr" in out and "FAIL" in out
    code, _, err = await cli("backfill-candidacy", "--workspace-id", ws, "--min-dsr", "1.5")
    assert code == 2 and "--min-dsr" in err


async def test_a_backfills_window_figures_read_at_once_equal_the_per_run_query(db, make_workspace,
                                                                               insert_runs) -> None:
    """`--min-dsr` reads every window's figures in one scan; each run's DSR from them equals
    the one its own query gives: windows shared by strategies, symbols written two ways
    (missing and empty), repeated parameter sets, windows of one set, runs without a window
    or strategy, a Sharpe that is not a number, and runs not completed or not variants."""
    ws = await make_workspace()
    snap = trend_snapshot(1, seed=1)
    windows = [WINDOW, {**WINDOW, "symbol": "QQQ"}, {**WINDOW, "oos_end": "2024-01-10T08:00:00"},
               {k: v for k, v in WINDOW.items() if k != "symbol"}, {**WINDOW, "symbol": ""}, {"timeframe": "1h"}]
    rows = []
    for i in range(60):
        summary = {"trades": 30, "sharpe": "n/a" if i == 7 else round(((i * 37) % 23) / 10 - 0.8, 2)}
        rows.append(run_row(ws, i, strategy_name=None if i == 11 else f"s{i % 2}", kb_status="excluded",
                            params={"n": i % 4 if i % 3 else i}, regime_oos=snap, dataset_meta=windows[i % 6],
                            summary=summary, status="failed" if i == 13 else "completed",
                            run_kind="tune_variant" if i == 17 else "test_variant"))
    rows.append(run_row(ws, 60, strategy_name="lonely", kb_status="excluded", params={"n": 1}, regime_oos=snap,
                        dataset_meta=WINDOW, summary={"trades": 30, "sharpe": 1.2}))
    ids = await insert_runs(rows)
    per_run = await deflated_of(db, ws, ids)
    async with db.acquire() as conn:
        at_once = await (await WindowStats.read(conn, ws)).deflated(conn, ws, ids)
    assert len(per_run) > 30 and at_once == per_run
