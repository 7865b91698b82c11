"""`kb ingest`, `status`, `recommend`, `seed`, `serve`: each subparser beside its handler."""

from __future__ import annotations

import argparse
import time
from typing import Any

from app.cli import render
from app.cli.console import Progress, echo
from app.cli.options import finite, opt, positive, since_arg, workspace_options
from app.db import Database
from app.db.replica import read_replica
from app.errors import BadInput
from app.services.kb.importing.optuna_source import enqueue
from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, recommend
from app.services.kb.recommend.evaluate import evaluate
from app.services.kb.recommend.expected import RUNNER_UPS
from app.services.kb.recommend.query import Scope
from app.services.kb.regime.features import current_regime
from app.services.kb.regime.ohlcv import check_timeframe, load_ohlcv
from app.services.kb.regime.snapshot import RegimeSnapshot
from app.services.kb.status import workspace_status
from app.services.kb.synthetic.seed import seed_runs
from app.services.kb.workspaces import list_workspaces


def register(sub: Any) -> None:
    p = sub.add_parser("ingest", help="turn candidate/promoted runs into KB trials")
    workspace_options(p)
    opt(p, "--since", type=since_arg, default=None, help="only runs created at/after this date")
    opt(p, "--dry-run", action="store_true", default=False, help="count what would change, write nothing")
    opt(p, "--full", action="store_true", default=False,
        help="read every run again, not only those written since the last ingest")
    opt(p, "--batch-size", type=positive(50_000), default=1000, help="trials per commit (default 1000)")
    opt(p, "--json", action="store_true", default=False, help="print the report as JSON")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("workspaces", help="list workspaces with their run and trial counts")
    opt(p, "--json", action="store_true", default=False, help="print as JSON")
    p.set_defaults(handler=cmd_workspaces, database="embedded")

    p = sub.add_parser("status", help="KB status of a workspace")
    workspace_options(p)
    opt(p, "--json", action="store_true", default=False, help="print as JSON")
    p.set_defaults(handler=cmd_status)

    _register_recommend(sub)

    p = sub.add_parser("seed", help="bulk-load synthetic runs with COPY (benchmarks)")
    workspace_options(p, create=True)
    opt(p, "--runs", type=positive(50_000_000), default=100_000, help="how many runs")
    opt(p, "--seed", type=int, default=1, help="random seed")
    opt(p, "--eligible-share", type=finite, default=0.3,
        help="share of runs that pass the default gate (default 0.3)")
    p.set_defaults(handler=cmd_seed, database="migrate")

    p = sub.add_parser("serve", help="run the HTTP API")
    opt(p, "--host", default="127.0.0.1", help="bind address (non-loopback needs KB_API_TOKEN)")
    opt(p, "--port", type=positive(65535), default=8000, help="port (default 8000)")
    p.set_defaults(handler=cmd_serve, prepare=_check_bind, database="embedded")


def _register_recommend(sub: Any) -> None:
    """`recommend` and `evaluate`."""
    p = sub.add_parser("recommend", help="recommend strategy parameters for a market regime")
    workspace_options(p)
    opt(p, "--strategy", required=True, help="strategy name")
    opt(p, "--ohlcv-file", default=None, help="OHLCV file; its latest bars define the current regime")
    opt(p, "--symbol", default=None,
        help="symbol: selects file rows; evidence and the global best come from this instrument only")
    opt(p, "--timeframe", default=None,
        help="bar size (default: the OHLCV file's); evidence is never mixed across bar sizes")
    opt(p, "--pool", action="store_true", default=False,
        help="with --symbol: use every instrument's evidence at this bar size (said in the answer's scope)")
    opt(p, "--as-of", type=since_arg, default=None,
        help="answer as of this time: only evidence windows that ended before it (backtests of the KB itself)")
    opt(p, "--tags", default=None, help="comma-separated regime tags instead of OHLCV")
    opt(p, "--top-k", type=positive(1000), default=20, help="supporting trials to show (default 20)")
    opt(p, "--method", choices=("expected", "median"), default="expected",
        help="expected: the tested set with the best expected OOS Sharpe here (default); "
             "median: per-parameter weighted median of the nearest trials")
    opt(p, "--enqueue-optuna", default=None, metavar="STORAGE",
        help="enqueue the answer as the next trial of an Optuna study in STORAGE (needs --study)")
    opt(p, "--study", default=None, help="the Optuna study for --enqueue-optuna")
    opt(p, "--top", type=positive(1 + RUNNER_UPS), default=1,
        help=f"with --enqueue-optuna: the answer and its runner-ups, up to {1 + RUNNER_UPS} sets (default 1)")
    opt(p, "--json", action="store_true", default=False, help="print as JSON")
    p.set_defaults(handler=cmd_recommend, prepare=_query_regime)

    p = sub.add_parser("evaluate", help="walk-forward check of recommend against the global best")
    workspace_options(p)
    opt(p, "--strategy", required=True, help="strategy name")
    opt(p, "--symbol", default=None, help="evaluate on this instrument's evidence only (unless --pool)")
    opt(p, "--timeframe", default=None, help="evaluate on this bar size's evidence only")
    opt(p, "--pool", action="store_true", default=False, help="with --symbol: every instrument at this bar size")
    opt(p, "--json", action="store_true", default=False, help="print as JSON")
    p.set_defaults(handler=cmd_evaluate)


def regime_from_ohlcv(path: str, symbol: str | None, timeframe: str | None) -> RegimeSnapshot:
    """The current regime from the latest bars of an OHLCV file (one instrument)."""
    data = load_ohlcv(path, symbol=symbol)
    if len(data.series) != 1:
        raise BadInput(f"OHLCV file {path} holds {len(data.series)} symbols: pass --symbol")
    # The bar size is the file's own unless given (and then checked): it scopes the evidence.
    timeframe, _ = check_timeframe(data, timeframe)
    return current_regime(next(iter(data.series.values())), timeframe=timeframe, source="recommend")


def _query_regime(args: argparse.Namespace) -> RegimeSnapshot | None:
    if bool(args.ohlcv_file) == bool(args.tags):
        raise BadInput("give the current regime as --ohlcv-file or as --tags (one of them)")
    if bool(args.enqueue_optuna) != bool(args.study):
        raise BadInput("--enqueue-optuna STORAGE and --study NAME go together")
    return regime_from_ohlcv(args.ohlcv_file, args.symbol, args.timeframe) if args.ohlcv_file else None


async def cmd_ingest(db: Database, args: argparse.Namespace) -> int:
    progress = Progress("ingest")
    try:
        result = await ingest(db, args.workspace_id, since=args.since, dry_run=args.dry_run, full=args.full,
                              batch_size=args.batch_size, progress=progress)
    finally:
        progress.close()
    render.show(args.json, result, render.ingest_report)
    return 0


async def cmd_workspaces(db: Database, args: argparse.Namespace) -> int:
    render.show(args.json, await list_workspaces(db), render.workspaces_text)
    return 0


async def cmd_status(db: Database, args: argparse.Namespace) -> int:
    async with read_replica(db) as replica:
        status = await workspace_status(db if replica is None else await replica.reader(), args.workspace_id)
    render.show(args.json, status.to_dict(), render.status_report)
    return 0


async def cmd_recommend(db: Database, args: argparse.Namespace) -> int:
    tags = tuple(t.strip() for t in (args.tags or "").split(",") if t.strip())
    async with read_replica(db) as replica:
        answer = await recommend(db, RecommendQuery(
            workspace_id=args.workspace_id, strategy_name=args.strategy, regime=args.prepared, tags=tags,
            symbol=args.symbol, timeframe=args.timeframe, top_k=args.top_k, method=args.method, pool=args.pool,
            as_of=args.as_of), replica=replica)
    result = answer.to_dict()
    if args.enqueue_optuna:
        result["optuna_enqueued"] = _enqueue(args, result)
    render.show(args.json, result, render.recommend_report)
    return 0


def _enqueue(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """The answer (and with --top, its runner-ups) as the study's next trials."""
    if not result.get("params"):
        raise BadInput("recommend has no parameter set to enqueue (no answer for this strategy and regime)")
    sets = [result["params"], *(r["params"] for r in result.get("runner_ups") or [])][: args.top]
    note = {"kb_workspace_id": str(args.workspace_id), "kb_strategy": args.strategy,
            "kb_method": result.get("method", args.method)}
    added = enqueue(args.enqueue_optuna, args.study, sets, note)
    return {"study": args.study, "offered": len(sets), "enqueued": added}


async def cmd_evaluate(db: Database, args: argparse.Namespace) -> int:
    async with read_replica(db) as replica:
        report = await evaluate(db, args.workspace_id, args.strategy,
                                scope=Scope.of(args.symbol, args.timeframe, args.pool),
                                reads=None if replica is None else await replica.matrices())
    render.show(args.json, report.to_dict(), render.evaluate_report)
    return 0


async def cmd_seed(db: Database, args: argparse.Namespace) -> int:
    if not 0.0 <= args.eligible_share <= 1.0:
        raise BadInput(f"--eligible-share is a fraction between 0 and 1, got {args.eligible_share}")
    progress = Progress("seed")
    started = time.monotonic()
    try:
        count = await seed_runs(db, args.workspace_id, args.runs, seed=args.seed,
                                eligible_share=args.eligible_share, progress=progress)
    finally:
        progress.close()
    elapsed = time.monotonic() - started
    echo(f"seeded {count:,} runs into workspace {args.workspace_id} in {elapsed:.1f}s "
         f"({count / max(elapsed, 1e-9):,.0f} rows/s)")
    return 0


def _check_bind(args: argparse.Namespace) -> None:
    from app.api.serve import check_bind  # noqa: PLC0415  (uvicorn only for this command)

    check_bind(args.host, args.port)


async def cmd_serve(db: Database, args: argparse.Namespace) -> int:
    from app.api.serve import serve  # noqa: PLC0415

    return await serve(args.host, args.port, db)
