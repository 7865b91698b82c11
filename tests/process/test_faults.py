"""Process-level faults against real `kb` processes: bad connection settings, parallel
upgrades, SIGKILL and SIGINT mid-backfill, connections terminated by the server, a
network outage, concurrent edits by another session, a competing backfill, and a schema
upgrade while a backfill writes. After each, the database must end as an uninterrupted
run leaves it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest

from app.db import with_database
from app.db.connector import application_name
from app.db.migrate import Migration, load_migrations, upgrade
from tests.process.faultkit import (
    BATCH,
    LostCommitProxy,
    OutageProxy,
    Workload,
    assert_same_as_uninterrupted,
    blocking_pids,
    candidacy_workload,
    holds,
    kb_argv,
    ohlcv_csv,
    poll,
    regime_workload,
    run_kb,
    start_kb,
    terminate_backends,
    wait_blocked_by,
    wait_for_progress,
    wait_on_row_lock,
    waits_for,
)


@pytest.mark.parametrize("url", [
    "postgresql://kb:secret-pw@no-such-host.invalid:5432/kb",
    "postgresql://kb:secret-pw@127.0.0.1:1/kb",
])
async def test_unreachable_database_is_one_line_exit_1(url: str) -> None:
    code, _, err = await run_kb(url, "db", "status")
    assert code == 1
    assert err.count("\n") == 1 and "cannot connect to the database" in err
    assert "secret-pw" not in err and "Traceback" not in err


async def test_parallel_db_upgrade_from_empty(server_dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    await admin.execute('DROP DATABASE IF EXISTS "kb_test_parallel_cli"')
    await admin.execute('CREATE DATABASE "kb_test_parallel_cli"')
    try:
        url = with_database(server_dsn, "kb_test_parallel_cli")
        procs = await asyncio.gather(*(run_kb(url, "db", "upgrade") for _ in range(2)))
        assert [p[0] for p in procs] == [0, 0], [p[2] for p in procs]
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(load_migrations())
        await conn.close()
    finally:
        await admin.execute('DROP DATABASE IF EXISTS "kb_test_parallel_cli" WITH (FORCE)')
        await admin.close()



KINDS = ["candidacy", "regime"]


@pytest.fixture
async def workload(request, db, make_workspace, insert_runs, tmp_path) -> tuple[object, Workload]:
    ws = await make_workspace()
    if request.param == "candidacy":
        work = candidacy_workload(ws)
    else:
        work = regime_workload(ws, ohlcv_csv(tmp_path / "aapl_1h.csv"))
    await insert_runs(work.rows)
    return ws, work


def whole_batches(done: int, work: Workload) -> bool:
    return done % BATCH == 0 or done == len(work.expected)


async def ledger_status(db, ws) -> list[str]:
    return [r["status"] for r in await db.fetch(
        "SELECT status FROM kb_backfill_runs WHERE workspace_id = $1 AND NOT dry_run", ws)]


@pytest.mark.slow
@pytest.mark.parametrize("workload", KINDS, indirect=True)
@pytest.mark.parametrize("seed", [11, 22, 33])
async def test_sigkill_at_random_points_then_resume(db, db_url, workload, seed) -> None:
    """Two SIGKILLs at random moments (a random row count, then a random delay that
    usually lands mid-batch); after --resume the state equals an uninterrupted run."""
    ws, work = workload
    rng = random.Random(seed)
    resume: tuple[str, ...] = ()
    for _ in range(2):
        done = await work.done(db, ws)
        proc = await start_kb(db_url, *kb_argv(work, ws, *resume))
        await wait_for_progress(db, work, ws, proc, done + rng.randint(1, 3000))
        await asyncio.sleep(rng.uniform(0, 0.05))
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert whole_batches(await work.done(db, ws), work)  # only whole batches are ever committed
        resume = ("--resume",)
        if (await ledger_status(db, ws)) == ["completed"]:
            break
    if (await ledger_status(db, ws)) != ["completed"]:
        code, _, err = await run_kb(db_url, *kb_argv(work, ws, "--resume"))
        assert code == 0, err
    await assert_same_as_uninterrupted(db, work, ws)


@pytest.mark.slow
@pytest.mark.parametrize("workload", KINDS, indirect=True)
async def test_sigint_stops_after_the_batch_then_resume(db, db_url, workload) -> None:
    ws, work = workload
    proc = await start_kb(db_url, *kb_argv(work, ws))
    await wait_for_progress(db, work, ws, proc, 500)
    proc.send_signal(signal.SIGINT)
    _, err = await proc.communicate()
    assert proc.returncode == 130, err
    assert "stopping after the current batch" in err.decode() and "Traceback" not in err.decode()
    assert await ledger_status(db, ws) == ["interrupted"]
    done = await work.done(db, ws)
    assert 500 <= done < len(work.expected) and whole_batches(done, work)
    code, out, err2 = await run_kb(db_url, *kb_argv(work, ws, "--resume"))
    assert code == 0, err2
    await assert_same_as_uninterrupted(db, work, ws)


@pytest.mark.slow
@pytest.mark.parametrize("workload", KINDS, indirect=True)
async def test_server_terminating_connections_is_retried(db, db_url, workload) -> None:
    """pg_terminate_backend on every connection of the process, twice: the writer
    retries, the lock is taken again, and the run completes in one invocation."""
    ws, work = workload
    proc = await start_kb(db_url, *kb_argv(work, ws))
    for at_least in (500, 2000):
        await wait_for_progress(db, work, ws, proc, at_least)
        if not await terminate_backends(db, proc.pid):
            _, err = await proc.communicate()
            raise AssertionError(f"the process ended early ({proc.returncode}): {err.decode()}")
    _, err = await proc.communicate()
    assert proc.returncode == 0, err
    await assert_same_as_uninterrupted(db, work, ws)
    assert await db.fetchval("SELECT invocations FROM kb_backfill_runs WHERE workspace_id = $1", ws) == 1


@pytest.mark.slow
@pytest.mark.parametrize("workload", KINDS, indirect=True)
async def test_outage_fails_with_exit_1_and_resume_finishes(db, db_url, server_dsn, workload) -> None:
    """The server terminates the connections and the network then refuses new ones:
    bounded retries with backoff, one error line, exit 1; --resume afterwards finishes."""
    ws, work = workload
    async with OutageProxy(server_dsn) as proxy:
        url = proxy.url(urlsplit(db_url).path.lstrip("/"))
        proc = await start_kb(url, *kb_argv(work, ws))
        await wait_for_progress(db, work, ws, proc, 500)
        proxy.outage()
        await terminate_backends(db, proc.pid)
        started = asyncio.get_running_loop().time()
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 60)
        waited = asyncio.get_running_loop().time() - started
        err = err_bytes.decode()
        assert proc.returncode == 1, err
        assert err.count("kb: error:") == 1 and "--resume" in err.splitlines()[-1] and "Traceback" not in err
        assert 1.0 < waited < 30  # it backed off and retried, and gave up in bounded time
        done = await work.done(db, ws)
        assert done < len(work.expected) and whole_batches(done, work)
        proxy.restore()
        code, _, err = await run_kb(url, *kb_argv(work, ws, "--resume"))
        assert code == 0, err
    await assert_same_as_uninterrupted(db, work, ws)


@pytest.mark.slow
@pytest.mark.parametrize("workload", KINDS, indirect=True)
async def test_concurrent_edits_are_kept_and_counted(db, db_url, workload) -> None:
    """Another session locks 20 target rows the backfill has already read, changes them
    while the backfill waits on them, and commits: none is overwritten, each is counted
    as changed_concurrently."""
    ws, work = workload
    ordered = [r["id"] for r in work.rows if r["id"] in work.expected]
    targets = ordered[10:410:20]  # all inside the first page the backfill reads
    async with db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1 FROM backtest_runs WHERE id = ANY($1) FOR UPDATE", targets)
        proc = await start_kb(db_url, *kb_argv(work, ws))
        await wait_on_row_lock(db, proc, "the backfill")
        if work.kind == "candidacy":
            await conn.execute("UPDATE backtest_runs SET kb_status = CASE WHEN id = ANY($2) THEN 'promoted' "
                               "ELSE 'rejected' END, kb_status_changed_by = 'analyst' WHERE id = ANY($1)",
                               targets, targets[::2])
        else:
            await conn.execute("UPDATE backtest_runs SET regime_oos = '{\"computation_source\": \"analyst\"}' "
                               "WHERE id = ANY($1)", targets)
        await tx.commit()
    _, err = await proc.communicate()
    assert proc.returncode == 0, err
    counts = await db.fetchrow("SELECT counts::json->>'updated' AS updated, "
                               "counts::json->>'changed_concurrently' AS changed FROM kb_backfill_runs "
                               "WHERE workspace_id = $1", ws)
    assert int(counts["changed"]) == len(targets) == 20
    assert int(counts["updated"]) == len(work.expected) - 20
    kept = await db.fetch("SELECT id, kb_status, kb_status_changed_by, regime_oos::text AS regime "
                          "FROM backtest_runs WHERE id = ANY($1)", targets)
    if work.kind == "candidacy":
        assert {r["id"]: r["kb_status"] for r in kept} == {
            t: "promoted" if i % 2 == 0 else "rejected" for i, t in enumerate(targets)}
        assert await db.fetchval("SELECT count(*) FROM kb_status_history WHERE run_id = ANY($1)", targets) == 0
    else:
        assert all("analyst" in r["regime"] for r in kept)
    changed = {r["id"] for r in await db.fetch(work.changed_sql(), ws)}
    expected = work.expected - set(targets) if work.kind == "candidacy" else work.expected
    assert changed == expected


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["candidacy"], indirect=True)
async def test_competing_backfills(db, db_url, workload, make_workspace, insert_runs) -> None:
    """Same kind and workspace: the second refuses with a clear message. Another
    workspace runs in parallel."""
    ws, work = workload
    other = await make_workspace("other")
    other_work = candidacy_workload(other, 3000)
    await insert_runs(other_work.rows)
    # Hold one row the first backfill will write, so it is surely still running (and
    # holding its lock) while the other two start.
    held = [r["id"] for r in work.rows if r["id"] in work.expected][500]  # rows are in created_at order
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM backtest_runs WHERE id = $1 FOR UPDATE", held)
        first = await start_kb(db_url, *kb_argv(work, ws))
        await wait_for_progress(db, work, ws, first, 1)
        second, parallel = await asyncio.gather(run_kb(db_url, *kb_argv(work, ws)),
                                                run_kb(db_url, *kb_argv(other_work, other)))
        assert first.returncode is None
    assert second[0] == 1 and second[2].count("\n") == 1
    assert f"another backfill-candidacy is running on workspace {ws} (process {first.pid})" in second[2]
    assert parallel[0] == 0, parallel[2]
    _, err = await first.communicate()
    assert first.returncode == 0, err
    await assert_same_as_uninterrupted(db, work, ws)
    await assert_same_as_uninterrupted(db, other_work, other)


@pytest.mark.slow
@pytest.mark.parametrize("workload", KINDS, indirect=True)
async def test_schema_upgrade_during_a_backfill(db, db_url, workload) -> None:
    """`kb db upgrade` while a backfill writes, and a real schema change (a new column
    and index on backtest_runs) applied mid-run: the DDL waits for the batch in flight,
    the next batch waits for the DDL, and the backfill finishes with the same result.

    Nothing is raced; every step is held by a lock and observed in pg_locks:
    1. another session locks rows of the 11th batch: ten batches commit, the 11th
       blocks on them inside its open transaction (holding its table lock);
    2. `kb db upgrade` runs to the end meanwhile;
    3. a third session holds schema_migrations in SHARE mode, so the migration, once
       its DDL is done, waits (with its ACCESS EXCLUSIVE lock) before it can record itself;
    4. the migration's ALTER TABLE queues behind the row-lock session and the blocked batch;
    5. the row locks go: the batch commits, the DDL runs, the backfill waits on it;
    6. schema_migrations goes: the migration commits and the backfill finishes.
    The lock graph stays acyclic: the row-lock and schema_migrations sessions wait for
    nothing, the batch waits only for the row locks, the DDL for both of those."""
    ws, work = workload
    ordered = [r["id"] for r in work.rows if r["id"] in work.expected]  # rows are in created_at order
    first_blocked = 10  # the batch (0-based) that holds the locked rows
    held = ordered[first_blocked * BATCH:first_blocked * BATCH + 10]
    extra = Migration(9001, "fault_test_column", "ALTER TABLE backtest_runs ADD COLUMN fault_note text;\n"
                                                 "CREATE INDEX backtest_runs_fault_note ON backtest_runs (fault_note);")
    proc: asyncio.subprocess.Process | None = None
    ddl: asyncio.Task[list[Migration]] | None = None
    async with db.acquire() as rows_conn, db.acquire() as registry_conn, db.acquire() as ddl_conn:
        rows_pid, registry_pid, ddl_pid = (c.get_server_pid() for c in (rows_conn, registry_conn, ddl_conn))
        try:
            # 1. The 11th batch blocks on the held rows, mid-transaction.
            rows_tx = rows_conn.transaction()
            await rows_tx.start()
            await rows_conn.execute("SELECT 1 FROM backtest_runs WHERE id = ANY($1) FOR UPDATE", held)
            proc = await start_kb(db_url, *kb_argv(work, ws))
            batch_pid = await wait_blocked_by(db, proc, rows_pid, "the backfill reaching the locked rows")
            assert await work.done(db, ws) == first_blocked * BATCH  # mid-run: ten batches, no more
            assert "RowExclusiveLock" in await holds(db, batch_pid, "backtest_runs")  # the batch is in flight

            # 2. `kb db upgrade` while the backfill runs (it has nothing to apply, and waits for nothing).
            code, _, err = await run_kb(db_url, "db", "upgrade")
            assert code == 0, err
            assert rows_pid in await blocking_pids(db, batch_pid) and proc.returncode is None

            # 3. + 4. The migration starts; its ALTER TABLE waits for the batch in flight.
            registry_tx = registry_conn.transaction()
            await registry_tx.start()
            await registry_conn.execute("LOCK TABLE schema_migrations IN SHARE MODE")
            ddl = asyncio.create_task(upgrade(ddl_conn, [*load_migrations(), extra]))
            await poll(db, "SELECT $2 = ANY(pg_blocking_pids($1))", ddl_pid, batch_pid,
                       what="the DDL queueing behind the batch in flight", proc=proc)
            assert await waits_for(db, ddl_pid) == [("backtest_runs", "AccessExclusiveLock")]
            assert {rows_pid, batch_pid} <= await blocking_pids(db, ddl_pid)

            # 5. The row locks go: the batch commits, then the DDL runs, then the backfill waits for it.
            await rows_tx.rollback()
            await poll(db, "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted "
                           "AND relation = 'schema_migrations'::regclass)", ddl_pid,
                       what="the DDL done, its migration waiting to record itself", proc=proc)
            assert "AccessExclusiveLock" in await holds(db, ddl_pid, "backtest_runs")
            assert await blocking_pids(db, ddl_pid) == {registry_pid}
            await wait_blocked_by(db, proc, ddl_pid, "the backfill waiting for the DDL", table="backtest_runs")
            assert proc.returncode is None  # the schema changes under a running backfill
            assert not ddl.done()

            # 6. The migration commits; the backfill goes on with the new schema.
            await registry_tx.rollback()
            applied = await asyncio.wait_for(ddl, 60)
            assert [m.version for m in applied] == [9001]
            _, err_bytes = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, err_bytes
            # Each wait was a plain lock wait: no deadlock was detected and nothing was retried.
            assert "app.db.retry" not in err_bytes.decode(), err_bytes
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            if ddl is not None and not ddl.done():
                ddl.cancel()
                with contextlib.suppress(BaseException):
                    await ddl
    assert await db.fetchval("SELECT to_regclass('backtest_runs_fault_note') IS NOT NULL")
    await assert_same_as_uninterrupted(db, work, ws)


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["candidacy"], indirect=True)
async def test_takeover_leaves_the_new_owner_in_charge(db, db_url, workload) -> None:
    """Process A waits on rows another session holds; its lock connection dies and a
    `--resume` in process B takes the run over. When the rows are released, A may not
    commit its batch or write the ledger again; B finishes, and the ledger counts equal
    the history rows."""
    ws, work = workload
    ordered = [r["id"] for r in work.rows if r["id"] in work.expected]
    held = ordered[5:15]
    async with db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1 FROM backtest_runs WHERE id = ANY($1) FOR UPDATE", held)
        first = await start_kb(db_url, *kb_argv(work, ws))
        await wait_on_row_lock(db, first, "the first backfill")
        killed = await db.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(l.pid)) FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND a.application_name = $1",
            application_name(first.pid))
        assert killed == 1
        second = await start_kb(db_url, *kb_argv(work, ws, "--resume"))
        await wait_on_row_lock(db, second, "the second backfill")
        await tx.rollback()
    _, err_second = await asyncio.wait_for(second.communicate(), 120)
    _, err_first = await asyncio.wait_for(first.communicate(), 120)
    assert second.returncode == 0, err_second.decode()
    assert first.returncode == 1 and "taken over" in err_first.decode(), err_first.decode()
    await assert_same_as_uninterrupted(db, work, ws)


@pytest.mark.slow
@pytest.mark.parametrize("workload", KINDS, indirect=True)
async def test_lost_commit_acknowledgement_is_counted_from_the_database(db, db_url, server_dsn, workload) -> None:
    """The server commits a batch but the answer never arrives (the connection drops right
    after COMMIT): the retry finds the batch committed, and the report and ledger count
    it, so ledger counts equal the history rows."""
    ws, work = workload
    async with LostCommitProxy(server_dsn) as proxy:
        url = proxy.url(urlsplit(db_url).path.lstrip("/"))
        proc = await start_kb(url, *kb_argv(work, ws, "--json"))
        await wait_for_progress(db, work, ws, proc, 500)
        proxy.arm()
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proxy.dropped == 1
    assert proc.returncode == 0, err.decode()
    report = orjson.loads(out)
    assert report["updated"] == len(work.expected)
    await assert_same_as_uninterrupted(db, work, ws)
