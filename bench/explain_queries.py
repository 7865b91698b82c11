"""EXPLAIN (ANALYZE, BUFFERS) of the named queries on the hot paths, with parameters taken from
the data: the backfills' keyset pages, the ingest's pages and DSR pass, the recommend loads,
the `kb status` and dashboard counts. Prints each plan's top lines, then one summary table.

Reads run in read-only transactions. Writes are planned only (EXPLAIN, nothing executed)
unless BENCH_WRITES=analyze: then each runs under EXPLAIN ANALYZE in a transaction that is
rolled back: no row changes, though it takes row locks while it runs, leaves dead tuples and
advances sequences (kb_status_history ids).

BENCH_DB (kb_bench_scale) names the database on the server `database_url()` gives. The
runs workspace is the one with the most `backtest_runs` rows (BENCH_WORKSPACE overrides);
the KB queries use the (workspace, strategy) with the most `kb_trials` rows.
BENCH_TIMEOUT_S (120) bounds each statement; BENCH_PLAN_LINES (40) caps the lines printed per plan.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from _common import env_int, run

from app.db import Database, with_database
from app.db.connector import Conn
from app.db.embedded import database_url
from app.db.sql import q
from app.errors import DatabaseUnavailable
from app.far_time import FarTime
from app.services.kb.runs.scan import START_OF_TIME, ZERO_ID

DB_NAME = os.environ.get("BENCH_DB", "kb_bench_scale")
WRITES = os.environ.get("BENCH_WRITES", "plan")  # "plan" or "analyze"
TIMEOUT_S = env_int("BENCH_TIMEOUT_S", 120)
PLAN_LINES = env_int("BENCH_PLAN_LINES", 40)
LINE_CHARS = 220  # an `= ANY` of 1,000 ids prints as one line of 40 kB

BACKFILL_PAGE = 2000  # the backfill engine reads pages of max(2000, batch_size); batch_size is 1000
BACKFILL_BATCH = 1000  # rows per guarded write of a backfill
INGEST_PAGE = 1000  # the ingest's batch_size: one page read and written per transaction
RECENT_RUNS = 1000  # runs an incremental ingest touched: the DSR pass reads their windows
DETAIL_TRIALS = 20  # supporting trials an answer shows
DASHBOARD_WORKSPACES = 200  # the dashboard's chooser
DASHBOARD_POINTS = 4000  # app/services/kb/dashboard.py MAX_POINTS


@dataclass(frozen=True)
class Case:
    section: str
    label: str  # what is shown: the named query, with its variant
    query: str  # the name given to `q`
    args: tuple[Any, ...]
    write: bool = False
    analyze: bool = True  # False: EXPLAIN only (a read too large to run here)


@dataclass(frozen=True)
class Outcome:
    case: Case
    mode: str  # "analyze", "analyze, rolled back" or "plan only"
    lines: list[str]
    planning_ms: float | None
    execution_ms: float | None
    error: str | None = None


@dataclass(frozen=True)
class Context:
    """The workspaces picked and the parameters drawn from their rows."""

    runs_ws: uuid.UUID
    runs: int
    kb_ws: uuid.UUID | None
    strategy: str | None
    trials: int
    mid: datetime  # a keyset cursor halfway through the runs workspace's created_at range
    candidacy_ids: list[uuid.UUID]
    candidacy_source: str  # where the ids came from: a candidacy page, or the first runs when none is left
    regime_ids: list[uuid.UUID]
    symbol: str | None
    recent_ids: list[uuid.UUID]
    snapshot: str
    snapshot_source: str
    dsr_trial_ids: list[uuid.UUID]
    revision: int
    reset_revision: int
    detail_ids: list[uuid.UUID]


async def pick_context(conn: Conn) -> Context:
    forced = os.environ.get("BENCH_WORKSPACE")
    if forced:
        runs_ws = uuid.UUID(forced)
        runs = int(await conn.fetchval("SELECT count(*) FROM backtest_runs WHERE workspace_id = $1", runs_ws))
    else:
        top = await conn.fetchrow("SELECT workspace_id, count(*) AS n FROM backtest_runs GROUP BY 1 "
                                  "ORDER BY n DESC LIMIT 1")
        if top is None:
            raise SystemExit(f"{DB_NAME}: backtest_runs is empty; nothing to explain")
        runs_ws, runs = top["workspace_id"], int(top["n"])
    kb = await conn.fetchrow("SELECT workspace_id, strategy_name, count(*) AS n FROM kb_trials GROUP BY 1, 2 "
                             "ORDER BY n DESC LIMIT 1")
    kb_ws, strategy, trials = (None, None, 0) if kb is None else (kb["workspace_id"], kb["strategy_name"],
                                                                  int(kb["n"]))

    span = await conn.fetchrow("SELECT min(created_at) AS lo, max(created_at) AS hi FROM backtest_runs "
                               "WHERE workspace_id = $1", runs_ws)
    lo, hi = span["lo"], span["hi"]
    mid = START_OF_TIME if isinstance(lo, FarTime) or isinstance(hi, FarTime) else lo + (hi - lo) / 2

    start = (runs_ws, START_OF_TIME, ZERO_ID, BACKFILL_PAGE)
    candidacy_ids = [r["id"] for r in await conn.fetch(q("select_candidacy_page"), *start)]
    candidacy_source = "a candidacy page"
    if not candidacy_ids:  # every run was judged already: the first runs stand in for a page
        candidacy_source = "first runs, no excluded left"
        candidacy_ids = [r["id"] for r in await conn.fetch(
            "SELECT id FROM backtest_runs WHERE workspace_id = $1 AND run_kind = 'test_variant' "
            "ORDER BY created_at, id LIMIT $2", runs_ws, BACKFILL_PAGE)]
    regime_page = await conn.fetch(q("select_regime_page"), *start, None)
    regime_ids = [r["id"] for r in regime_page]
    symbol = next((s for r in regime_page if (s := _symbol(r["dataset_meta"]))), None)
    if symbol is None:
        symbol = await conn.fetchval("SELECT dataset_meta ->> 'symbol' FROM backtest_runs WHERE workspace_id = $1 "
                                     "AND dataset_meta ->> 'symbol' IS NOT NULL LIMIT 1", runs_ws)
    recent_ids = [r["id"] for r in await conn.fetch(
        "SELECT id FROM backtest_runs WHERE workspace_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
        runs_ws, RECENT_RUNS)]

    stored = await conn.fetchval(q("ingest_snapshot"), runs_ws)
    snapshot, source = ((str(stored), "kb_ingest_state") if stored is not None
                        else (str(await conn.fetchval(q("current_snapshot"))), "pg_current_snapshot()"))

    dsr_trial_ids = [r["id"] for r in await conn.fetch(
        "SELECT id FROM kb_trials WHERE workspace_id = $1 AND source_run_id = ANY($2::uuid[])", runs_ws, recent_ids)]
    if not dsr_trial_ids:
        dsr_trial_ids = [r["id"] for r in await conn.fetch(
            "SELECT id FROM kb_trials WHERE workspace_id = $1 LIMIT $2", runs_ws, RECENT_RUNS)]

    revision = reset = 0
    detail_ids: list[uuid.UUID] = []
    if kb_ws is not None:
        row = await conn.fetchrow(q("strategy_revision"), kb_ws, strategy)
        revision, reset = (0, 0) if row is None else (int(row["revision"]), int(row["reset_revision"]))
        detail_ids = [r["id"] for r in await conn.fetch(
            "SELECT id FROM kb_trials WHERE workspace_id = $1 AND strategy_name = $2 AND archived_at IS NULL "
            "ORDER BY change_revision DESC LIMIT $3", kb_ws, strategy, DETAIL_TRIALS)]
    return Context(runs_ws, runs, kb_ws, strategy, trials, mid, candidacy_ids, candidacy_source, regime_ids, symbol,
                   recent_ids, snapshot, source, dsr_trial_ids, revision, reset, detail_ids)


def _symbol(dataset_meta: str | None) -> str | None:
    try:
        value = orjson.loads(dataset_meta or "null")
    except orjson.JSONDecodeError:
        return None
    symbol = value.get("symbol") if isinstance(value, dict) else None
    return symbol.strip() if isinstance(symbol, str) and symbol.strip() else None


def cases(ctx: Context) -> list[Case]:
    ws = ctx.runs_ws
    first, mid = (START_OF_TIME, ZERO_ID), (ctx.mid, ZERO_ID)
    batch = ctx.candidacy_ids[:BACKFILL_BATCH]
    regime_batch = ctx.regime_ids[:BACKFILL_BATCH]
    empty = ["{}"] * len(regime_batch)
    out = [
        Case("backfill", "select_candidacy_page (first page)", "select_candidacy_page", (ws, *first, BACKFILL_PAGE)),
        Case("backfill", "select_candidacy_page (mid cursor)", "select_candidacy_page", (ws, *mid, BACKFILL_PAGE)),
        Case("backfill", f"run_window_stats (--explain; {ctx.candidacy_source})", "run_window_stats",
             (ws, ctx.candidacy_ids)),
        Case("backfill", "workspace_window_stats (--min-dsr, once per backfill)", "workspace_window_stats", (ws,)),
        Case("backfill", f"run_window_keys (--min-dsr, per page; {ctx.candidacy_source})", "run_window_keys",
             (ws, ctx.candidacy_ids)),
        Case("backfill", f"update_candidacy_batch ({ctx.candidacy_source})", "update_candidacy_batch",
             (batch, ws, None), write=True),
        Case("backfill", "select_regime_page (first page)", "select_regime_page", (ws, *first, BACKFILL_PAGE, None)),
        Case("backfill", "select_regime_page (mid cursor)", "select_regime_page", (ws, *mid, BACKFILL_PAGE, None)),
        Case("backfill", "select_regime_page (--symbol)", "select_regime_page",
             (ws, *first, BACKFILL_PAGE, ctx.symbol)),
        Case("backfill", "update_regime_batch", "update_regime_batch",
             (regime_batch, empty, empty, ws, empty, None), write=True),
        Case("ingest", "select_ingest_page (first page)", "select_ingest_page", (ws, *first, INGEST_PAGE)),
        Case("ingest", "select_ingest_page (mid cursor)", "select_ingest_page", (ws, *mid, INGEST_PAGE)),
        Case("ingest", f"select_changed_runs_page ({ctx.snapshot_source})", "select_changed_runs_page",
             (ws, ctx.snapshot, ctx.snapshot.split(":", 1)[0], ZERO_ID, INGEST_PAGE)),  # as ingest starts
        Case("ingest", "trial_window_stats_of_runs", "trial_window_stats_of_runs", (ws, ctx.recent_ids)),
        Case("ingest", "trials_awaiting_dsr", "trials_awaiting_dsr", (ws,)),
        Case("ingest", "update_trial_dsr", "update_trial_dsr",
             (ws, ctx.dsr_trial_ids, [0.5] * len(ctx.dsr_trial_ids), ["{}"] * len(ctx.dsr_trial_ids)), write=True),
        Case("ingest", "mark_trials_without_dsr (runs)", "mark_trials_without_dsr", (ws, "{}", ctx.recent_ids),
             write=True),
        Case("ingest", "archive_stale_trials (runs)", "archive_stale_trials", (ws, ctx.recent_ids), write=True),
        Case("ingest", "delete_stale_evidence (runs)", "delete_stale_evidence", (ws, ctx.recent_ids), write=True),
        Case("ingest", "archive_stale_trials (full pass)", "archive_stale_trials", (ws, None), write=True),
        Case("ingest", "delete_stale_evidence (full pass)", "delete_stale_evidence", (ws, None), write=True),
        Case("status", "status_runs_by_kb_status", "status_runs_by_kb_status", (ws,)),
        Case("status", "status_eligible_by_strategy", "status_eligible_by_strategy", (ws,)),
        Case("dashboard", "dashboard_workspaces", "dashboard_workspaces", (DASHBOARD_WORKSPACES,)),
        Case("dashboard", "dashboard_run_funnel", "dashboard_run_funnel", (ws,)),
        Case("dashboard", "dashboard_latest_candidacy", "dashboard_latest_candidacy", (ws,)),
    ]
    if ctx.kb_ws is None:
        return out
    kb, strategy = ctx.kb_ws, ctx.strategy
    append = max(ctx.revision - 1, 0)
    out += [
        Case("recommend", "strategy_revision", "strategy_revision", (kb, strategy)),
        Case("recommend", f"load_trials (after={append}, an append)", "load_trials", (kb, strategy, append)),
        Case("recommend", "load_trials (after=-1, full load)", "load_trials", (kb, strategy, -1), analyze=False),
        Case("recommend", f"load_evidence (after={append}, an append)", "load_evidence", (kb, strategy, append)),
        Case("recommend", "load_evidence (after=-1, full load)", "load_evidence", (kb, strategy, -1), analyze=False),
        Case("recommend", "trial_details", "trial_details", (kb, ctx.detail_ids)),
        Case("status", "status_trials_by_strategy", "status_trials_by_strategy", (kb,)),
        Case("status", "status_archived_trials", "status_archived_trials", (kb,)),
        Case("dashboard", "dashboard_strategies", "dashboard_strategies", (kb,)),
        Case("dashboard", "dashboard_coverage", "dashboard_coverage", (kb,)),
        Case("dashboard", "dashboard_strategy_points", "dashboard_strategy_points", (kb, strategy, DASHBOARD_POINTS)),
    ]
    return out


_TIME = re.compile(r"^\s*(Planning|Execution) Time: ([\d.]+) ms")


async def explain(conn: Conn, case: Case) -> Outcome:
    analyze = case.analyze and (not case.write or WRITES == "analyze")
    mode = ("analyze, rolled back" if case.write else "analyze") if analyze else "plan only"
    head = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "
    # A plan-only write runs in a read-only transaction too: EXPLAIN without ANALYZE executes nothing.
    tr = conn.transaction(readonly=not (analyze and case.write))
    await tr.start()
    try:
        await conn.execute(f"SET LOCAL statement_timeout = '{TIMEOUT_S}s'")
        await conn.execute("SET LOCAL lock_timeout = '2s'")  # never queue behind a running bench's writer
        rows = await conn.fetch(head + q(case.query), *case.args)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return Outcome(case, mode, [], None, None, f"{type(exc).__name__}: {exc}")
    finally:
        await tr.rollback()
    lines = [r[0] for r in rows]
    times = {m.group(1): float(m.group(2)) for line in lines if (m := _TIME.match(line))}
    return Outcome(case, mode, lines, times.get("Planning"), times.get("Execution"))


def shorten(value: Any) -> str:
    if isinstance(value, FarTime):
        return "-infinity" if value.raw < 0 else "infinity"
    if isinstance(value, uuid.UUID):
        return str(value)[:8] + "…"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, list):
        return f"[{len(value)} x {type(value[0]).__name__}: {shorten(value[0])}, …]" if value else "[]"
    if isinstance(value, str) and len(value) > 40:
        return repr(value[:37] + "…")
    return "NULL" if value is None else repr(value) if isinstance(value, str) else str(value)


# A plan node line: "->  Index Scan using x on y  (cost=… rows=E width=W) (actual time=… rows=R loops=L)".
_NODE = re.compile(r"^\s*(?:->\s+)?(?P<node>[A-Z][^(]*?)\s+\(cost=[\d.]+\.\.[\d.]+ rows=(?P<est>\d+)"
                   r"(?: width=\d+\))?(?:\s+\(actual time=[\d.]+\.\.[\d.]+ rows=(?P<rows>\d+) loops=(?P<loops>\d+)\))?")
_SCAN = re.compile(r"^(?P<kind>(?:Parallel )?[\w ]*Scan(?: Backward)?)(?: using (?P<index>\S+))? on (?P<rel>\S+)")
_REMOVED = re.compile(r"Rows Removed by (?:Filter|Join Filter|Index Recheck): (\d+)")
BIG = 10_000
# Scans of a subquery, CTE or function: the summary names the table or index read beneath them.
_DERIVED = ("Subquery Scan", "CTE Scan", "Function Scan", "WorkTable Scan", "Values Scan")


def summarize(outcome: Outcome, parents: dict[str, str]) -> tuple[str, str, str]:
    """The first scan of the plan (partition names as their parent's), the top node's rows
    (~: the planner's estimate), and notes on what looks costly."""
    nodes = [(m, i) for i, line in enumerate(outcome.lines) if (m := _NODE.match(line))]
    if not nodes:
        return "-", "-", ""
    top_match = nodes[0][0]
    rows = top_match.group("rows")
    shown_rows = f"{int(rows):,}" if rows is not None else f"~{int(top_match.group('est')):,}"
    scan, notes = "-", []
    biggest: tuple[int, str] = (0, "")
    for m, i in nodes:
        node = m.group("node")
        s = _SCAN.match(node)
        actual = None if m.group("rows") is None else _rows(m)
        if s is not None:
            if scan == "-" and not s.group("kind").endswith(_DERIVED):
                index = s.group("index")
                scan = s.group("kind") + (f" using {parents.get(index, index)}" if index
                                          else f" on {parents.get(s.group('rel'), s.group('rel'))}")
                if s.group("kind") == "Bitmap Heap Scan":
                    child = next((n for n, j in nodes if j > i and "Bitmap Index Scan" in n.group("node")), None)
                    if child is not None and (c := re.search(r"on (\S+)", child.group("node"))):
                        scan += f" / {parents.get(c.group(1), c.group(1))}"
            named = s.group("index") or s.group("rel")
            if not s.group("kind").endswith(_DERIVED) and _rows(m) > biggest[0]:
                biggest = (_rows(m), f"{s.group('kind')} {'using' if s.group('index') else 'on'} "
                                     f"{parents.get(named, named)}")
            if "Seq Scan" in s.group("kind") and max(_rows(m), int(m.group("est"))) >= BIG:
                notes.append(f"seq scan of {parents.get(s.group('rel'), s.group('rel'))}")
        below = next((n for n, j in nodes if j > i), None)
        if node.startswith(("Sort", "Incremental Sort")) and below is not None:
            # A sort's input is its child's output (a top-N sort returns only the first rows).
            fed = _rows(below)
            if fed >= BIG:
                notes.append(f"sort of {fed:,}")
        # The filter counts print on the lines under their node, before the next node; like
        # the rows, they are per loop (per worker of a parallel scan).
        following = next((j for _, j in nodes if j > i), len(outcome.lines))
        for line in outcome.lines[i + 1:following]:
            r = _REMOVED.search(line)
            removed = 0 if r is None or actual is None else int(r.group(1)) * int(m.group("loops"))
            if removed >= BIG and removed > 10 * (actual or 0):
                notes.append(f"filter drops {removed:,} keeps {actual:,}")
            if "external merge" in line:
                notes.append("sort spills to disk")
    if scan == "-":  # nothing but derived scans: name the first of them
        scan = next((s.group(0) for m, _ in nodes if (s := _SCAN.match(m.group("node")))), "-")
    if biggest[0] >= BIG and biggest[1] != scan:  # the first scan is not where the rows are read
        notes.insert(0, f"most rows: {biggest[1]} ({biggest[0]:,})")
    return scan, shown_rows, "; ".join(dict.fromkeys(notes))


def _rows(m: re.Match[str]) -> int:
    """A node's rows: actual over all loops when analysed, else the estimate."""
    if m.group("rows") is None:
        return int(m.group("est"))
    return int(m.group("rows")) * int(m.group("loops"))


def print_outcome(outcome: Outcome) -> None:
    case = outcome.case
    print(f"\n== {case.section}: {case.label}  [{outcome.mode}]")
    print("   params: " + ", ".join(f"${i}={shorten(a)}" for i, a in enumerate(case.args, 1)))
    if outcome.error is not None:
        print(f"   ERROR {outcome.error}")
        return
    timing = [f"{k} {v:.2f} ms" for k, v in (("planning", outcome.planning_ms), ("execution", outcome.execution_ms))
              if v is not None]
    if timing:
        print("   " + ", ".join(timing))
    plan, pruned = shown_plan(outcome.lines)
    for line in plan[:PLAN_LINES]:
        print("   | " + (line if len(line) <= LINE_CHARS else line[:LINE_CHARS - 1] + "…"))
    if len(plan) > PLAN_LINES:
        print(f"   | … {len(plan) - PLAN_LINES} more lines")
    if pruned:
        print(f"   | ({pruned} nodes never executed left out: partitions pruned at run time)")


def shown_plan(lines: list[str]) -> tuple[list[str], int]:
    """The plan without its timing lines and without the nodes that never ran (with the
    lines under them), and how many such nodes were left out."""
    shown, pruned, depth = [], 0, None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if depth is not None and indent > depth:
            continue
        depth = None
        if "(never executed)" in line:
            pruned += 1
            depth = indent
        elif not _TIME.match(line):
            shown.append(line)
    return shown, pruned


async def partition_parents(conn: Conn) -> dict[str, str]:
    """Partition (and partition index) name -> the partitioned parent's name."""
    rows = await conn.fetch("SELECT c.relname AS child, p.relname AS parent FROM pg_inherits i "
                            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent")
    return {r["child"]: r["parent"] for r in rows}


async def table_counts(conn: Conn) -> dict[str, int]:
    return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in ("backtest_runs", "kb_trials",
                                                                                  "kb_evidence")}


async def main() -> None:
    try:
        db = await Database(with_database(database_url(), DB_NAME), min_size=1, max_size=1).open()
    except DatabaseUnavailable as exc:
        raise SystemExit(f"BENCH_DB={DB_NAME}: {exc}") from None
    try:
        async with db.acquire() as conn:
            async with conn.transaction(readonly=True):
                counts = await table_counts(conn)
                ctx = await pick_context(conn)
            parents = await partition_parents(conn)
            print(f"database {DB_NAME}: " + ", ".join(f"{t} {n:,} rows" for t, n in counts.items()))
            print(f"runs workspace {ctx.runs_ws}: {ctx.runs:,} runs; "
                  f"mid cursor {shorten(ctx.mid)}; regime --symbol {ctx.symbol!r}; "
                  f"snapshot from {ctx.snapshot_source}")
            if ctx.kb_ws is None:
                print("kb_trials is empty: the recommend queries are left out")
            else:
                print(f"KB workspace {ctx.kb_ws}, strategy {ctx.strategy!r}: {ctx.trials:,} trials, "
                      f"revision {ctx.revision} (reset at {ctx.reset_revision})")
            print("writes: " + ("EXPLAIN ANALYZE inside a transaction rolled back" if WRITES == "analyze"
                                else "planned only, not executed (BENCH_WRITES=analyze runs them, rolled back)"))
            print("upsert_trials / upsert_evidence / begin_kb_write are left out: their 20-odd arrays of "
                  "ingest rows are not drawn from the data here")
            outcomes = []
            for case in cases(ctx):
                outcome = await explain(conn, case)
                print_outcome(outcome)
                outcomes.append(outcome)
    finally:
        await db.close()
    print_summary(outcomes, parents)


def print_summary(outcomes: list[Outcome], parents: dict[str, str]) -> None:
    table = []
    for o in outcomes:
        scan, rows, notes = summarize(o, parents) if o.error is None else ("ERROR", "-", o.error[:60])
        ms = "plan only" if o.execution_ms is None else f"{o.execution_ms:,.1f}"
        table.append((o.case.label, ms, scan, rows, notes))
    head = ("query", "exec ms", "top scan", "rows", "notes")
    widths = [max(len(r[k]) for r in (head, *table)) for k in range(4)]
    print("\nsummary")
    for row in (head, *table):
        print("  ".join(v.ljust(w) if k != 1 and k != 3 else v.rjust(w) for k, (v, w) in
                        enumerate(zip(row[:4], widths, strict=True))) + ("  " + row[4] if row[4] else ""))


if __name__ == "__main__":
    run(main())
