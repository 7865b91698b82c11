"""The notebook API (`import trading_kb`) in a real Python process: the same script run plainly
and with every call made from inside `asyncio.run(main())` (Jupyter's case: a loop is running)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import asyncpg
import orjson
import pytest

import trading_kb
from app.db import with_database
from app.errors import KBError

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import asyncio, os, sys, threading
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pandas as pd

import trading_kb
from tests.factories import ohlcv_frame

START = datetime(2024, 1, 1, tzinfo=UTC)
WINDOWS, BARS, LEAD = 20, 100, 250


def sweep():
    """One symbol, hourly: three parameter sets per 100-bar window, 250 bars after the prices start."""
    rng = np.random.default_rng(5)
    rows = []
    for w in range(WINDOWS):
        start = START + timedelta(hours=LEAD + BARS * w)
        for fast in (5, 10, 20):
            rows.append({"strategy_name": "sma_cross", "param_fast": fast, "param_slow": 50,
                         "oos_start": start.isoformat(), "oos_end": (start + timedelta(hours=BARS - 1)).isoformat(),
                         "symbol": "AAA", "timeframe": "1h", "trades": 12,
                         "sharpe": round(rng.normal(1.0 + 0.1 * (fast == 10), 0.5), 3), "max_drawdown_pct": -8.0})
    return pd.DataFrame(rows)


def notebook(workdir):
    out = {"mode": sys.argv[1]}
    try:
        asyncio.get_running_loop()
        out["caller_loop_running"] = True
    except RuntimeError:
        out["caller_loop_running"] = False
    prices = ohlcv_frame(START, LEAD + WINDOWS * BARS + 50, seed=1)
    csv = os.path.join(workdir, "aaa_1h.csv")
    prices.to_csv(csv, index=False)
    # What a notebook holds: a DatetimeIndex and capitalised columns.
    frame = prices.assign(timestamp=pd.to_datetime(prices["timestamp"])).set_index("timestamp")
    frame = frame.rename(columns=str.title)

    kb = trading_kb.connect()
    report = kb.import_runs(sweep(), workspace="nb")
    out["imported"] = report["imported"]
    out["invalid"] = report["invalid"]
    synced = kb.sync(workspace="nb", ohlcv=[csv])
    out["sync_changed"] = synced.changed
    out["regime_updated"] = sum(r["updated"] for r in synced.to_dict()["regime"])
    ans = kb.recommend("sma_cross", workspace="nb", ohlcv=frame, symbol="AAA")
    assert isinstance(ans, trading_kb.Recommendation)
    out["params"] = ans.params
    out["status"] = ans.status
    out["scope"] = ans.to_dict().get("scope")
    out["same_from_file"] = kb.recommend("sma_cross", workspace="nb", ohlcv=csv, symbol="AAA").params == ans.params
    trials = kb.trials(workspace="nb")
    out["trials_is_frame"] = isinstance(trials, pd.DataFrame)
    out["trials"] = len(trials)
    out["trial_columns"] = sorted(trials.columns)
    out["trial_fast_values"] = sorted({int(v) for v in trials["param_fast"]})
    runs = kb.runs(workspace="nb", limit=10)
    out["runs"] = len(runs)
    out["run_columns"] = sorted(runs.columns)
    out["runs_with_regime"] = int(runs["regime_tags"].notna().sum())
    out["workspaces"] = kb.workspaces()[["name", "runs"]].to_dict("records")
    evaluation = kb.evaluate("sma_cross", workspace="nb", symbol="AAA")
    out["evaluated_windows"] = evaluation.windows
    try:
        kb.trials(workspace="no-such-workspace")
    except trading_kb.KBError as exc:
        out["bad_workspace"] = [type(exc).__name__, str(exc)]
    kb.close()
    with trading_kb.connect(os.environ["DATABASE_URL"]) as again:
        out["url_trials"] = len(again.trials(workspace="nb", strategy="sma_cross"))
    try:
        again.workspaces()
    except trading_kb.KBError as exc:
        out["after_close"] = str(exc)
    out["threads_left"] = sorted(t.name for t in threading.enumerate() if t.name.startswith("trading-kb"))
    return out


async def main(workdir):
    return notebook(workdir)  # every call blocks from inside this running loop


if sys.argv[1] == "loop":
    result = asyncio.run(main(sys.argv[2]))
else:
    result = notebook(sys.argv[2])
print(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY).decode())
'''


async def _run_script(db_url: str, tmp_path: Path, mode: str) -> dict:
    script = tmp_path / "notebook.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "DATABASE_URL": db_url, "KB_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), mode, str(tmp_path), env=env,
                                                cwd=str(tmp_path), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert "event loop is running" not in err.decode()
    return orjson.loads(out.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["plain", "loop"])
async def test_a_notebook_imports_syncs_recommends_and_reads_trials(db_url: str, tmp_path: Path, mode: str) -> None:
    result = await _run_script(db_url, tmp_path, mode)
    assert result["caller_loop_running"] is (mode == "loop")
    assert result["imported"] == 60 and result["invalid"] == 0
    assert result["sync_changed"] and result["regime_updated"] == 60
    assert result["params"] and result["params"]["slow"] == 50 and result["params"]["fast"] in (5, 10, 20)
    assert result["status"] in ("ok", "degraded")
    assert result["scope"]["symbol"] == "AAA" and result["scope"]["timeframe"] == "1h"
    assert result["same_from_file"]  # a DataFrame and the file of the same prices give the same answer
    assert result["trials_is_frame"] and result["trials"] > 0 and result["url_trials"] == result["trials"]
    assert {"param_fast", "param_slow", "sharpe", "symbol", "regime_tags"} <= set(result["trial_columns"])
    assert "params" not in result["trial_columns"]
    assert result["trial_fast_values"] and set(result["trial_fast_values"]) <= {5, 10, 20}
    assert result["runs"] == 10 and result["runs_with_regime"] == 10
    assert {"param_fast", "sharpe", "trades", "symbol", "oos_start", "kb_status"} <= set(result["run_columns"])
    assert {"name": "nb", "runs": 60} in result["workspaces"]
    assert result["evaluated_windows"] == 20
    kind, message = result["bad_workspace"]
    assert kind == "NotFound" and "no workspace is named 'no-such-workspace'" in message
    assert "closed" in result["after_close"]
    assert result["threads_left"] == []  # close() stopped each connection's loop thread


async def test_an_external_database_behind_is_refused_not_migrated(server_dsn: str) -> None:
    """`connect(url)` (called here from inside the test's running loop) checks the schema and
    says to run `kb db upgrade`; it never migrates a database it was pointed at."""
    name = f"kb_test_behind_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(server_dsn, name)
        with pytest.raises(KBError, match="kb db upgrade"):
            trading_kb.connect(url)
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT to_regclass('backtest_runs')") is None
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_bad_arguments_are_one_line_errors_before_any_database_work(db_url: str) -> None:
    with trading_kb.connect(db_url) as kb:
        with pytest.raises(trading_kb.BadInput, match=r"ohlcv .* or as tags"):
            kb.recommend("sma_cross", workspace="nb")
        with pytest.raises(trading_kb.BadInput, match="takes a pandas DataFrame"):
            kb.import_runs([{"strategy_name": "x"}], workspace="nb")  # type: ignore[arg-type]
        with pytest.raises(trading_kb.NotFound, match="no workspace is named 'nb'"):
            kb.recommend("sma_cross", workspace="nb", tags=["trend_up"])
        assert trading_kb.KBError is KBError
