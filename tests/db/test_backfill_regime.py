"""backfill-regime through the real command, against PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from app.services.kb.backfill.regime import RegimeOptions, backfill_regime
from app.services.kb.regime.ohlcv import load_ohlcv
from app.services.kb.runs.scan import Hooks, ScanOptions
from tests.factories import HOURS, START, iso, run_row, up_then_down


@pytest.fixture
def ohlcv_file(tmp_path: Path) -> Path:
    path = tmp_path / "aapl_1h.csv"
    up_then_down().to_csv(path, index=False)
    return path


async def test_each_run_gets_its_own_window(cli, db, make_workspace, insert_runs, ohlcv_file) -> None:
    ws = await make_workspace()
    up = run_row(ws, 0, dataset_meta={"symbol": "AAPL", "timeframe": "1h", "oos_start": iso(300), "oos_end": iso(900)})
    down = run_row(ws, 1, dataset_meta={"symbol": "AAPL", "timeframe": "1h"},
                   params={"date_min": iso(1000), "date_max": iso(1900), "oos_ratio": 0.5})
    await insert_runs([up, down])
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", ohlcv_file,
                               "--symbol", "AAPL", "--timeframe", "1h", "--batch-size", "1")
    assert code == 0, err
    assert "BACKFILL REGIME REPORT" in out and "Computed:       2" in out and "Updated:        2" in out
    assert f"OHLCV Rows:     {HOURS}" in out and "Date Range:     2024-01-01 to 2024-03-24" in out
    rows = {r["id"]: r for r in await db.fetch("SELECT * FROM backtest_runs WHERE workspace_id = $1", ws)}
    a, b = orjson.loads(rows[up["id"]]["regime_oos"]), orjson.loads(rows[down["id"]]["regime_oos"])
    assert "uptrend" in a["regime_tags"] and "downtrend" in b["regime_tags"]
    for snap, (lo, hi) in ((a, (300, 900)), (b, (1450, 1900))):
        start, end = (datetime.fromisoformat(snap[k].replace("Z", "+00:00")) for k in ("ts_start", "ts_end"))
        assert START + timedelta(hours=lo) <= start < end <= START + timedelta(hours=hi)
    assert a["ts_end"] == "2024-02-07T12:00:00Z" and a["effective_n_bars"] == 200
    assert a["computation_source"] == "backfill" and a["schema_version"] == "regime_v1"
    assert rows[up["id"]]["regime_schema_version"] == "regime_v1"
    assert rows[up["id"]]["regime_is"] is None
    # the split form knows its in-sample window too
    regime_is = orjson.loads(rows[down["id"]]["regime_is"])
    assert regime_is["ts_end"] < b["ts_start"]


async def test_skip_reasons_and_dry_run_parity(cli, db, make_workspace, insert_runs, ohlcv_file) -> None:
    ws = await make_workspace()
    meta = {"symbol": "AAPL", "timeframe": "1h"}
    rows = [
        run_row(ws, 0, dataset_meta={**meta, "oos_start": iso(300), "oos_end": iso(900)}),
        run_row(ws, 1, dataset_meta=meta),  # no dates at all
        run_row(ws, 2, dataset_meta={**meta, "oos_start": iso(900), "oos_end": iso(300)}),
        run_row(ws, 3, dataset_meta={**meta, "oos_start": iso(1900), "oos_end": iso(2600)}),  # past the data
        run_row(ws, 4, dataset_meta={**meta, "oos_start": iso(10), "oos_end": iso(40)}),  # < 50 bars
        run_row(ws, 5, dataset_meta={**meta, "timeframe": "1d", "oos_start": iso(300), "oos_end": iso(900)}),
        run_row(ws, 6, dataset_meta={"symbol": "MSFT", "oos_start": iso(300), "oos_end": iso(900)}),
        run_row(ws, 7, status="failed", dataset_meta={**meta, "oos_start": iso(300), "oos_end": iso(900)}),
    ]
    await insert_runs(rows)
    argv = ["backfill-regime", "--workspace-id", ws, "--ohlcv-file", ohlcv_file, "--symbol", "aapl",
            "--timeframe", "1h", "--json"]
    code, out, _ = await cli(*argv, "--dry-run")
    dry = orjson.loads(out)
    code, out, _ = await cli(*argv)
    real = orjson.loads(out)
    assert dry["reasons"] == real["reasons"] == {
        "missing_date_range": 1, "invalid_date_range": 1, "insufficient_ohlcv_coverage": 2, "timeframe_mismatch": 1}
    assert dry["total_scanned"] == real["total_scanned"] == 6  # MSFT filtered by --symbol, failed never selected
    assert dry["updated"] == 0 and real["updated"] == 1
    assert str(rows[1]["id"]) in real["examples"]["missing_date_range"]


async def test_symbol_column_serves_several_symbols(cli, db, make_workspace, insert_runs, tmp_path) -> None:
    path = tmp_path / "multi.parquet"
    pd.concat([up_then_down("AAPL"), up_then_down("MSFT")]).to_parquet(path)
    ws = await make_workspace()
    rows = [run_row(ws, i, dataset_meta={"symbol": s, "timeframe": "1h", "oos_start": iso(300), "oos_end": iso(900)})
            for i, s in enumerate(["AAPL", "MSFT", "TSLA"])]
    await insert_runs(rows)
    code, out, _ = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", path, "--timeframe", "1h",
                             "--json")
    report = orjson.loads(out)
    assert code == 0 and report["updated"] == 2 and report["reasons"] == {"symbol_mismatch": 1}
    got = {r["id"]: r["regime_oos"] for r in await db.fetch("SELECT id, regime_oos FROM backtest_runs")}
    assert orjson.loads(got[rows[1]["id"]])["instrument"] == "MSFT"


async def test_file_without_symbol_needs_symbol(cli, make_workspace, ohlcv_file, tmp_path) -> None:
    ws = await make_workspace()
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", ohlcv_file)
    assert code == 2 and "pass --symbol" in err and out == ""
    code, _, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", tmp_path / "none.csv",
                             "--symbol", "X")
    assert code == 2 and "does not exist" in err
    code, _, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", ohlcv_file, "--symbol", "X",
                             "--timeframe", "soon")
    assert code == 2 and "unknown timeframe" in err


async def test_shared_windows_computed_once_and_resume(db, make_workspace, insert_runs, ohlcv_file) -> None:
    ws = await make_workspace()
    meta = {"symbol": "AAPL", "timeframe": "1h"}
    rows = [run_row(ws, i, dataset_meta={**meta, "oos_start": iso(300), "oos_end": iso(1100 + (i % 5) * 100)})
            for i in range(300)]
    await insert_runs(rows)
    data = load_ohlcv(ohlcv_file, symbol="AAPL")

    class Crash(Exception):
        pass

    def crash(batch: int) -> None:
        if batch == 2:
            raise Crash

    opts = RegimeOptions(workspace_id=ws, timeframe="1h", symbol="AAPL", limit=1000, batch_size=100)
    with pytest.raises(Crash):
        await backfill_regime(db, opts, data, 3600, Hooks(after_batch=crash))
    assert await db.fetchval("SELECT count(*) FROM backtest_runs WHERE regime_oos IS NOT NULL") == 200
    result = await backfill_regime(db, RegimeOptions(**{**opts.__dict__, "resume": True}), data, 3600)
    assert result.totals.updated == 300 and result.totals.scanned == 300
    assert await db.fetchval("SELECT count(DISTINCT regime_oos->>'ts_end') FROM backtest_runs") == 5


async def test_guard_keeps_a_regime_written_meanwhile(db, make_workspace, insert_runs, ohlcv_file) -> None:
    ws = await make_workspace()
    rows = [run_row(ws, i, dataset_meta={"symbol": "AAPL", "oos_start": iso(300), "oos_end": iso(900)})
            for i in range(3)]
    await insert_runs(rows)
    from app.services.kb.backfill.engine import EngineOptions, run_backfill
    from app.services.kb.backfill.regime import RegimeJob

    job = RegimeJob(RegimeOptions(workspace_id=ws, timeframe="1h", symbol="AAPL"), load_ohlcv(ohlcv_file), 3600, "x")
    original = job.write

    async def write(conn, passed, run_id):
        await db.execute("UPDATE backtest_runs SET regime_oos = '{\"live\": true}' WHERE id = $1", rows[0]["id"])
        return await original(conn, passed, run_id)

    job.write = write  # type: ignore[method-assign]
    result = await run_backfill(db, job, EngineOptions(ScanOptions(workspace_id=ws, limit=10)))
    assert result.counters.updated == 2 and result.counters.changed_concurrently == 1
    assert orjson.loads(await db.fetchval("SELECT regime_oos FROM backtest_runs WHERE id = $1", rows[0]["id"])) == {
        "live": True}


def test_python_dash_m_entry_point(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "app.services.kb.cli", "backfill-regime", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "--ohlcv-file" in proc.stdout and "--timeframe" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "app.services.kb.cli", "backfill-candidacy", "--workspace-id", "x"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "not a UUID" in proc.stderr and "Traceback" not in proc.stderr


async def test_symbol_matches_whatever_the_case_and_spaces(cli, db, make_workspace, insert_runs, ohlcv_file) -> None:
    ws = await make_workspace()
    stored = ["AAPL", "aapl", " Aapl", "AAPL  ", "MSFT"]
    await insert_runs([run_row(ws, i, dataset_meta={"symbol": s, "timeframe": "1h", "oos_start": iso(300),
                                                     "oos_end": iso(900)}) for i, s in enumerate(stored)])
    for flag in ("AAPL", " aapl "):
        code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", ohlcv_file, "--symbol",
                                   flag, "--timeframe", "1h", "--dry-run", "--json")
        assert code == 0, err
        report = orjson.loads(out)
        assert report["total_scanned"] == 4 and report["updated"] == 0 and report["reasons"] == {}
    code, out, _ = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", ohlcv_file, "--symbol", "aapl",
                             "--timeframe", "1h", "--json")
    assert code == 0 and orjson.loads(out)["updated"] == 4
    assert await db.fetchval("SELECT count(*) FROM backtest_runs WHERE regime_oos IS NULL") == 1


async def test_weekday_daily_file_covers_windows_that_start_or_end_on_a_weekend(cli, db, make_workspace,
                                                                                insert_runs, tmp_path) -> None:
    days = pd.bdate_range("2023-01-02", periods=400)
    close = 100 * np.exp(np.cumsum(np.random.default_rng(5).normal(0, 0.01, len(days))))
    path = tmp_path / "daily.csv"
    pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "high": close * 1.01, "low": close * 0.99,
                  "close": close}).to_csv(path, index=False)
    ws = await make_workspace()
    # Saturday 2023-06-03 to Sunday 2023-09-03: about 65 trading days inside
    meta = {"symbol": "SPY", "timeframe": "1d", "oos_start": "2023-06-03", "oos_end": "2023-09-03"}
    await insert_runs([run_row(ws, 0, dataset_meta=meta)])
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", path, "--symbol", "SPY",
                               "--timeframe", "1h")
    assert code == 2 and "bars 1d apart but --timeframe is 1h" in err
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", path, "--symbol", "SPY",
                               "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["updated"] == 1 and report["reasons"] == {}
    snap = orjson.loads(await db.fetchval("SELECT regime_oos FROM backtest_runs"))
    assert snap["timeframe"] == "1d" and snap["n_bars"] >= 60


async def test_undo_of_a_regime_backfill_clears_exactly_its_snapshots(cli, db, make_workspace, insert_runs,
                                                                       ohlcv_file) -> None:
    ws = await make_workspace()
    meta = {"symbol": "AAPL", "timeframe": "1h", "oos_start": iso(300), "oos_end": iso(900)}
    ids = await insert_runs([run_row(ws, i, dataset_meta=meta) for i in range(4)])
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", ohlcv_file, "--symbol",
                               "AAPL", "--timeframe", "1h", "--limit", "3", "--json")
    assert code == 0, err
    first = orjson.loads(out)["backfill_run_id"]
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", ohlcv_file, "--symbol",
                               "AAPL", "--timeframe", "1h", "--json")
    assert code == 0 and orjson.loads(out)["updated"] == 1, err
    code, out, err = await cli("backfill-undo", first)
    assert code == 0, err
    assert "3" in out
    left = {r["id"] for r in await db.fetch("SELECT id FROM backtest_runs WHERE regime_oos IS NOT NULL")}
    assert left == {ids[3]}
    status = await db.fetchval("SELECT status FROM kb_backfill_runs WHERE id = $1", __import__("uuid").UUID(first))
    assert status == "undone"
    code, out, err = await cli("backfill-undo", first)  # twice changes nothing more
    assert code == 0 and await db.fetchval("SELECT count(*) FROM backtest_runs WHERE regime_oos IS NOT NULL") == 1
    # the cleared runs are picked up again by the next backfill
    code, out, _ = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", ohlcv_file, "--symbol",
                             "AAPL", "--timeframe", "1h", "--json")
    assert code == 0 and orjson.loads(out)["updated"] == 3


def _daily_bars(times: list[str], n: int) -> str:
    close = 100 * np.exp(np.cumsum(np.random.default_rng(9).normal(0, 0.01, n)))
    return "".join(f"{t},{c:.4f},{c * 1.01:.4f},{c * 0.99:.4f},{c:.4f}\n" for t, c in zip(times, close, strict=True))


def _metatrader_hours() -> str:
    hours = pd.date_range("2024-01-01", periods=2000, freq="h")
    close = 1.1 + np.cumsum(np.random.default_rng(2).normal(0, 0.001, len(hours)))
    return "<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>\n" + "".join(
        f"{t:%Y.%m.%d},{t:%H:%M},{c:.5f},{c + 0.001:.5f},{c - 0.001:.5f},{c:.5f}\n"
        for t, c in zip(hours, close, strict=True))


_DAYS = pd.date_range("2023-01-02", periods=300, freq="D")
_S = [int(d.timestamp()) for d in _DAYS]
_HEADER = "timestamp,open,high,low,close\n"
_DAILY = {"symbol": "SPY", "timeframe": "1d", "oos_start": "2023-03-01", "oos_end": "2023-06-30"}
_HOURLY = {"symbol": "EURUSD", "timeframe": "1h", "oos_start": "2024-01-20", "oos_end": "2024-02-20"}
TIME_FORMATS = {  # file text, the run's dataset_meta
    "byte-order mark": ("\ufeff" + _HEADER + _daily_bars([f"{d:%Y-%m-%d}" for d in _DAYS], 300), _DAILY),
    "day-first dd.mm.yyyy": (_HEADER + _daily_bars([f"{d:%d.%m.%Y}" for d in _DAYS], 300), _DAILY),
    "YYYYMMDD numbers": (_HEADER + _daily_bars([f"{d:%Y%m%d}" for d in _DAYS], 300), _DAILY),
    "Excel serial days": (_HEADER + _daily_bars([str((d - pd.Timestamp("1899-12-30")).days) for d in _DAYS], 300),
                          _DAILY),
    "epoch microseconds": (_HEADER + _daily_bars([str(s * 1_000_000) for s in _S], 300), _DAILY),
    "epoch s and ms mixed": (_HEADER + _daily_bars([str(s if i % 2 else s * 1000) for i, s in enumerate(_S)], 300),
                             _DAILY),
    "MetaTrader <DATE> and <TIME> columns": (_metatrader_hours(), _HOURLY),
}


@pytest.mark.parametrize("name", list(TIME_FORMATS))
async def test_time_formats_through_the_command(cli, make_workspace, insert_runs, tmp_path, name) -> None:
    text, meta = TIME_FORMATS[name]
    path = tmp_path / "bars.csv"
    path.write_text(text, encoding="utf-8")
    ws = await make_workspace()
    await insert_runs([run_row(ws, 0, dataset_meta=meta)])
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", path, "--symbol",
                               meta["symbol"], "--dry-run", "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["passed"] == 1 and report["reasons"] == {}, report
