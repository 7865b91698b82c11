"""Ingest over many pages (the next page read, and the one before written, while a page
is classified): counts stay exact and writes keep page order; a new trial without an
evidence window is stored with its DSR settled, in the same write."""

from __future__ import annotations

import orjson

from app.services.kb.ingest import ingest
from tests.factories import run_row, trend_snapshot

WINDOW = {"symbol": "SPY", "timeframe": "1h", "oos_start": "2024-01-01T00:00:00", "oos_end": "2024-01-09T08:00:00"}


def _runs(ws, n: int) -> list[dict]:
    """Candidates with a window and a regime (trial and evidence), every fifth without a
    regime (a trial with no evidence), every seventh excluded (evidence only)."""
    rows = []
    for i in range(n):
        regime = None if i % 5 == 0 else trend_snapshot(1, seed=i)
        status = "excluded" if i % 7 == 0 else "candidate"
        rows.append(run_row(ws, i, strategy_name=f"s{i % 3}", kb_status=status, regime_oos=regime,
                            dataset_meta=WINDOW, params={"n": i},
                            summary={"trades": 30, "sharpe": 0.1 * (i % 11), "max_drawdown_pct": -5.0}))
    return rows


async def test_many_small_pages_count_exactly(db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = _runs(ws, 61)
    await insert_runs(rows)
    pages: list[int] = []
    result = await ingest(db, ws, batch_size=4, progress=lambda done, _total: pages.append(done))
    trials = sum(1 for i in range(61) if i % 7 != 0)
    evidence = sum(1 for i in range(61) if i % 5 != 0)
    without_window = sum(1 for i in range(61) if i % 7 != 0 and i % 5 == 0)
    assert (result.inserted, result.updated, result.skipped, result.errors) == (trials, 0, 0, 0)
    assert result.evidence == evidence and result.dsr_updated == trials
    assert len(pages) > 10 and pages == sorted(pages)
    stored = await db.fetch("SELECT dsr, dsr_inputs FROM kb_trials WHERE workspace_id = $1", ws)
    unavailable = [orjson.loads(r["dsr_inputs"]) for r in stored if r["dsr"] is None]
    assert len(unavailable) == without_window
    assert all("no evidence window" in u["unavailable"] for u in unavailable)
    assert all(r["dsr_inputs"] is not None for r in stored)
    again = await ingest(db, ws, full=True, batch_size=4)
    assert (again.inserted, again.updated, again.skipped, again.evidence, again.dsr_updated) == (0, 0, trials, 0, 0)


async def test_a_trial_gaining_a_window_gets_its_dsr(db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = _runs(ws, 10)
    await insert_runs(rows)
    await ingest(db, ws, batch_size=3)
    bare = rows[5]  # a candidate without a regime: stored with no DSR, and why
    before = await db.fetchrow("SELECT dsr, dsr_inputs FROM kb_trials WHERE source_run_id = $1", bare["id"])
    assert before["dsr"] is None and "no evidence window" in orjson.loads(before["dsr_inputs"])["unavailable"]
    await db.execute("UPDATE backtest_runs SET regime_oos = $2::jsonb WHERE id = $1", bare["id"],
                     orjson.dumps(trend_snapshot(1, seed=99)).decode())
    changed = await ingest(db, ws, batch_size=3)
    assert (changed.mode, changed.updated, changed.evidence) == ("incremental", 1, 1)
    after = await db.fetchrow("SELECT dsr, dsr_inputs FROM kb_trials WHERE source_run_id = $1", bare["id"])
    assert after["dsr"] is not None and "n_trials" in orjson.loads(after["dsr_inputs"])


async def test_deleted_runs_take_their_trials_and_evidence(db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = _runs(ws, 12)
    await insert_runs(rows)
    await ingest(db, ws)
    gone = [rows[1]["id"], rows[2]["id"], rows[7]["id"]]  # trial and evidence, twice; evidence only
    await db.execute("DELETE FROM backtest_runs WHERE workspace_id = $1 AND id = ANY($2::uuid[])", ws, gone)
    for table in ("kb_trials", "kb_evidence"):
        left = await db.fetchval(f"SELECT count(*) FROM {table} WHERE workspace_id = $1 "
                                 "AND source_run_id = ANY($2::uuid[])", ws, gone)
        assert left == 0, table
    assert await db.fetchval("SELECT count(*) FROM kb_trials WHERE workspace_id = $1", ws) == 12 - 2 - 2



async def test_runs_deleted_between_read_and_write_are_left_out_and_counted(db, make_workspace, insert_runs,
                                                                            monkeypatch) -> None:
    """A run deleted after its page was read and before the page is written: the page is
    written without it (no foreign-key failure of the whole ingest), and the count says so."""
    from app.services.kb import ingest as ingest_module

    ws = await make_workspace()
    rows = _runs(ws, 20)
    await insert_runs(rows)
    doomed = [rows[3]["id"], rows[4]["id"], rows[14]["id"]]  # trial and evidence twice; evidence only
    classify = ingest_module._classify_page

    async def then_delete(page, result, incremental):
        out = await classify(page, result, incremental)
        ids = [r["id"] for r in page if r["id"] in doomed]
        if ids:  # the delete commits before this page is written
            await db.execute("DELETE FROM backtest_runs WHERE workspace_id = $1 AND id = ANY($2::uuid[])", ws, ids)
        return out

    monkeypatch.setattr(ingest_module, "_classify_page", then_delete)
    result = await ingest(db, ws, batch_size=5)
    trials = sum(1 for i in range(20) if i % 7 != 0)
    assert result.deleted_meanwhile == 3
    assert (result.inserted, result.errors) == (trials - 2, 0)
    assert result.scanned == result.inserted + result.updated + result.skipped + result.errors == trials - 2
    assert await db.fetchval("SELECT count(*) FROM kb_trials WHERE workspace_id = $1", ws) == trials - 2
    assert await db.fetchval("SELECT count(*) FROM kb_evidence WHERE workspace_id = $1 AND source_run_id = ANY($2)",
                             ws, doomed) == 0
