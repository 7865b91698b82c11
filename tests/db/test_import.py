"""`kb import`, `kb import-optuna`, `POST /kb/runs` and `--enqueue-optuna`, against PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import orjson
import pandas as pd
import pytest

from app.db import imports
from app.services.kb.importing import sources
from app.services.kb.importing.service import CHUNK_ROWS, import_frame, import_table, load_file, open_file
from tests.factories import API_TOKEN, chunked_sweep_export, ohlcv_frame

EXPORTS = Path(__file__).parent.parent / "fixtures" / "exports"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def _runs(db, ws):
    rows = await db.fetch("SELECT * FROM backtest_runs WHERE workspace_id = $1 ORDER BY import_source_id", ws)
    return [{k: (orjson.loads(v) if k in ("params", "dataset_meta", "summary") and v else v)
             for k, v in dict(r).items()} for r in rows]


async def test_backtesting_py_export_is_recognised_and_stored_as_the_system_expects(cli, db) -> None:
    ws = uuid.uuid4()
    code, out, err = await cli("import", EXPORTS / "backtesting_py_stats.csv", "--workspace-id", ws,
                               "--set", "symbol=SYN", "--set", "timeframe=1d", "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert (report["rows"], report["imported"], report["invalid"]) == (6, 6, 0)
    runs = await _runs(db, ws)
    source = pd.read_csv(EXPORTS / "backtesting_py_stats.csv")
    first = next(r for r in runs if r["params"] == {"n1": 5, "n2": 30})
    row = source[source["_strategy"] == "SmaCross(n1=5,n2=30)"].iloc[0]
    assert first["strategy_name"] == "SmaCross" and first["run_kind"] == "test_variant"
    assert first["status"] == "completed" and first["experiment_type"] == "sweep" and first["kb_status"] == "excluded"
    assert first["dataset_meta"] == {"symbol": "SYN", "timeframe": "1d", "oos_start": "2023-01-02T00:00:00Z",
                                     "oos_end": "2024-11-29T00:00:00Z"}
    summary = first["summary"]
    assert summary["sharpe"] == pytest.approx(row["Sharpe Ratio"])
    assert summary["max_drawdown_pct"] == pytest.approx(row["Max. Drawdown [%]"])  # percent, as exported
    assert summary["return_pct"] == pytest.approx(row["Return [%]"])
    assert summary["win_rate"] == pytest.approx(row["Win Rate [%]"] / 100)  # a fraction in the store
    assert summary["trades"] == first["trade_count"] == row["# Trades"]
    assert first["import_source"] == "backtesting_py_stats.csv"
    # the same file again adds nothing
    code, out, _ = await cli("import", EXPORTS / "backtesting_py_stats.csv", "--workspace-id", ws,
                             "--set", "symbol=SYN", "--set", "timeframe=1d", "--json")
    assert code == 0 and orjson.loads(out)["imported"] == 0 and orjson.loads(out)["already_present"] == 6
    assert len(await _runs(db, ws)) == 6


async def test_vectorbt_export_with_param_columns_and_an_infinite_profit_factor(cli, db) -> None:
    ws = uuid.uuid4()
    code, out, err = await cli("import", EXPORTS / "vectorbt_stats.csv", "--workspace-id", ws, "--set",
                               "strategy_name=sma_cross", "--set", "symbol=SYN", "--set", "timeframe=1d", "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["imported"] == 6 and report["invalid"] == 0 and sum(report["notes"].values()) == 1
    runs = await _runs(db, ws)
    source = pd.read_csv(EXPORTS / "vectorbt_stats.csv")
    run = next(r for r in runs if r["params"] == {"fast": 10, "slow": 50})
    row = source[(source["param_fast"] == 10) & (source["param_slow"] == 50)].iloc[0]
    assert run["summary"]["max_drawdown_pct"] == pytest.approx(row["Max Drawdown [%]"])  # positive sign kept
    assert run["summary"]["return_pct"] == pytest.approx(row["Total Return [%]"])
    assert run["trade_count"] == row["Total Trades"]
    assert sum("profit_factor" not in r["summary"] for r in runs) == 1


async def test_bad_rows_are_reported_by_number_and_the_rest_imported_dry_run_counts_the_same(
        cli, db, tmp_path) -> None:
    ws = uuid.uuid4()
    path = tmp_path / "runs.csv"
    path.write_text(
        "strategy,params,oos_start,oos_end,sharpe,max_drawdown_pct,trades,run_kind,symbol,timeframe,created_at\n"
        's1,"{""a"": 1}",2024-01-01,2024-02-01,1.1,-10,30,test_variant,SPY,1d,2025-03-01T10:00:00Z\n'
        's1,"{""a"": 2}",2024-01-01,2024-02-01,high,-10,30,test_variant,SPY,1d,\n'
        's1,"{""a"": 3}",2024-03-01,2024-02-01,1.0,-10,30,test_variant,SPY,1d,\n'
        's1,"{""a"": 4}",2024-01-01,2024-02-01,1.0,-10,30,walk_forward,SPY,1d,\n'
        's1,not json,2024-01-01,2024-02-01,1.0,-10,30,,SPY,1d,\n'
        's1,"{""a"": 6}",1704067200,1706745600000,0.5,8,2147483648,,SPY,1d,\n'
        ',"{""a"": 7}",2024-01-01,2024-02-01,0.5,8,3,,SPY,1d,\n'
        's1,"{""a"": 8}",2024-01-01,,0.5,8,3,,SPY,1d,\n'
        's1,"{""a"": 9}",1704067200,1706745600000,0.5,8,12,backtest,SPY,1d,\n')
    dry = await cli("import", path, "--workspace-id", ws, "--dry-run", "--json")
    real = await cli("import", path, "--workspace-id", ws, "--json")
    assert dry[0] == real[0] == 0, real[2]
    d, r = orjson.loads(dry[1]), orjson.loads(real[1])
    assert {k: d[k] for k in ("rows", "valid", "imported", "invalid")} == \
           {k: r[k] for k in ("rows", "valid", "imported", "invalid")} == \
           {"rows": 9, "valid": 2, "imported": 2, "invalid": 7}
    reasons = {e["row"]: e["reason"] for e in r["errors"]}
    assert reasons[2].startswith("sharpe is not a number: 'high'")
    assert reasons[3] == "oos_end is before oos_start"
    assert reasons[4].startswith("unknown run_kind") and reasons[4].endswith("'walk_forward'")
    assert reasons[5] == "params is not a JSON object"
    assert reasons[6].startswith("trades is out of range")
    assert reasons[7] == "no strategy_name"
    assert reasons[8] == "oos_start and oos_end must be given together"
    runs = await _runs(db, ws)
    assert sorted(r["params"]["a"] for r in runs) == [1, 9]
    epoch = next(r for r in runs if r["params"]["a"] == 9)
    assert epoch["dataset_meta"]["oos_start"] == "2024-01-01T00:00:00Z"  # epoch seconds
    assert epoch["dataset_meta"]["oos_end"] == "2024-02-01T00:00:00Z"  # epoch milliseconds
    assert epoch["run_kind"] == "backtest"
    first = next(r for r in runs if r["params"]["a"] == 1)
    assert first["created_at"] == datetime(2025, 3, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize("argv, message", [
    (["--map", "sharpe=Sharp"], "no column 'Sharp'"),
    (["--set", "colour=red"], "unknown field 'colour'"),
    (["--map", "sharpe"], "expected FIELD=VALUE"),
    (["--format", "parquet"], "unreadable as parquet"),
])
async def test_bad_invocations_exit_2_before_any_write(cli, db, tmp_path, argv, message) -> None:
    ws = uuid.uuid4()
    path = tmp_path / "runs.csv"
    path.write_text("strategy_name,sharpe\ns1,1.0\n")
    code, out, err = await cli("import", path, "--workspace-id", ws, *argv)
    assert code == 2 and message in err and err.count("\n") == 1
    assert await db.fetchval("SELECT count(*) FROM backtest_runs") == 0


async def test_unreadable_or_missing_file_exits_2(cli, tmp_path) -> None:
    (tmp_path / "x.csv").write_bytes(b"strategy_name,sharpe\n\xff\xfe garbage,1\n")
    code, _, err = await cli("import", tmp_path / "x.csv", "--workspace-id", uuid.uuid4())
    assert code == 2 and "UTF-8" in err
    with (tmp_path / "sparse.csv").open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # a hole: all NUL bytes, no line
    code, _, err = await cli("import", tmp_path / "sparse.csv", "--workspace-id", uuid.uuid4())
    assert code == 2 and "binary data" in err and len(err) < 300
    code, _, err = await cli("import", tmp_path / "nope.csv", "--workspace-id", uuid.uuid4())
    assert code == 2 and "no such file" in err
    (tmp_path / "runs.xlsx").write_text("x")
    code, _, err = await cli("import", tmp_path / "runs.xlsx", "--workspace-id", uuid.uuid4())
    assert code == 2 and "--format" in err


async def test_parquet_native_timestamps_and_jsonl_params_objects(cli, db, tmp_path) -> None:
    ws = uuid.uuid4()
    frame = pd.DataFrame({
        "strategy_name": ["p", "p"], "params.window": [10, 20],
        "oos_start": pd.to_datetime(["2024-01-01", "2024-02-01"]).tz_localize("UTC"),
        "oos_end": pd.to_datetime(["2024-01-31", "2024-02-28"]),  # naive means UTC
        "sharpe": [1.0, 0.5], "trades": [10, 20], "return_pct": [0.1, 0.2]})
    frame.to_parquet(tmp_path / "runs.parquet")
    code, out, err = await cli("import", tmp_path / "runs.parquet", "--workspace-id", ws, "--json")
    assert code == 0 and orjson.loads(out)["imported"] == 2, err
    (tmp_path / "runs.jsonl").write_text(
        '{"strategy_name": "j", "params": {"k": 3, "mode": "fast"}, "sharpe": "1.5", "source_id": "007"}\n'
        '{"strategy_name": "j", "params": {"k": 4}, "sharpe": 2}\n')
    code, out, err = await cli("import", tmp_path / "runs.jsonl", "--workspace-id", ws, "--json")
    assert code == 0 and orjson.loads(out)["imported"] == 2, err
    runs = {r["import_source_id"]: r for r in await _runs(db, ws)}
    assert runs["007"]["params"] == {"k": 3, "mode": "fast"} and runs["007"]["summary"]["sharpe"] == 1.5
    parquet = [r for r in runs.values() if r["strategy_name"] == "p"]
    assert {r["dataset_meta"]["oos_start"] for r in parquet} == {"2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"}
    assert {r["params"]["window"] for r in parquet} == {10, 20}
    # return_pct is a pct field named as such: stored as given
    assert {r["summary"]["return_pct"] for r in parquet} == {0.1, 0.2}


def _make_study(path: Path, name: str = "sma_sweep") -> str:
    storage = f"sqlite:///{path}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for i in range(8):
        trial = study.ask()
        fast = trial.suggest_int("fast", 5, 30)
        trial.suggest_categorical("mode", ["long", "both"])
        if i == 5:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        if i == 6:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        trial.set_user_attr("symbol", "SYN")
        trial.set_user_attr("timeframe", "1h")
        trial.set_user_attr("trades", 20 + i)
        trial.set_user_attr("max_drawdown_pct", -8.0)
        if i == 7:
            trial.set_user_attr("sharpe", 9.5)  # the attribute wins over the objective
        study.tell(trial, 1.0 + fast / 100)
    return storage


async def test_import_optuna_takes_complete_trials_idempotently(cli, db, tmp_path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _make_study(tmp_path / "study.db")
    ws = uuid.uuid4()
    code, out, err = await cli("import-optuna", "--storage", storage, "--study", "sma_sweep",
                               "--workspace-id", ws, "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["imported"] == 6 and report["optuna"] == {"trials": 8, "complete": 6, "fail": 1, "pruned": 1}
    runs = await _runs(db, ws)
    assert {r["import_source_id"] for r in runs} == {"0", "1", "2", "3", "4", "7"}
    assert {r["strategy_name"] for r in runs} == {"sma_sweep"}
    assert all(set(r["params"]) == {"fast", "mode"} for r in runs)
    by_id = {r["import_source_id"]: r for r in runs}
    assert by_id["7"]["summary"]["sharpe"] == 9.5
    assert by_id["0"]["summary"]["sharpe"] == pytest.approx(1.0 + by_id["0"]["params"]["fast"] / 100)
    assert by_id["1"]["trade_count"] == 21 and by_id["1"]["dataset_meta"]["symbol"] == "SYN"
    code, out, _ = await cli("import-optuna", "--storage", storage, "--study", "sma_sweep", "--workspace-id", ws,
                             "--strategy", "sma", "--json")
    assert code == 0 and orjson.loads(out)["imported"] == 0  # keyed by study and trial number
    code, _, err = await cli("import-optuna", "--storage", storage, "--study", "nope", "--workspace-id", ws)
    assert code == 2 and "no study named 'nope'" in err and "sma_sweep" in err
    code, _, err = await cli("import-optuna", "--storage", f"sqlite:///{tmp_path}/absent.db", "--study", "x",
                             "--workspace-id", ws)
    assert code == 2 and not (tmp_path / "absent.db").exists()


async def test_post_runs_validates_per_row_and_is_idempotent(api, db) -> None:
    ws = uuid.uuid4()
    body = {"workspace_id": str(ws), "runs": [
        {"strategy_name": "s", "params": {"x": 1}, "sharpe": 1.2, "trades": 30, "oos_start": "2024-01-01",
         "oos_end": "2024-02-01", "symbol": "SPY", "timeframe": "1d", "source_id": "a"},
        {"strategy_name": "s", "params": {"x": 2}, "sharpe": "NaN"},
        {"strategy_name": "s", "params": {"x": 3}, "sharpe": True},
        {"strategy_name": "s\u0000x", "params": {"x": 4}},
        {"strategy_name": "s", "params": [1, 2]},
    ]}
    assert (await api.post("/kb/runs", json=body)).status_code == 401
    resp = await api.post("/kb/runs", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["imported"] == 1 and report["invalid"] == 4
    assert [e["row"] for e in report["errors"]] == [2, 3, 4, 5]
    again = (await api.post("/kb/runs", json=body, headers=AUTH)).json()
    assert again["imported"] == 0 and again["already_present"] == 1
    assert await db.fetchval("SELECT count(*) FROM backtest_runs WHERE workspace_id = $1", ws) == 1
    resp = await api.post("/kb/runs", json={"workspace_id": str(ws), "runs": [{"sharpe": 1, "Sharpe Ratio": 2}]},
                          headers=AUTH)
    assert resp.status_code == 422 and "both give sharpe" in resp.json()["detail"]


def _pipeline_csv(path: Path, rng: np.random.Generator, start: datetime) -> None:
    """Sweeps of two parameter sets over many windows of one symbol; `fast=10` wins."""
    rows = []
    for w in range(40):
        lo = start + timedelta(hours=300 + 60 * w)
        for fast in (10, 30):
            rows.append({"strategy_name": "sma", "param_fast": fast, "symbol": "SYN", "timeframe": "1h",
                         "oos_start": lo.isoformat(), "oos_end": (lo + timedelta(hours=59)).isoformat(),
                         "Sharpe Ratio": round((1.4 if fast == 10 else 0.3) + rng.normal(0, 0.1), 3),
                         "Max. Drawdown [%]": -9.0, "# Trades": 25, "Return [%]": 4.0})
    pd.DataFrame(rows).to_csv(path, index=False)


async def test_imported_runs_go_through_the_pipeline_and_recommend_uses_them(cli, db, tmp_path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ws = uuid.uuid4()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    ohlcv = tmp_path / "bars.csv"
    ohlcv_frame(start, 3000, seed=4).to_csv(ohlcv, index=False)
    _pipeline_csv(tmp_path / "sweep.csv", np.random.default_rng(1), start)
    code, _, err = await cli("import", tmp_path / "sweep.csv", "--workspace-id", ws)
    assert code == 0, err
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="sma", storage=storage, direction="maximize")
    for w in range(10):
        lo = start + timedelta(hours=400 + 50 * w)
        study.enqueue_trial({"fast": 10})
        trial = study.ask()
        trial.suggest_int("fast", 5, 40)
        for key, value in {"symbol": "SYN", "timeframe": "1h", "trades": 30, "max_drawdown_pct": -5.0,
                           "oos_start": lo.isoformat(), "oos_end": (lo + timedelta(hours=49)).isoformat()}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, 1.5)
    code, _, err = await cli("import-optuna", "--storage", storage, "--study", "sma", "--workspace-id", ws)
    assert code == 0, err
    for argv in (["backfill-regime", "--ohlcv-file", ohlcv, "--symbol", "SYN", "--timeframe", "1h", "--limit", "1000"],
                 ["backfill-candidacy", "--limit", "1000"], ["ingest"]):
        code, out, err = await cli(*argv, "--workspace-id", ws)
        assert code == 0, (argv, err)
    # 40 windows x fast=10 and 10 Optuna trials pass the gate; fast=30 fails min Sharpe sometimes at most
    trials = await db.fetchval("SELECT count(*) FROM kb_trials WHERE workspace_id = $1", ws)
    passed = await db.fetchval("SELECT count(*) FROM backtest_runs WHERE workspace_id = $1 AND kb_status = 'candidate'",
                               ws)
    assert trials == passed >= 50
    code, out, err = await cli("recommend", "--workspace-id", ws, "--strategy", "sma", "--ohlcv-file", ohlcv,
                               "--timeframe", "1h", "--json", "--enqueue-optuna", storage, "--study", "sma",
                               "--top", "2")
    assert code == 0, err
    answer = orjson.loads(out)
    assert answer["params"] == {"fast": 10}
    assert answer["optuna_enqueued"]["offered"] == 2
    waiting = [t for t in optuna.load_study(study_name="sma", storage=storage).get_trials()
               if t.state == optuna.trial.TrialState.WAITING]
    # the answer (fast=10) was tried already and is skipped; the runner-up is queued
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"fast": 30}]
    assert waiting[0].user_attrs["kb_rank"] == 2 and answer["optuna_enqueued"]["enqueued"] == 1


# --- streaming: a file is read a chunk at a time, as a whole-file read would read it -----

# Columns a store fills (or a per-import time): everything else an import writes is compared.
_PER_IMPORT = ("id", "workspace_id", "created_at", "kb_xid")


def _sweep_export(path: Path) -> Path:
    return chunked_sweep_export(path, 2 * CHUNK_ROWS + 2_000, CHUNK_ROWS)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
async def test_streamed_import_stores_what_the_whole_file_import_stored(cli, db, tmp_path, suffix) -> None:
    """`kb import` reads a chunk at a time; rows imported by the whole-file read before it
    are stored alike, and importing the file again finds every row already present."""
    path = _sweep_export(tmp_path / f"sweep{suffix}")
    whole, streamed = uuid.uuid4(), uuid.uuid4()
    frame, mapping = load_file(path, None, {}, {})
    before = await import_frame(db, whole, frame, mapping, source=path.name, dry_run=False)
    code, out, err = await cli("import", path, "--workspace-id", streamed, "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert before.imported == report["imported"] == report["rows"] == 2 * CHUNK_ROWS + 2_000
    assert report["mapping"] == before.mapping
    old = [{k: v for k, v in r.items() if k not in _PER_IMPORT} for r in await _runs(db, whole)]
    new = [{k: v for k, v in r.items() if k not in _PER_IMPORT} for r in await _runs(db, streamed)]
    assert new == old
    assert sum(r["import_source_id"].startswith("sha1:") for r in new) == len(new) // 2
    code, out, err = await cli("import", path, "--workspace-id", whole, "--json")
    assert code == 0, err
    again = orjson.loads(out)
    assert (again["imported"], again["already_present"]) == (0, before.valid)


def _plain_csv(path: Path, rows: int, *, tail: bytes = b"") -> Path:
    """Runs without param columns (nothing to scan before writing), then `tail`."""
    lines = [b"strategy_name,sharpe,trades,run_id"]
    lines += [f"s{v % 3},{v % 11 / 5:.2f},{v % 40},r{v}".encode() for v in range(rows)]
    path.write_bytes(b"\n".join(lines) + b"\n" + tail)
    return path


@pytest.mark.parametrize("tail, needle", [
    (b"s1,1.0,3,x,extra\n", "line 21002"),  # one field too many, in row 21,001 (line 1 is the header)
    (b"s1,1.0,3,caf\xe9\n", "not UTF-8 text after row"),
])
async def test_a_file_unreadable_part_way_leaves_nothing_written(cli, db, tmp_path, tail, needle) -> None:
    path = _plain_csv(tmp_path / "runs.csv", 2 * CHUNK_ROWS + 1_000, tail=tail)
    code, out, err = await cli("import", path, "--workspace-id", uuid.uuid4())
    assert code == 2 and out == "", err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert await db.fetchval("SELECT count(*) FROM backtest_runs") == 0
    assert await db.fetchval("SELECT count(*) FROM workspaces") == 0


async def test_a_bad_json_line_anywhere_is_refused_before_any_write(cli, db, tmp_path) -> None:
    path = tmp_path / "runs.jsonl"
    good = [orjson.dumps({"strategy_name": "s", "sharpe": v / 10}) for v in range(2 * CHUNK_ROWS + 500)]
    path.write_bytes(b"\n".join([*good, b'{"strategy_name": "s", "sharpe": }']) + b"\n")
    code, _, err = await cli("import", path, "--workspace-id", uuid.uuid4())
    assert code == 2 and f"line {len(good) + 1:d} is not valid JSON" in err and err.count("\n") == 1
    assert await db.fetchval("SELECT count(*) FROM backtest_runs") == 0


async def test_more_rows_than_the_limit_are_refused_and_nothing_is_kept(cli, db, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sources, "MAX_ROWS", CHUNK_ROWS + 5_000)
    code, _, err = await cli("import", _plain_csv(tmp_path / "runs.csv", 2 * CHUNK_ROWS + 1), "--workspace-id",
                             uuid.uuid4())
    assert code == 2 and "more than 15,000 rows; split the file" in err and err.count("\n") == 1
    assert await db.fetchval("SELECT count(*) FROM backtest_runs") == 0
    code, _, err = await cli("import", _sweep_export(tmp_path / "runs.parquet"), "--workspace-id", uuid.uuid4())
    assert code == 2 and "22,000 rows is more than 15,000" in err  # known from the metadata, before reading


@pytest.mark.parametrize("suffix, unit", [(".parquet", "rows"), (".jsonl", "rows"), (".csv", "bytes")])
async def test_progress_counts_rows_or_bytes_to_the_end(db, tmp_path, suffix, unit) -> None:
    path = _sweep_export(tmp_path / f"sweep{suffix}")
    table, mapping = open_file(path, None, {}, {})
    seen: list[tuple[int, int]] = []
    await import_table(db, uuid.uuid4(), table, mapping, source=path.name, dry_run=True,
                       progress=lambda done, total: seen.append((done, total)))
    total = 2 * CHUNK_ROWS + 2_000 if unit == "rows" else path.stat().st_size
    assert table.progress_unit == unit and len(seen) == 3
    assert [d for d, _ in seen] == sorted({d for d, _ in seen}) and seen[-1] == (total, total)


async def test_a_lost_connection_reads_the_file_again_from_the_start(db, tmp_path, monkeypatch) -> None:
    """The import's connection is ended between two chunks (the reader waits on the third
    until it is, and two chunks are written): the retry opens the file again and imports
    every row once."""
    path = _sweep_export(tmp_path / "sweep.csv")
    table, mapping = open_file(path, None, {}, {})
    resume = threading.Event()
    opened: list[int] = []
    read = sources.Table.chunks

    def held_chunks(self: sources.Table) -> sources.Chunks:
        opened.append(1)
        for i, chunk in enumerate(read(self)):
            if len(opened) == 1 and i == 2:
                resume.wait(60)
            yield chunk

    two_written = asyncio.Event()
    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:  # called once a chunk is written
            two_written.set()

    monkeypatch.setattr(sources.Table, "chunks", held_chunks)
    ws = uuid.uuid4()
    importing = asyncio.create_task(import_table(db, ws, table, mapping, source=path.name, dry_run=False,
                                                progress=progress))
    # No COPY is under way now: asyncpg waits forever in one whose connection is lost while
    # the server is behind (its writer stays paused), so the connection is ended between two.
    await asyncio.wait_for(two_written.wait(), 120)
    ended = await db.fetchval(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(l.pid, 30000)) FROM pg_locks l "
        "JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND d.datname = current_database() "
        "AND l.pid <> pg_backend_pid()")
    resume.set()
    report = await importing
    assert ended == 1 and len(opened) == 2 and report.retried == 1
    assert report.rows == report.imported == 2 * CHUNK_ROWS + 2_000
    assert await db.fetchval("SELECT count(*) FROM backtest_runs WHERE workspace_id = $1", ws) == report.rows


@pytest.mark.parametrize("collide", [False, True])
async def test_an_id_repeated_in_a_later_chunk_is_kept_once(cli, db, tmp_path, monkeypatch, collide) -> None:
    """A first import keeps 64-bit hashes of the ids it wrote and confirms any match against
    the table: with every hash made equal (each id then matches all the earlier ones),
    the rows written and counted are the same."""
    if collide:
        monkeypatch.setattr(imports.SeenIds, "hashes", staticmethod(lambda ids: np.zeros(len(ids), np.int64)))
    rows = 2 * CHUNK_ROWS + 500
    path = _plain_csv(tmp_path / "runs.csv", rows, tail=b"s0,9.99,3,r5\ns1,9.99,3,r15000\ns2,9.99,3,r5\n")
    ws = uuid.uuid4()
    code, out, err = await cli("import", path, "--workspace-id", ws, "--dry-run", "--json")
    assert code == 0, err
    preview = orjson.loads(out)
    code, out, err = await cli("import", path, "--workspace-id", ws, "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert (report["imported"], report["already_present"]) == (rows, 3)
    assert (preview["imported"], preview["already_present"]) == (rows, 3)
    stored = await db.fetch("SELECT import_source_id, summary->>'sharpe' AS sharpe FROM backtest_runs "
                            "WHERE workspace_id = $1 AND import_source_id IN ('r5', 'r15000')", ws)
    # The first row of each id is the one kept.
    assert sorted((r["import_source_id"], r["sharpe"]) for r in stored) == [("r15000", "1.4"), ("r5", "1.0")]
    # Again with more rows, the last one repeating a new id of an earlier chunk: the dry run
    # finds it among what it read, the import in what it wrote; both count it once.
    more = rows + CHUNK_ROWS + 10
    again = _plain_csv(tmp_path / "runs.csv", more, tail=f"s0,9.99,3,r{rows + 1}\n".encode())
    for dry in (["--dry-run"], []):
        code, out, err = await cli("import", again, "--workspace-id", ws, "--json", *dry)
        assert code == 0, err
        report = orjson.loads(out)
        assert (report["imported"], report["already_present"]) == (more - rows, rows + 1), dry
