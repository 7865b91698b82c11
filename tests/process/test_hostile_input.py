"""The hostile-input catalogue: every entry goes through the real command or HTTP route
against PostgreSQL and must give a clear one-line error (or a per-row reason), never a
traceback, and never a write outside a committed batch. README "Hostile input" points
here; keep the count there in step with `test_catalogue_size`."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from app.api.app import MAX_BODY_BYTES
from app.services.kb.regime.snapshot import FEATURE_NAMES
from tests.factories import API_TOKEN, BASE_TIME, ohlcv_frame, run_row

GOOD_SUMMARY = {"trades": 40, "sharpe": 1.2, "max_drawdown_pct": -12.0}
HOURS = 1500


def assert_one_line(err: str, needle: str) -> None:
    assert "Traceback" not in err, err
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 or err.lstrip().startswith("usage"), err


# --- CLI arguments ------------------------------------------------------------------

WS = "{ws}"  # replaced by a real workspace id

CLI_CASES: list[tuple[str, list[str], int, str]] = [
    ("bad uuid", ["backfill-candidacy", "--workspace-id", "not-a-uuid"], 2, "not a UUID"),
    ("uuid with junk", ["backfill-candidacy", "--workspace-id", WS + "x"], 2, "not a UUID"),
    ("unknown workspace", ["backfill-candidacy", "--workspace-id", str(uuid.UUID(int=7))], 2, "does not exist"),
    ("missing workspace", ["backfill-candidacy"], 2, "which workspace?"),
    ("unknown workspace name", ["status", "--workspace", "no-such-team"], 2, "no workspace is named"),
    ("workspace name and id both", ["status", "--workspace", "x", "--workspace-id", WS], 2, "not both"),
    ("workspace name with a NUL", ["status", "--workspace", "a\x00b"], 2, "not a workspace name"),
    ("limit a word", ["backfill-candidacy", "--workspace-id", WS, "--limit", "everything"], 2, "whole number"),
    ("min-dsr above 1", ["backfill-candidacy", "--workspace-id", WS, "--min-dsr", "1.5"], 2, "--min-dsr"),
    ("min-dsr NaN", ["backfill-candidacy", "--workspace-id", WS, "--min-dsr", "nan"], 2, "not a finite"),
    ("recommend as-of not a date", ["recommend", "--workspace-id", WS, "--strategy", "s", "--tags", "flat",
                                    "--as-of", "soon"], 2, "not a date"),
    ("sync missing ohlcv path", ["sync", "--workspace", WS, "--ohlcv", "/no/such/prices"], 2, "does not exist"),
    ("sync missing import file", ["sync", "--workspace", WS, "--import", "/no/such/runs.csv"], 2, "does not exist"),
    ("sync unknown workspace name", ["sync", "--workspace", "no-such-team", "--ohlcv", "{csv}"], 2,
     "no workspace is named"),
    ("sync without a workspace", ["sync", "--ohlcv", "{csv}"], 2, "--workspace"),
    ("since not a date", ["backfill-candidacy", "--workspace-id", WS, "--since", "yesterday"], 2, "not a date"),
    ("since impossible day", ["backfill-candidacy", "--workspace-id", WS, "--since", "2025-02-30"], 2, "not a date"),
    ("since year 0", ["backfill-candidacy", "--workspace-id", WS, "--since", "0000-01-01"], 2, "not a date"),
    ("since epoch seconds", ["backfill-candidacy", "--workspace-id", WS, "--since", "1700000000"], 2, "not a date"),
    ("import unknown field", ["import", "{csv}", "--workspace-id", WS, "--set", "colour=red"], 2, "unknown field"),
    ("import missing file", ["import", "/no/such/runs.csv", "--workspace-id", WS], 2, "no such file"),
    ("import map to a missing column", ["import", "{csv}", "--workspace-id", WS, "--map", "sharpe=SR"], 2,
     "no column 'SR'"),
    ("report into a directory", ["report", "--workspace-id", WS, "--out", "/tmp"], 2, "is a directory"),
    ("limit zero", ["backfill-candidacy", "--workspace-id", WS, "--limit", "0"], 2, "between 1"),
    ("limit negative", ["backfill-candidacy", "--workspace-id", WS, "--limit", "-5"], 2, "between 1"),
    ("limit huge", ["backfill-candidacy", "--workspace-id", WS, "--limit", str(10**15)], 2, "between 1"),
    ("limit not a number", ["backfill-candidacy", "--workspace-id", WS, "--limit", "1e3"], 2, "whole number"),
    ("batch size zero", ["backfill-candidacy", "--workspace-id", WS, "--batch-size", "0"], 2, "between 1"),
    ("batch size huge", ["backfill-candidacy", "--workspace-id", WS, "--batch-size", "10000000"], 2, "between 1"),
    ("batch size text", ["backfill-candidacy", "--workspace-id", WS, "--batch-size", "x"], 2, "whole number"),
    ("unknown experiment type", ["backfill-candidacy", "--workspace-id", WS, "--experiment-type", "grid"], 2,
     "unknown experiment type"),
    ("drawdown as percent", ["backfill-candidacy", "--workspace-id", WS, "--max-drawdown", "25"], 2, "fraction"),
    ("sharpe NaN", ["backfill-candidacy", "--workspace-id", WS, "--min-sharpe", "nan"], 2, "not a finite"),
    ("sharpe Infinity", ["backfill-candidacy", "--workspace-id", WS, "--min-sharpe", "inf"], 2, "not a finite"),
    ("resume with nothing to resume", ["backfill-candidacy", "--workspace-id", WS, "--resume"], 2,
     "no interrupted backfill-candidacy run"),
    ("explain unknown run", ["backfill-candidacy", "--workspace-id", WS, "--explain", str(uuid.UUID(int=9))], 2,
     "is not in workspace"),
    ("undo unknown run", ["backfill-undo", str(uuid.UUID(int=9))], 2, "no backfill run"),
    ("regime bad timeframe", ["backfill-regime", "--workspace-id", WS, "--ohlcv-file", "{csv}", "--timeframe",
                              "7q"], 2, "timeframe"),
    ("regime missing file", ["backfill-regime", "--workspace-id", WS, "--ohlcv-file", "/no/such/file.csv"], 2,
     "does not exist"),
    ("regime file is a directory", ["backfill-regime", "--workspace-id", WS, "--ohlcv-file", "/tmp"], 2,
     "not a file"),
]


@pytest.mark.parametrize(("argv", "code", "needle"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
async def test_cli_arguments(cli, db, make_workspace, insert_runs, tmp_path, argv, code, needle) -> None:
    ws = await make_workspace()
    await insert_runs([run_row(ws, i) for i in range(3)])
    csv = write_ohlcv(tmp_path / "ok.csv")
    got, out, err = await cli(*[a.replace(WS, str(ws)).replace("{csv}", str(csv)) for a in argv])
    assert got == code, (got, out, err)
    assert_one_line(err, needle)
    assert await db.fetchval("SELECT count(*) FROM kb_status_history") == 0
    assert await db.fetchval("SELECT count(*) FROM backtest_runs WHERE kb_status <> 'excluded'") == 0


async def test_environment_variable_with_a_bad_value(cli, make_workspace, monkeypatch) -> None:
    ws = await make_workspace()
    monkeypatch.setenv("KB_LIMIT", "abc")
    code, _, err = await cli("backfill-candidacy", "--workspace-id", ws)
    assert code == 2
    assert_one_line(err, "environment variable KB_LIMIT")


# --- summaries: each bad row gets its reason, the good row beside it still passes ------

HUGE = "x" * 1_000_000
SUMMARY_CASES: list[tuple[str, Any, str]] = [
    ("summary is a JSON array", "[1, 2, 3]", "invalid_summary"),
    ("summary is a JSON string", '"hello"', "invalid_summary"),
    ("summary is a number", "42", "invalid_summary"),
    ("summary is null", None, "invalid_summary"),
    ("summary is a JSON string holding junk", '"{not json"', "invalid_summary"),
    ("sharpe is the string NaN", {**GOOD_SUMMARY, "sharpe": "NaN"}, "invalid_metrics"),
    ("sharpe is the string Infinity", {**GOOD_SUMMARY, "sharpe": "Infinity"}, "invalid_metrics"),
    ("drawdown is 1e308", {**GOOD_SUMMARY, "max_drawdown_pct": 1e308}, "dd_too_high"),
    ("sharpe is -1e308", {**GOOD_SUMMARY, "sharpe": -1e308}, "sharpe_too_low"),
    ("sharpe is nested junk", {**GOOD_SUMMARY, "sharpe": {"a": [1, {"b": None}]}}, "invalid_metrics"),
    ("sharpe is a 1 MB string", {**GOOD_SUMMARY, "sharpe": HUGE}, "invalid_metrics"),
    ("sharpe is a boolean", {**GOOD_SUMMARY, "sharpe": True}, "invalid_metrics"),
    ("trades is text", {**GOOD_SUMMARY, "trades": "forty"}, "invalid_metrics"),
    ("trades is negative", {**GOOD_SUMMARY, "trades": -3}, "invalid_metrics"),
    ("trades is 1e308", {**GOOD_SUMMARY, "trades": 1e308}, "invalid_metrics"),
    ("trades is fractional", {**GOOD_SUMMARY, "trades": 40.5}, "invalid_metrics"),
    ("no metrics at all", {"note": "nothing here"}, "insufficient_oos_trades"),
]


@pytest.mark.parametrize(("summary", "reason"), [c[1:] for c in SUMMARY_CASES], ids=[c[0] for c in SUMMARY_CASES])
async def test_summaries(cli, db, make_workspace, insert_runs, summary, reason) -> None:
    ws = await make_workspace()
    bad = run_row(ws, 0, summary=summary)
    good = run_row(ws, 1, summary=GOOD_SUMMARY)
    await insert_runs([bad, good])
    code, out, err = await cli("backfill-candidacy", "--workspace-id", ws, "--json")
    assert code == 0 and "Traceback" not in err, err
    result = orjson.loads(out)
    statuses = {r["id"]: r["kb_status"] for r in await db.fetch("SELECT id, kb_status FROM backtest_runs")}
    assert statuses[good["id"]] == "candidate"
    assert result["reasons"] == {reason: 1} and result["updated"] == 1
    assert statuses[bad["id"]] == "excluded"


# --- dataset_meta for backfill-regime -------------------------------------------------

def iso(hours: int) -> str:
    return (BASE_TIME - timedelta(days=30) + timedelta(hours=hours)).isoformat()


META = {"symbol": "AAPL", "timeframe": "1h"}
# A reason of None: the row is not even selected (it names no AAPL symbol).
META_CASES: list[tuple[str, Any, str | None]] = [
    ("dataset_meta is an array", "[1, 2]", None),
    ("dataset_meta is JSON null", "null", None),
    ("dataset_meta has no dates", META, "missing_date_range"),
    ("oos dates are words", {**META, "oos_start": "soon", "oos_end": "later"}, "invalid_date_range"),
    ("oos end before start", {**META, "oos_start": iso(500), "oos_end": iso(100)}, "invalid_date_range"),
    ("oos dates are objects", {**META, "oos_start": {"y": 2024}, "oos_end": [1]}, "invalid_date_range"),
    ("oos year 99999", {**META, "oos_start": iso(100), "oos_end": "99999-01-01"}, "invalid_date_range"),
    ("oos dates are 1e308", {**META, "oos_start": 1e308, "oos_end": 1e308}, "invalid_date_range"),
    ("oos date is a 1 MB string", {**META, "oos_start": HUGE, "oos_end": iso(500)}, "invalid_date_range"),
    ("oos_ratio is NaN text", {**META, "date_min": iso(0), "date_max": iso(900), "oos_ratio": "NaN"},
     "invalid_date_range"),
    ("window outside the file", {**META, "oos_start": "2001-01-01", "oos_end": "2001-02-01"},
     "insufficient_ohlcv_coverage"),
    ("another symbol", {**META, "symbol": "MSFT", "oos_start": iso(100), "oos_end": iso(500)}, None),
    ("symbol is a number", {**META, "symbol": 12345, "oos_start": iso(100), "oos_end": iso(500)}, None),
    ("another timeframe", {**META, "timeframe": "1d", "oos_start": iso(100), "oos_end": iso(500)},
     "timeframe_mismatch"),
]


def write_ohlcv(path: Path, rows: int = HOURS) -> Path:
    ohlcv_frame(BASE_TIME - timedelta(days=30), rows, seed=3).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("meta", "reason"), [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES])
async def test_dataset_meta(cli, db, make_workspace, insert_runs, tmp_path, meta, reason) -> None:
    ws = await make_workspace()
    bad = run_row(ws, 0, dataset_meta=meta)
    good = run_row(ws, 1, dataset_meta={**META, "oos_start": iso(100), "oos_end": iso(600)})
    await insert_runs([bad, good])
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", write_ohlcv(tmp_path / "a.csv"),
                               "--symbol", "AAPL", "--timeframe", "1h", "--json")
    assert code == 0 and "Traceback" not in err, err
    result = orjson.loads(out)
    assert result["updated"] == 1
    assert result["reasons"] == ({reason: 1} if reason else {})
    assert result["total_scanned"] == (2 if reason else 1)
    done = {r["id"] for r in await db.fetch("SELECT id FROM backtest_runs WHERE regime_oos IS NOT NULL")}
    assert done == {good["id"]}


# --- OHLCV files ----------------------------------------------------------------------

def _frame(rows: int = HOURS, tz: str = "UTC") -> pd.DataFrame:
    return ohlcv_frame(BASE_TIME - timedelta(days=30), rows, seed=4, tz=tz)


def _csv(df: pd.DataFrame, sep: str = ",") -> bytes:
    return df.to_csv(index=False, sep=sep).encode()


def _mixed_zones() -> bytes:
    a, b = _frame(), _frame(tz="America/New_York")
    return _csv(pd.concat([a.iloc[::2], b.iloc[1::2]]))


def _with_bad_rows() -> bytes:
    df = _frame()
    df.loc[5, "close"] = -1.0
    df.loc[6, ["high", "low"]] = [1.0, 2.0]  # high < low
    return _csv(df)


# (name, file name, content, exit code, error needle or dropped-row note)
OHLCV_CASES: list[tuple[str, str, bytes, int, str]] = [
    ("empty file", "e.csv", b"", 2, "is empty"),
    ("header only", "h.csv", b"timestamp,open,high,low,close,volume\n", 2, "no rows"),
    ("binary garbage", "g.csv", bytes(range(256)) * 40, 2, "OHLCV"),
    ("binary garbage as parquet", "g.parquet", b"PAR1" + bytes(range(256)) * 8, 2, "cannot read OHLCV file"),
    ("missing close column", "m.csv", _csv(_frame().drop(columns=["close"])), 2, "lacks column(s) close"),
    ("tab delimiter", "t.csv", _csv(_frame(), sep="\t"), 0, ""),
    ("pipe delimiter", "p.csv", _csv(_frame(), sep="|"), 0, ""),
    ("mixed time zones", "z.csv", _mixed_zones(), 0, ""),
    ("duplicate times", "d.csv", _csv(pd.concat([_frame(), _frame().iloc[:50]])), 0, "duplicates 50"),
    ("unsorted times", "u.csv", _csv(_frame().sample(frac=1.0, random_state=1)), 0, ""),
    ("negative price and high < low", "n.csv", _with_bad_rows(), 0, "bad_prices 2"),
    ("not UTF-8", "l.csv", "timestamp,high,low,close\n2024-01-01,1,1,\xe9\n".encode("latin-1"), 2, "OHLCV"),
]


@pytest.mark.parametrize(("name", "content", "code", "needle"), [c[1:] for c in OHLCV_CASES],
                         ids=[c[0] for c in OHLCV_CASES])
async def test_ohlcv_files(cli, db, make_workspace, insert_runs, tmp_path, name, content, code, needle) -> None:
    ws = await make_workspace()
    good = run_row(ws, 1, dataset_meta={**META, "oos_start": iso(100), "oos_end": iso(600)})
    await insert_runs([good])
    path = tmp_path / name
    path.write_bytes(content)
    got, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", path, "--symbol", "AAPL",
                              "--timeframe", "1h")
    assert got == code, (out, err)
    written = await db.fetchval("SELECT count(*) FROM backtest_runs WHERE regime_oos IS NOT NULL")
    if code:
        assert_one_line(err, needle)
        assert written == 0
        assert await db.fetchval("SELECT count(*) FROM kb_backfill_runs") == 0  # refused before starting
    else:
        assert "Traceback" not in err and written == 1 and "Updated:        1" in out
        assert needle in out


@pytest.mark.slow
async def test_ten_million_row_ohlcv_file(cli, db, make_workspace, insert_runs, tmp_path) -> None:
    """10,000,000 one-minute bars (19 years) in Parquet: loaded, sliced per run."""
    n = 10_000_000
    start = pd.Timestamp("2006-01-01", tz="UTC")
    rng = np.random.default_rng(8)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.0005, n)))
    pd.DataFrame({"timestamp": pd.date_range(start, periods=n, freq="min"), "open": close, "high": close * 1.001,
                  "low": close * 0.999, "close": close}).to_parquet(tmp_path / "big.parquet")
    del close
    ws = await make_workspace()
    runs = [run_row(ws, i, dataset_meta={"symbol": "AAPL", "timeframe": "1m",
                                         "oos_start": (start + timedelta(days=300 * i)).isoformat(),
                                         "oos_end": (start + timedelta(days=300 * i, hours=30)).isoformat()})
            for i in range(20)]
    await insert_runs(runs)
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", tmp_path / "big.parquet",
                               "--symbol", "AAPL", "--timeframe", "1m")
    assert code == 0, err
    assert "OHLCV Rows:     10000000" in out and "Updated:        20" in out


# --- API bodies -----------------------------------------------------------------------

@pytest.fixture
async def api(api):
    """The shared API client, authorised."""
    api.headers["Authorization"] = f"Bearer {API_TOKEN}"
    return api


REC = {"workspace_id": WS, "strategy_name": "s", "tags": ["uptrend"]}
API_CASES: list[tuple[str, str, Any, int]] = [
    ("workspace id not a uuid", "/kb/trials/recommend", {**REC, "workspace_id": "1; DROP TABLE kb_trials"}, 422),
    ("top_k wrong type", "/kb/trials/recommend", {**REC, "top_k": "many"}, 422),
    ("top_k huge", "/kb/trials/recommend", {**REC, "top_k": 10**12}, 422),
    ("tags wrong type", "/kb/trials/recommend", {**REC, "tags": "uptrend"}, 422),
    ("unknown field", "/kb/trials/recommend", {**REC, "limit": 5}, 422),
    ("regime with NaN", "/kb/trials/recommend", {**REC, "tags": None, "regime": {"trend_strength": "NaN"}}, 422),
    ("deeply nested regime", "/kb/trials/recommend",
     b'{"workspace_id": "' + WS.encode() + b'", "strategy_name": "s", "regime": ' + b'{"a": ' * 5000 + b"1"
     + b"}" * 5001, 400),
    ("ohlcv with high < low", "/kb/trials/recommend",
     {**REC, "tags": None, "ohlcv": [{"timestamp": "2024-01-01", "high": 1, "low": 2, "close": 1.5}] * 120}, 422),
    ("ohlcv over the row cap", "/kb/trials/recommend",
     {**REC, "tags": None, "ohlcv": [{"timestamp": "2024-01-01", "high": 2, "low": 1, "close": 1.5}] * 20_001},
     422),
    ("SQL metacharacters in strategy", "/kb/trials/recommend", {**REC, "strategy_name": "s'); DELETE FROM --"},
     200),
    ("another workspace's trials", "/kb/trials/recommend", REC, 200),
    ("ingest since wrong type", "/kb/trials/ingest", {"workspace_id": WS, "since": [1]}, 422),
    ("ingest since year 1", "/kb/trials/ingest", {"workspace_id": WS, "since": "0001-01-01T00:00:00Z"}, 422),
    ("ingest since year 9999", "/kb/trials/ingest", {"workspace_id": WS, "since": "9999-12-31T23:59:59Z"}, 422),
    ("NUL in strategy name", "/kb/trials/recommend", {**REC, "strategy_name": "s\u0000x"}, 422),
    ("ohlcv bars dated 1500", "/kb/trials/recommend",
     {**REC, "tags": None, "ohlcv": [{"timestamp": f"1500-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", "high": 2,
                                      "low": 1, "close": 1.5} for i in range(120)]}, 422),
    ("regime in the original system's format", "/kb/trials/recommend",
     {**REC, "tags": None, "regime": {**dict.fromkeys(FEATURE_NAMES, 0.5), "regime_tags": "uptrend, high_vol",
                                      "tag_evidence": [{"tag": "uptrend", "metric": "trend_strength", "value": 0.8,
                                                        "op": ">=", "threshold": 0.6, "margin": 0.2}]}}, 200),
    ("runs not a list", "/kb/runs", {"workspace_id": WS, "runs": {"strategy_name": "s"}}, 422),
    ("runs over the cap", "/kb/runs", {"workspace_id": WS, "runs": [{"strategy_name": "s"}] * 50_001}, 422),
    ("runs with a NUL source", "/kb/runs", {"workspace_id": WS, "runs": [], "source": "a\u0000b"}, 422),
    ("ingest unknown workspace", "/kb/trials/ingest", {"workspace_id": str(uuid.UUID(int=5))}, 404),
    ("ingest unknown workspace name", "/kb/trials/ingest", {"workspace": "no-such-team"}, 404),
    ("ingest workspace name and id both", "/kb/trials/ingest", {"workspace_id": WS, "workspace": "x"}, 422),
    ("ingest no workspace at all", "/kb/trials/ingest", {}, 422),
    ("recommend as_of year 1500", "/kb/trials/recommend", {**REC, "as_of": "1500-01-01T00:00:00Z"}, 422),
    ("recommend pool not a bool", "/kb/trials/recommend", {**REC, "pool": "sometimes"}, 422),
    ("sync missing path", "/kb/sync", {"workspace_id": WS, "ohlcv": ["/no/such/prices"]}, 422),
    ("sync paths not a list", "/kb/sync", {"workspace_id": WS, "ohlcv": "/tmp"}, 422),
    ("sync NUL in a path", "/kb/sync", {"workspace_id": WS, "imports": ["a\u0000b"]}, 422),
    ("sync unknown field", "/kb/sync", {"workspace_id": WS, "dry_run": True}, 422),
    ("sync batch size zero", "/kb/sync", {"workspace_id": WS, "batch_size": 0}, 422),
    ("invalid JSON", "/kb/trials/recommend", b"{\"workspace_id\": ", 422),
    ("oversized body", "/kb/trials/recommend", b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}", 413),
]


def _materialise(body: Any, ws: uuid.UUID) -> Any:
    if isinstance(body, dict):
        return {k: _materialise(v, ws) for k, v in body.items()}
    if body == WS:
        return str(ws)
    return body


@pytest.mark.parametrize(("path", "body", "status"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
async def test_api_bodies(api, db, make_workspace, insert_runs, path, body, status) -> None:
    ws, other = await make_workspace(), await make_workspace("other")
    await insert_runs([run_row(other, i, strategy_name="s", kb_status="candidate") for i in range(3)])
    await api.post("/kb/trials/ingest", json={"workspace_id": str(other)})
    before = await db.fetchval("SELECT count(*) FROM kb_trials")
    if isinstance(body, bytes):
        r = await api.post(path, content=body.replace(WS.encode(), str(ws).encode()),
                           headers={"content-type": "application/json"})
    else:
        r = await api.post(path, content=orjson.dumps(_materialise(body, ws)),
                           headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:300]
    assert "Traceback" not in r.text
    if status == 200:  # nothing of the other workspace leaks, nothing is injected
        assert r.json()["considered"] == 0 and r.json()["supporting_trials"] == []
    else:
        assert r.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM kb_trials") == before


async def test_chunked_oversized_body_is_refused(api) -> None:
    async def chunks():
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    r = await api.post("/kb/trials/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_catalogue_size() -> None:
    # the +1s: the environment twin, the 10M-row file, the chunked body; +3: the trickled body,
    # the sparse 2 GiB file and the 2 MiB header line
    total = len(CLI_CASES) + 1 + len(SUMMARY_CASES) + len(META_CASES) + len(OHLCV_CASES) + 1 + len(API_CASES) + 1 + 3
    assert total >= 40
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"{total} bad inputs" in readme


async def test_a_body_that_trickles_in_is_cut_off(api, monkeypatch) -> None:
    import app.api.app as api_module

    monkeypatch.setattr(api_module, "BODY_CHUNK_TIMEOUT_S", 0.3)

    async def trickle():
        yield b'{"workspace_id": '
        await asyncio.sleep(1.0)
        yield b'"x"}'

    r = await api.post("/kb/trials/ingest", content=trickle(), headers={"content-type": "application/json"})
    assert r.status_code == 408 and "stalled" in r.json()["detail"]


async def test_a_sparse_two_gib_ohlcv_file_is_refused_unread(cli, make_workspace, tmp_path) -> None:
    ws = await make_workspace()
    path = tmp_path / "holes.csv"
    with path.open("wb") as handle:
        handle.truncate(2 * 1024**3)  # a sparse file: no disk, all NUL bytes
    code, out, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", path, "--symbol", "X")
    assert code == 2 and out == ""
    assert_one_line(err, "binary data")
    assert len(err) < 300  # nothing of the file is echoed
    long_header = tmp_path / "long.csv"
    long_header.write_bytes(b"x" * (2 * 1024 * 1024) + b"\n1\n")
    code, _, err = await cli("backfill-regime", "--workspace-id", ws, "--ohlcv-file", long_header, "--symbol", "X")
    assert code == 2 and "longer than 1 MiB" in err and len(err) < 300
