"""`kb sync` and workspaces by name, through the real command: a sweep file and two price
files become recommendations with one command; a second sync changes nothing and says so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pandas as pd

from tests.factories import ohlcv_frame

START = datetime(2024, 1, 1, tzinfo=UTC)


def _sweep(symbols: tuple[str, ...], windows: int = 24) -> pd.DataFrame:
    """A backtesting.py-like sweep: three parameter sets per 100-bar window, per symbol."""
    rng = np.random.default_rng(5)
    rows = []
    for symbol in symbols:
        for w in range(windows):
            start = START + timedelta(hours=250 + 100 * w)
            for fast in (5, 10, 20):
                rows.append({"Start": start.isoformat(), "End": (start + timedelta(hours=99)).isoformat(),
                             "_strategy": f"SmaCross(n1={fast},n2=50)", "Sharpe Ratio": round(rng.normal(1.0, 0.5), 3),
                             "# Trades": 12, "Max. Drawdown [%]": -8.0, "Return [%]": 4.0, "symbol": symbol,
                             "timeframe": "1h"})
    return pd.DataFrame(rows)


async def test_sync_turns_files_into_recommendations_and_a_second_sync_changes_nothing(cli, tmp_path) -> None:
    prices = tmp_path / "prices"
    prices.mkdir()
    for seed, symbol in enumerate(("AAA", "BBB")):
        ohlcv_frame(START, 2900, seed=seed).to_csv(prices / f"{symbol.lower()}_1h.csv", index=False)
    sweep = tmp_path / "sweep.csv"
    _sweep(("AAA", "BBB", "CCC")).to_csv(sweep, index=False)

    code, out, err = await cli("sync", "--workspace", "research", "--ohlcv", prices, "--import", sweep, "--json")
    assert code == 0, err
    first = orjson.loads(out)
    assert first["changed"] and first["imports"][0]["imported"] == 216
    assert {g["symbol"]: g["updated"] for g in first["regime"]} == {"AAA": 72, "BBB": 72}
    assert first["symbols_without_ohlcv"] == {"CCC": 72}  # listed, not dropped silently
    assert first["candidacy"]["updated"] > 0 and first["ingest"]["inserted"] == first["candidacy"]["updated"]

    code, out, err = await cli("sync", "--workspace", "research", "--ohlcv", prices, "--import", sweep)
    assert code == 0, err
    assert "Changed: nothing (the KB was already up to date)" in out
    assert "0 new, 216 already present" in out

    code, out, err = await cli("recommend", "--workspace", "research", "--strategy", "SmaCross",
                               "--ohlcv-file", prices / "aaa_1h.csv", "--symbol", "AAA", "--json")
    assert code == 0, err
    answer = orjson.loads(out)
    assert answer["params"]["n2"] == 50 and answer["scope"]["symbol"] == "AAA"

    code, out, err = await cli("workspaces", "--json")
    assert code == 0, err
    listed = {w["name"]: w for w in orjson.loads(out)}
    assert listed["research"]["runs"] == 216 and listed["research"]["trials"] == first["ingest"]["inserted"]
    code, out, err = await cli("status", "--workspace", listed["research"]["id"], "--json")
    assert code == 0 and orjson.loads(out)["active_trials"] == listed["research"]["trials"]


async def test_workspace_names_resolve_or_fail_with_one_line(cli, tmp_path) -> None:
    code, _, err = await cli("status", "--workspace", "nobody-made-this")
    assert code == 2 and "no workspace is named 'nobody-made-this'" in err and "kb workspaces" in err
    code, _, err = await cli("status")
    assert code == 2 and "--workspace NAME" in err
    code, _, err = await cli("status", "--workspace", "x", "--workspace-id", "7f1e8e7a-0000-4000-8000-000000000001")
    assert code == 2 and "not both" in err
    runs = tmp_path / "runs.csv"
    pd.DataFrame({"strategy_name": ["s"], "sharpe": [1.0]}).to_csv(runs, index=False)
    for _ in range(2):  # the name is created once, then found
        code, out, err = await cli("import", runs, "--workspace", "team-a", "--json")
        assert code == 0, err
    code, out, _ = await cli("workspaces", "--json")
    assert [w["name"] for w in orjson.loads(out)].count("team-a") == 1
    code, _, err = await cli("sync", "--workspace", "team-a", "--ohlcv", tmp_path / "missing")
    assert code == 2 and "does not exist" in err


async def test_an_option_on_the_command_line_beats_the_other_options_twin(cli, make_workspace, monkeypatch) -> None:
    ws = await make_workspace("team-b")
    monkeypatch.setenv("KB_WORKSPACE_ID", "7f1e8e7a-0000-4000-8000-000000000001")
    code, out, err = await cli("status", "--workspace", "team-b", "--json")
    assert code == 0, err
    assert orjson.loads(out)["workspace_id"] == str(ws)


def test_price_files_name_their_symbol() -> None:
    from pathlib import Path

    from app.services.kb.sync import symbol_of_file

    names = ["SPY.csv", "spy_1d.parquet", "BRK-B.csv", "EUR_USD.csv", "eurusd-4h.csv"]
    assert [symbol_of_file(Path(n)) for n in names] == ["SPY", "SPY", "BRK-B", "EUR_USD", "EURUSD"]


async def test_a_stopped_sync_keeps_its_work_and_the_next_one_finishes(db, tmp_path) -> None:
    from pathlib import Path

    from app.services.kb.sync import SyncOptions, sync

    prices = tmp_path / "aaa_1h.csv"
    ohlcv_frame(START, 2900, seed=1).to_csv(prices, index=False)
    sweep = tmp_path / "sweep.csv"
    _sweep(("AAA",), windows=6).to_csv(sweep, index=False)
    answers = iter([False, True])  # held at a known point: the stop is asked for after the regime step
    opts = SyncOptions(workspace="stop-test", ohlcv=(Path(prices),), imports=(Path(sweep),))
    first = await sync(db, opts, should_stop=lambda: next(answers, True))
    assert first.interrupted and first.regime[0]["updated"] == 18 and first.candidacy == {} and first.ingest == {}
    second = await sync(db, SyncOptions(workspace="stop-test", ohlcv=(Path(prices),)))
    assert not second.interrupted and second.regime == [] and second.candidacy["updated"] > 0
    assert second.ingest["inserted"] == second.candidacy["updated"]
