"""backfill-candidacy through the real command, against PostgreSQL."""

from __future__ import annotations

import uuid

import asyncpg
import orjson
import pytest

from app.db import Database
from app.db.ledger import acquire_lock, release_lock
from app.errors import BackfillLocked
from app.services.kb.backfill.candidacy import CandidacyOptions, backfill_candidacy
from app.services.kb.backfill.counters import Counters
from app.services.kb.runs.scan import Hooks, ScanOptions
from tests.factories import run_row

GOOD = {"trades": 40, "sharpe": 1.2, "max_drawdown_pct": -12.0}


def reason_rows(ws: uuid.UUID) -> dict[str, dict]:
    """One run per gate outcome (and per row-level problem)."""
    return {
        "passed_all_gates": run_row(ws, 0),
        "unknown_experiment_type": run_row(ws, 1, experiment_type="legacy_grid"),
        "manual_experiment_excluded": run_row(ws, 2, experiment_type="manual"),
        "insufficient_oos_trades": run_row(ws, 3, summary={**GOOD, "trades": 2}),
        "dd_too_high": run_row(ws, 4, summary={**GOOD, "max_drawdown_pct": 40}),
        "sharpe_too_low": run_row(ws, 5, summary={**GOOD, "sharpe": -0.3}),
        "invalid_summary": run_row(ws, 6, summary='"not an object"'),
        "invalid_metrics": run_row(ws, 7, summary={**GOOD, "sharpe": "NaN"}),
    }


async def statuses(db: Database, ws: uuid.UUID) -> dict[uuid.UUID, str]:
    rows = await db.fetch("SELECT id, kb_status FROM backtest_runs WHERE workspace_id = $1", ws)
    return {r["id"]: r["kb_status"] for r in rows}


async def test_report_layout_and_every_reason(cli, db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = reason_rows(ws)
    await insert_runs(list(rows.values()))
    code, out, err = await cli("backfill-candidacy", "--workspace-id", ws, "--since", "2025-01-01", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "=" * 50 and lines[1] == "BACKFILL CANDIDACY REPORT" and lines[2] == "=" * 50
    labels = [ln.split(":")[0] for ln in lines if ":" in ln and not ln.startswith(" ")]
    assert labels[:8] == ["Workspace", "Since", "Limit", "Dry Run", "Total Scanned", "Eligible",
                          "Ineligible", "Updated"]
    assert f"Workspace:      {ws}" in lines
    assert "Since:          2025-01-01" in lines
    assert "Limit:          1000" in lines
    assert "Dry Run:        True" in lines
    assert "Total Scanned:  8" in lines
    assert "Eligible:       1" in lines
    assert "Ineligible:     7" in lines
    assert "Updated:        0 (dry run)" in lines
    assert "Rejection Reasons:" in lines
    for reason, row in rows.items():
        if reason != "passed_all_gates":
            assert any(ln.strip().startswith(reason + ":") for ln in lines), reason
            assert str(row["id"]) in out  # example ids per reason
    assert set((await statuses(db, ws)).values()) == {"excluded"}


async def test_real_run_updates_with_history_and_ledger(cli, db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = reason_rows(ws)
    await insert_runs(list(rows.values()))
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--json")
    assert code == 0
    report = orjson.loads(out)
    assert report["updated"] == 1 and report["passed"] == 1 and report["total_scanned"] == 8
    assert report["reasons"]["dd_too_high"] == 1
    run = await db.fetchrow("SELECT * FROM backtest_runs WHERE id = $1", rows["passed_all_gates"]["id"])
    assert run["kb_status"] == "candidate"
    assert run["kb_status_changed_by"] == "backfill"
    assert run["auto_candidate_gate"] == "passed_all_gates"
    assert run["kb_status_changed_at"] is not None
    history = await db.fetch("SELECT * FROM kb_status_history WHERE workspace_id = $1", ws)
    assert len(history) == 1
    assert (history[0]["from_status"], history[0]["to_status"], history[0]["actor"]) == (
        "excluded", "candidate", "backfill")
    assert str(history[0]["backfill_run_id"]) == report["backfill_run_id"]
    ledger = await db.fetchrow("SELECT * FROM kb_backfill_runs WHERE id = $1",
                               uuid.UUID(report["backfill_run_id"]))
    assert ledger["status"] == "completed"
    assert orjson.loads(ledger["counts"])["updated"] == 1


@pytest.mark.parametrize("eligible", [0, 1, 99, 100, 101, 1000])
async def test_batch_boundaries_and_dry_run_parity(db, make_workspace, insert_runs, eligible) -> None:
    ws = await make_workspace()
    rows = [run_row(ws, i) for i in range(eligible)]
    rows += [run_row(ws, eligible + i, summary={**GOOD, "trades": 1}) for i in range(37)]
    await insert_runs(rows)
    opts = CandidacyOptions(workspace_id=ws, limit=5000)
    commits: list[int] = []
    dry = await backfill_candidacy(db, CandidacyOptions(workspace_id=ws, limit=5000, dry_run=True))
    real = await backfill_candidacy(db, opts, Hooks(after_batch=commits.append))
    assert dry.counters.passed == real.counters.passed == eligible
    assert dry.counters.reasons == real.counters.reasons
    assert dry.counters.updated == 0
    assert real.counters.updated == eligible
    assert await db.fetchval("SELECT count(*) FROM kb_status_history WHERE workspace_id = $1", ws) == eligible
    # ceil(eligible / 100) write batches, plus one checkpoint for a page ending in rejections
    assert len(commits) >= -(-eligible // 100)


async def test_since_limit_and_workspace_isolation(cli, db, make_workspace, insert_runs) -> None:
    ws, other = await make_workspace(), await make_workspace("other")
    await insert_runs([run_row(ws, i) for i in range(30)] + [run_row(other, i) for i in range(10)])
    # runs are one minute apart from 2025-03-01T00:00Z; --since keeps the last 10
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--since", "2025-03-01T00:20:00",
                             "--json")
    assert code == 0 and orjson.loads(out)["updated"] == 10
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--limit", "7", "--json")
    report = orjson.loads(out)
    assert report["total_scanned"] == 7 and report["status"] == "limit_reached"
    # --resume walks on past the limited run instead of rescanning the first rows
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--limit", "7", "--resume", "--json")
    assert code == 0 and orjson.loads(out)["backfill_run_id"] == report["backfill_run_id"]
    assert orjson.loads(out)["total_scanned"] == 7
    assert list((await statuses(db, other)).values()).count("candidate") == 0
    assert list((await statuses(db, ws)).values()).count("candidate") == 24


async def test_guard_counts_rows_changed_between_read_and_write(db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = [run_row(ws, i) for i in range(10)]
    await insert_runs(rows)
    from app.services.kb.backfill.candidacy import CandidacyJob

    job = CandidacyJob(CandidacyOptions(workspace_id=ws))
    original = job.write

    async def write_after_meddling(conn, passed, run_id):
        await db.execute("UPDATE backtest_runs SET kb_status = 'promoted' WHERE id = $1", rows[3]["id"])
        return await original(conn, passed, run_id)

    job.write = write_after_meddling  # type: ignore[method-assign]
    from app.services.kb.backfill.engine import EngineOptions, run_backfill

    result = await run_backfill(db, job, EngineOptions(ScanOptions(workspace_id=ws, limit=100)))
    assert result.counters.changed_concurrently == 1 and result.counters.updated == 9
    assert (await statuses(db, ws))[rows[3]["id"]] == "promoted"
    assert await db.fetchval("SELECT count(*) FROM kb_status_history WHERE run_id = $1", rows[3]["id"]) == 0


async def test_resume_after_crash_between_batches(db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = [run_row(ws, i, summary=GOOD if i % 3 else {**GOOD, "trades": 0}) for i in range(1000)]
    await insert_runs(rows)

    class Crash(Exception):
        pass

    def crash(batch: int) -> None:
        if batch == 3:
            raise Crash

    with pytest.raises(Crash):
        await backfill_candidacy(db, CandidacyOptions(workspace_id=ws, limit=5000), Hooks(after_batch=crash))
    committed = await db.fetchval("SELECT count(*) FROM kb_status_history WHERE workspace_id = $1", ws)
    assert committed == 300
    result = await backfill_candidacy(db, CandidacyOptions(workspace_id=ws, limit=5000, resume=True))
    assert result.status == "completed"
    assert result.totals.scanned == 1000
    assert result.totals.updated == 666
    assert await db.fetchval("SELECT count(*) FROM kb_status_history WHERE workspace_id = $1", ws) == 666
    assert await db.fetchval(
        "SELECT count(DISTINCT run_id) FROM kb_status_history WHERE workspace_id = $1", ws) == 666
    eligible = {r["id"] for i, r in enumerate(rows) if i % 3}
    got = await statuses(db, ws)
    assert {k for k, v in got.items() if v == "candidate"} == eligible


async def test_connection_lost_at_the_checkpoint_is_retried_without_double_counting(
        db, make_workspace, insert_runs, monkeypatch) -> None:
    """The connection drops after a batch's rows were written but before its checkpoint:
    the transaction rolls back, the retry writes the batch again, and the ledger counts
    each row once."""
    ws = await make_workspace()
    await insert_runs([run_row(ws, i) for i in range(150)])  # batches of 100 and 50; the second one's
    # checkpoint is the last word on the counts
    real_to_json = Counters.to_json
    calls = 0

    def flaky_to_json(self: Counters) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return real_to_json(self)

    monkeypatch.setattr(Counters, "to_json", flaky_to_json)
    result = await backfill_candidacy(db, CandidacyOptions(workspace_id=ws, limit=1000, batch_size=100))
    assert calls >= 3 and result.status == "completed" and result.counters.updated == 150
    counts = orjson.loads(await db.fetchval("SELECT counts FROM kb_backfill_runs WHERE workspace_id = $1", ws))
    assert counts["updated"] == 150 and counts["scanned"] == 150
    assert await db.fetchval("SELECT count(*) FROM kb_status_history WHERE workspace_id = $1", ws) == 150


async def test_dry_run_is_never_resumed_by_real_run(cli, db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    await insert_runs([run_row(ws, i) for i in range(20)])
    code, _, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--dry-run", "--limit", "5")
    assert code == 0
    code, _, err = await cli("backfill-candidacy", "--workspace-id", ws, "--resume")
    assert code == 2 and "no interrupted backfill-candidacy run" in err
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--dry-run", "--limit", "5", "--resume")
    assert code == 0 and "Total Scanned:  5" in out


async def test_second_backfill_is_refused_while_one_holds_the_lock(cli, db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    await insert_runs([run_row(ws, 0)])
    async with db.acquire() as conn:
        await acquire_lock(conn, "candidacy", ws)
        code, out, err = await cli("backfill-candidacy", "--workspace-id", ws)
        assert code == 1 and "another backfill-candidacy is running" in err and out == ""
        with pytest.raises(BackfillLocked):
            await backfill_candidacy(db, CandidacyOptions(workspace_id=ws))
        # another workspace is not blocked
        other = await make_workspace("other")
        assert (await backfill_candidacy(db, CandidacyOptions(workspace_id=other))).status == "completed"
        await release_lock(conn, "candidacy", ws)
    assert (await statuses(db, ws)) and set((await statuses(db, ws)).values()) == {"excluded"}


async def test_dead_run_is_recognised_and_resumable(db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    await insert_runs([run_row(ws, i) for i in range(10)])
    first = await backfill_candidacy(db, CandidacyOptions(workspace_id=ws, limit=4))
    # pretend its process died mid-run: the ledger still says running, nobody holds the lock
    await db.execute("UPDATE kb_backfill_runs SET status = 'running' WHERE id = $1", first.run_id)
    result = await backfill_candidacy(db, CandidacyOptions(workspace_id=ws, limit=100, resume=True))
    assert result.run_id == first.run_id and result.interrupted_runs_found == [first.run_id]
    assert result.totals.updated == 10


async def test_explain(cli, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = reason_rows(ws)
    await insert_runs(list(rows.values()))
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--explain", rows["dd_too_high"]["id"])
    assert code == 0
    assert "max_drawdown" in out and "value=0.4" in out and "threshold=0.25" in out and "FAIL" in out
    assert "Decision: ineligible (dd_too_high)" in out
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--explain",
                             rows["passed_all_gates"]["id"], "--min-sharpe", "2")
    assert "Decision: ineligible (sharpe_too_low)" in out
    code, _, err = await cli("backfill-candidacy", "--workspace-id", ws, "--explain", uuid.uuid4())
    assert code == 2 and "is not in workspace" in err


async def test_threshold_overrides_and_require_regime(cli, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    await insert_runs([run_row(ws, 0), run_row(ws, 1, regime_oos={"regime_tags": []})])
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--dry-run", "--json",
                             "--require-regime")
    assert orjson.loads(out)["reasons"] == {"missing_regime_oos": 1}
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--dry-run", "--json",
                             "--min-trades", "50")
    assert orjson.loads(out)["reasons"] == {"insufficient_oos_trades": 2}
    code, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--dry-run", "--json",
                             "--max-drawdown", "0.1")
    assert orjson.loads(out)["reasons"] == {"dd_too_high": 2}


async def test_undo_reverts_exactly_what_the_backfill_changed(cli, db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    rows = [run_row(ws, i) for i in range(5)]
    await insert_runs(rows)
    _, out, _ = await cli("backfill-candidacy", "--workspace-id", ws, "--json")
    run_id = orjson.loads(out)["backfill_run_id"]
    # one row is promoted by a person after the backfill: undo must leave it alone
    await db.execute("UPDATE backtest_runs SET kb_status = 'promoted' WHERE id = $1", rows[0]["id"])
    await db.execute(
        "INSERT INTO kb_status_history (run_id, workspace_id, from_status, to_status, actor)"
        " VALUES ($1, $2, 'candidate', 'promoted', 'alice')", rows[0]["id"], ws)
    code, out, _ = await cli("backfill-undo", run_id)
    assert code == 0 and "reverted 4" in out and "left alone 1" in out and str(rows[0]["id"]) in out
    got = await statuses(db, ws)
    assert got[rows[0]["id"]] == "promoted"
    assert [got[r["id"]] for r in rows[1:]] == ["excluded"] * 4
    undo_rows = await db.fetch("SELECT * FROM kb_status_history WHERE actor = 'backfill-undo'")
    assert len(undo_rows) == 4
    # undo twice changes nothing more
    code, out, _ = await cli("backfill-undo", run_id)
    assert "reverted 0" in out


async def test_bad_input(cli, make_workspace) -> None:
    ws = await make_workspace()
    for argv, needle in [
        (["--workspace-id", "nope"], "not a UUID"),
        (["--workspace-id", ws, "--since", "yesterday"], "not a date"),
        (["--workspace-id", ws, "--limit", "0"], "between 1"),
        (["--workspace-id", ws, "--limit", "-5"], "between 1"),
        (["--workspace-id", ws, "--batch-size", "x"], "whole number"),
        (["--workspace-id", ws, "--experiment-type", "grid"], "unknown experiment type"),
        (["--workspace-id", ws, "--max-drawdown", "25"], "fraction"),
        ([], "which workspace?"),
    ]:
        code, out, err = await cli("backfill-candidacy", *argv)
        assert code == 2, argv
        assert needle in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 or "usage" in err
    code, _, err = await cli("backfill-candidacy", "--workspace-id", uuid.uuid4())
    assert code == 2 and "does not exist" in err


async def test_environment_twins(cli, make_workspace, insert_runs, monkeypatch) -> None:
    ws = await make_workspace()
    await insert_runs([run_row(ws, i) for i in range(3)])
    monkeypatch.setenv("KB_WORKSPACE_ID", str(ws))
    monkeypatch.setenv("KB_DRY_RUN", "1")
    monkeypatch.setenv("KB_LIMIT", "2")
    code, out, _ = await cli("backfill-candidacy")
    assert code == 0 and "Dry Run:        True" in out and "Total Scanned:  2" in out


async def test_limit_reached_says_what_remains_and_the_command_that_continues(cli, db, make_workspace,
                                                                              insert_runs) -> None:
    ws = await make_workspace()
    await insert_runs([run_row(ws, i) for i in range(8)])
    code, out, err = await cli("backfill-candidacy", "--workspace-id", ws, "--limit", "3", "--batch-size", "2")
    assert code == 0, err
    assert "Status:" in out and "limit_reached" in out and "5 run(s) remain" in out
    again = next(ln for ln in out.splitlines() if ln.startswith("Continue with: "))[len("Continue with: "):]
    assert again == f"kb backfill-candidacy --workspace-id {ws} --limit 3 --batch-size 2 --resume"
    code, out, err = await cli(*again.split()[1:-5], "--limit", "all", "--resume", "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["status"] == "completed" and report["remaining"] is None and report["limit"] == "all"
    assert report["run_totals"]["scanned"] == 8 and report["continue_with"] is None
    assert set((await statuses(db, ws)).values()) == {"candidate"}


async def test_limit_all_from_the_environment(cli, db, make_workspace, insert_runs, monkeypatch) -> None:
    ws = await make_workspace()
    await insert_runs([run_row(ws, i) for i in range(4)])
    monkeypatch.setenv("KB_LIMIT", "all")
    code, out, err = await cli("backfill-candidacy", "--workspace-id", ws, "--json")
    assert code == 0, err
    assert orjson.loads(out)["total_scanned"] == 4
    monkeypatch.setenv("KB_LIMIT", "everything")
    code, _, err = await cli("backfill-candidacy", "--workspace-id", ws)
    assert code == 2 and "KB_LIMIT" in err
