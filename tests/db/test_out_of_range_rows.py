"""One bad row never stops a workspace: numbers beyond float range in any JSON column."""

from __future__ import annotations

import orjson

from tests.factories import iso, run_row, up_then_down


async def test_numbers_beyond_float_range_are_per_row_reasons(cli, db, make_workspace, insert_runs, tmp_path) -> None:
    ws = await make_workspace()
    path = tmp_path / "aapl.csv"
    up_then_down().to_csv(path, index=False)
    good = {"symbol": "AAPL", "timeframe": "1h", "oos_start": iso(300), "oos_end": iso(900)}
    rows = [
        run_row(ws, 0, dataset_meta=good, summary='{"trades": 40, "sharpe": 1e309, "max_drawdown_pct": -5}'),
        run_row(ws, 1, dataset_meta='{"symbol": "AAPL", "timeframe": "1h", "oos_start": 1e309, "oos_end": 2e309}'),
        run_row(ws, 2, dataset_meta=good, params='{"lookback": 1e309, "z_entry": 1.5}'),
        run_row(ws, 3, dataset_meta=good),
    ]
    ids = await insert_runs(rows)
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", path, "--symbol", "AAPL",
                               "--timeframe", "1h", "--json")
    assert code == 0, err
    regime = orjson.loads(out)
    assert regime["updated"] == 3 and regime["reasons"] == {"invalid_date_range": 1}
    code, out, err = await cli("backfill-candidacy", "--workspace-id", ws, "--json")
    assert code == 0, err
    cand = orjson.loads(out)
    assert cand["updated"] == 3 and cand["reasons"].get("invalid_metrics") == 1
    code, out, err = await cli("ingest", "--workspace-id", ws, "--json")
    assert code == 0, err
    assert "invalid_params" in out and str(ids[2]) in out  # reported with the run id
    trials = {r["source_run_id"] for r in await db.fetch("SELECT source_run_id FROM kb_trials")}
    assert ids[3] in trials and ids[0] not in trials


async def test_created_at_beyond_python_dates_is_a_per_row_reason(cli, db, make_workspace, insert_runs,
                                                                   tmp_path) -> None:
    ws = await make_workspace()
    path = tmp_path / "aapl.csv"
    up_then_down().to_csv(path, index=False)
    meta = {"symbol": "AAPL", "timeframe": "1h", "oos_start": iso(300), "oos_end": iso(900)}
    ids = await insert_runs([run_row(ws, i, dataset_meta=meta) for i in range(6)])
    await db.execute("UPDATE backtest_runs SET created_at = '20250-01-01' WHERE id = $1", ids[1])
    await db.execute("UPDATE backtest_runs SET created_at = '0100-01-01 BC' WHERE id = $1", ids[2])
    await db.execute("UPDATE backtest_runs SET created_at = 'infinity' WHERE id = $1", ids[3])
    for argv in (["backfill-regime", "--ohlcv-file", path, "--symbol", "AAPL", "--timeframe", "1h"],
                 ["backfill-candidacy"]):
        code, out, err = await cli(*argv, "--workspace-id", ws, "--batch-size", "2", "--json")
        assert code == 0, err
        report = orjson.loads(out)
        assert report["total_scanned"] == 6  # the BC row is scanned too, never silently skipped
        assert report["updated"] == 3 and report["reasons"] == {"invalid_created_at": 3}
        assert set(report["examples"]["invalid_created_at"]) == {str(i) for i in ids[1:4]}
    await db.execute("UPDATE backtest_runs SET kb_status = 'candidate' WHERE id = ANY($1)", ids[1:4])
    code, out, err = await cli("ingest", "--workspace-id", ws, "--json")
    assert code == 0 and "invalid_created_at" in out, err
    assert await db.fetchval("SELECT count(*) FROM kb_trials") == 3
    code, out, err = await cli("status", "--workspace-id", ws, "--json")
    assert code == 0, err
