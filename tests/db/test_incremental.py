"""The incremental KB against PostgreSQL: per-strategy revisions, caches that take only
the rows written since their revision (and rebuild when rows they hold change), ingest
that reads only the runs written since the last one, and a server's answer while the
walk-forward check of a new revision is still running."""

from __future__ import annotations

import asyncio
import threading
import uuid

import orjson
import pytest

from app.db import trials as trials_db
from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, TrialCache, recommend
from app.services.kb.recommend import evaluate as evaluate_module
from app.services.kb.recommend.query import Scope
from tests.factories import run_row, trend_snapshot


def _runs(ws: uuid.UUID, first: int, count: int, strategy: str = "s", **overrides: object) -> list[dict]:
    return [run_row(ws, i, strategy_name=strategy, kb_status="candidate", regime_oos=trend_snapshot(1, 0.002, i),
                    params={"fast": i % 7, "slow": 20}, **overrides) for i in range(first, first + count)]


def _shown(answer: object) -> tuple:
    d = answer.to_dict()  # type: ignore[attr-defined]
    return (d["status"], d["params"], d["considered"], [t["trial_id"] for t in d["supporting_trials"]],
            [t["dsr"] for t in d["supporting_trials"]])


async def test_a_cached_matrix_takes_only_the_rows_written_since_its_revision(db, make_workspace, insert_runs):
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 30))
    await ingest(db, ws)
    cache = TrialCache()
    query = RecommendQuery(ws, "s", tags=("uptrend",), top_k=5)
    first = await recommend(db, query, cache)
    await insert_runs(_runs(ws, 100, 6))
    await ingest(db, ws)
    after = await recommend(db, query, cache)
    assert (cache.appends, cache.evidence.appends) == (1, 1)  # appended, not loaded again
    assert after.considered == first.considered + 6
    assert _shown(after) == _shown(await recommend(db, query, TrialCache()))  # as a fresh load answers


async def test_rows_that_change_or_leave_rebuild_the_cached_matrix(db, make_workspace, insert_runs):
    ws = await make_workspace()
    runs = _runs(ws, 0, 20)
    await insert_runs(runs)
    await ingest(db, ws)
    cache = TrialCache()
    query = RecommendQuery(ws, "s", tags=("uptrend",), top_k=5)
    assert (await recommend(db, query, cache)).considered == 20
    await db.execute("UPDATE backtest_runs SET kb_status = 'rejected' WHERE id = $1", runs[0]["id"])
    done = await ingest(db, ws)
    assert (done.mode, done.archived) == ("incremental", 1)
    revision, reset = await trials_db.strategy_revision(db, ws, "s")
    assert reset == revision  # the archive reset the strategy
    assert (await recommend(db, query, cache)).considered == 19
    assert cache.appends == 0  # built again from the database, not appended to


async def test_each_strategy_has_its_own_revision(db, make_workspace, insert_runs):
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 5, "a") + _runs(ws, 10, 5, "b"))
    await ingest(db, ws)
    a, b = await trials_db.strategy_revision(db, ws, "a"), await trials_db.strategy_revision(db, ws, "b")
    await insert_runs(_runs(ws, 20, 3, "a"))
    await ingest(db, ws)
    assert (await trials_db.strategy_revision(db, ws, "a"))[0] > a[0]
    assert await trials_db.strategy_revision(db, ws, "b") == b  # b's caches stay valid


async def test_a_run_written_while_an_ingest_reads_is_read_by_the_next(db, make_workspace, insert_runs):
    ws = await make_workspace()
    runs = _runs(ws, 0, 10)
    late = run_row(ws, 50, strategy_name="s", regime_oos=trend_snapshot(1, 0.002, 50))  # excluded for now
    await insert_runs([*runs, late])
    await ingest(db, ws)
    async with db.acquire() as writer:
        tx = writer.transaction()
        await tx.start()
        # Committed only after the next ingest took its snapshot: that ingest cannot see it.
        await writer.execute("UPDATE backtest_runs SET kb_status = 'candidate' WHERE id = $1", late["id"])
        during = await ingest(db, ws)
        await tx.commit()
    assert during.inserted == 0
    after = await ingest(db, ws)
    assert (after.mode, after.inserted) == ("incremental", 1)
    assert await db.fetchval("SELECT count(*) FROM kb_trials WHERE workspace_id = $1 AND archived_at IS NULL",
                             ws) == 11


async def test_changed_runs_are_paged_in_transaction_order_across_a_digit_boundary(db, make_workspace,
                                                                                   insert_runs):
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 2))
    await ingest(db, ws)
    xmax = int((await trials_db.ingest_snapshot(db, ws)).split(":")[1])
    boundary = 10 ** len(str(xmax))  # the next power of ten: its text sorts before the xids below it
    late = _runs(ws, 10, 6)
    await insert_runs(late)
    async with db.acquire() as conn:
        await conn.execute("SET session_replication_role = replica")  # the trigger would stamp its own xid
        for i, run in enumerate(late):
            await conn.execute("UPDATE backtest_runs SET kb_xid = $3::text::xid8 WHERE workspace_id = $1 AND id = $2",
                               ws, run["id"], str(boundary - 3 + i))
        await conn.execute("RESET session_replication_role")
    after = await ingest(db, ws, batch_size=2)  # three pages, keyset on (kb_xid, id)
    assert (after.mode, after.inserted) == ("incremental", 6)
    assert await db.fetchval("SELECT count(*) FROM kb_trials WHERE workspace_id = $1", ws) == 8


async def test_a_full_pass_on_request_and_after_since(db, make_workspace, insert_runs):
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 8))
    assert (await ingest(db, ws)).mode == "full"  # never ingested: everything
    assert (await ingest(db, ws)).scanned == 0
    full = await ingest(db, ws, full=True)
    assert (full.mode, full.scanned, full.skipped) == ("full", 8, 8)
    await ingest(db, ws, since=runs_time(3))  # a partial pass does not move the snapshot
    await db.execute("UPDATE backtest_runs SET summary = jsonb_set(summary, '{sharpe}', '2.5') WHERE workspace_id = $1"
                     " AND params->>'fast' = '0'", ws)
    changed = await ingest(db, ws)
    assert (changed.mode, changed.scanned, changed.updated) == ("incremental", 2, 2)


def runs_time(i: int) -> object:
    return run_row(uuid.uuid4(), i)["created_at"]


@pytest.fixture
def held_check(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The walk-forward check waits for this event before it computes (set: it runs at once)."""
    go = threading.Event()
    go.set()
    compute = evaluate_module.evaluate_matrix

    def held(matrix):
        go.wait()
        return compute(matrix)

    monkeypatch.setattr(evaluate_module, "evaluate_matrix", held)
    return go


async def test_a_server_answers_with_the_last_check_while_the_new_one_runs(db, make_workspace, insert_runs,
                                                                           held_check):
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 20))
    await ingest(db, ws)
    cache = TrialCache()
    query = RecommendQuery(ws, "s", tags=("uptrend",), top_k=5)
    first = (await recommend(db, query, cache)).to_dict()["walk_forward"]
    assert first["stale"] is False
    await insert_runs(_runs(ws, 100, 4))
    await ingest(db, ws)
    held_check.clear()  # the new revision's check is held before it computes
    waiting = (await recommend(db, query, cache, wait_for_check=False)).to_dict()
    assert waiting["walk_forward"]["stale"] is True and waiting["walk_forward"]["kb_revision"] == first["kb_revision"]
    assert waiting["considered"] == 24  # the answer itself is of the new revision
    held_check.set()
    fresh = (await asyncio.wait_for(recommend(db, query, cache), 60)).to_dict()["walk_forward"]
    assert fresh["stale"] is False and fresh["kb_revision"] > first["kb_revision"]
    stored = await trials_db.load_walkforward(db, ws, "s", Scope().key())
    assert stored is not None and stored[0] == fresh["kb_revision"]


async def test_a_check_stored_by_an_earlier_version_of_the_rules_is_computed_again(db, make_workspace, insert_runs):
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 20))
    await ingest(db, ws)
    query = RecommendQuery(ws, "s", tags=("uptrend",), top_k=5)
    await recommend(db, query, TrialCache())
    revision, model, _ = await trials_db.load_walkforward(db, ws, "s", Scope().key())
    older = orjson.loads(model)
    del older["method"]  # as the rules before versioned checks stored it
    older["decisions"] = []  # and a marker this test can see
    await db.execute("UPDATE kb_walkforward SET model = $2::jsonb WHERE workspace_id = $1",
                     ws, orjson.dumps(older).decode())
    await recommend(db, query, TrialCache())  # a new process: nothing in memory
    again = await trials_db.load_walkforward(db, ws, "s", Scope().key())
    assert again[0] == revision and orjson.loads(again[1]) == orjson.loads(model)  # computed again, stored
