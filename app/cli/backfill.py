"""`kb backfill-candidacy`, `backfill-regime`, `backfill-undo`, `backfill-runs`: each
subparser beside its handler."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from app.cli import render
from app.cli.console import Progress, StopFlag, echo
from app.cli.options import ALL, experiment_type, finite, opt, positive, scan_options, uuid_arg, workspace_options
from app.db import Database, ledger
from app.errors import BadInput
from app.services.kb.backfill.candidacy import CandidacyOptions, backfill_candidacy, explain_run
from app.services.kb.backfill.engine import BackfillResult
from app.services.kb.backfill.regime import RegimeOptions, backfill_regime
from app.services.kb.backfill.undo import undo_backfill
from app.services.kb.regime.ohlcv import check_timeframe, load_ohlcv, timeframe_seconds
from app.services.kb.runs.gate import CandidacyConfig
from app.services.kb.runs.scan import Hooks


def register(sub: Any) -> None:
    p = sub.add_parser("backfill-candidacy", help="mark eligible test variants as KB candidates")
    scan_options(p, 1000)
    opt(p, "--experiment-type", type=experiment_type, default="sweep",
        help="experiment type for runs that record none (default sweep)")
    opt(p, "--require-regime", action="store_true", default=False, help="reject runs without regime_oos")
    opt(p, "--min-trades", type=positive(10**9), default=None, help="gate: minimum OOS trades (default 5)")
    opt(p, "--max-drawdown", type=finite, default=None, help="gate: maximum OOS drawdown as a fraction (default 0.25)")
    opt(p, "--min-sharpe", type=finite, default=None, help="gate: minimum OOS Sharpe (default 0.1)")
    opt(p, "--min-dsr", type=finite, default=None,
        help="gate: minimum deflated Sharpe ratio, 0..1 (default off; needs the run's OOS snapshot and bar size)")
    opt(p, "--explain", type=uuid_arg, default=None, metavar="RUN_ID",
        help="print every gate for one run instead of backfilling")
    p.set_defaults(handler=cmd_backfill_candidacy)

    p = sub.add_parser("backfill-regime", help="compute missing regime snapshots from an OHLCV file")
    scan_options(p, 500)
    opt(p, "--ohlcv-file", required=True, help="CSV, JSON or Parquet OHLCV file")
    opt(p, "--symbol", default=None, help="only runs of this symbol (and the file rows of it)")
    opt(p, "--timeframe", default=None,
        help="bar timeframe of the file, e.g. 1h, 1d (default: the file's own bar spacing; checked against it)")
    opt(p, "--date-format", default=None, help="strftime format of the file's times, e.g. %%d.%%m.%%Y %%H:%%M")
    opt(p, "--dayfirst", action="store_true", default=False,
        help="read ambiguous dates like 03/04/2024 as day first (the values decide when they can)")
    p.set_defaults(handler=cmd_backfill_regime, prepare=check_regime_file)

    p = sub.add_parser("backfill-undo", help="revert what one candidacy backfill changed")
    p.add_argument("backfill_run_id", type=uuid_arg, metavar="RUN_ID", help="id from the report or `kb backfill-runs`")
    opt(p, "--json", action="store_true", default=False, help="print the result as JSON")
    p.set_defaults(handler=cmd_backfill_undo)

    p = sub.add_parser("backfill-runs", help="list backfill runs of a workspace (the ledger)")
    workspace_options(p)
    opt(p, "--limit", type=positive(10_000), default=20, help="how many, newest first")
    opt(p, "--json", action="store_true", default=False, help="print as JSON")
    p.set_defaults(handler=cmd_backfill_runs)


def _gate_config(args: argparse.Namespace) -> CandidacyConfig:
    defaults = CandidacyConfig()
    if args.max_drawdown is not None and not 0 <= args.max_drawdown <= 1:
        raise BadInput(f"--max-drawdown is a fraction between 0 and 1, got {args.max_drawdown}")
    if args.min_dsr is not None and not 0 <= args.min_dsr <= 1:
        raise BadInput(f"--min-dsr is a probability between 0 and 1, got {args.min_dsr}")
    return CandidacyConfig(
        require_regime=bool(args.require_regime),
        min_trades=args.min_trades if args.min_trades is not None else defaults.min_trades,
        max_drawdown=args.max_drawdown if args.max_drawdown is not None else defaults.max_drawdown,
        max_overfit_gap=defaults.max_overfit_gap,
        min_sharpe=args.min_sharpe if args.min_sharpe is not None else defaults.min_sharpe,
        min_dsr=args.min_dsr,
    )


def shown_limit(limit: int) -> int | str:
    return "all" if limit >= ALL else limit


def continue_command(args: argparse.Namespace, result: BackfillResult) -> str:
    """The exact command that continues a run stopped at its limit: the same one with
    `--resume` (the limit is not part of what resume matches, so `--limit all` finishes)."""
    if result.status != "limit_reached":
        return ""
    argv = list(getattr(args, "argv", None) or [])
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["kb", *argv])


def _exit_code(result: BackfillResult) -> int:
    return 130 if result.status == "interrupted" else 0


async def _with_console(label: str, run: Any) -> BackfillResult:
    """Run a backfill with a progress bar and Ctrl-C/SIGTERM as a stop after the batch."""
    stop = StopFlag()
    progress = Progress(label)
    stop.install()
    try:
        result: BackfillResult = await run(Hooks(progress=progress, should_stop=stop))
    finally:
        stop.uninstall()
        progress.close()
    return result


async def cmd_backfill_candidacy(db: Database, args: argparse.Namespace) -> int:
    """The plan's `backfill-candidacy`."""
    opts = CandidacyOptions(
        workspace_id=args.workspace_id, since=args.since, limit=args.limit, dry_run=args.dry_run,
        experiment_type=args.experiment_type, batch_size=args.batch_size, resume=args.resume,
        gate=_gate_config(args),
    )
    if args.explain is not None:
        explanation = await explain_run(db, args.explain, opts)
        render.show(args.json, explanation, render.explain_text)
        return 0
    result = await _with_console("backfill-candidacy", lambda hooks: backfill_candidacy(db, opts, hooks))
    since = opts.since
    again = continue_command(args, result)
    if args.json:
        render.print_json(render.result_json(result, workspace_id=str(opts.workspace_id),
                                             since=since.isoformat() if since else None, limit=shown_limit(opts.limit),
                                             continue_with=again or None))
    else:
        shown = since.date() if since and since.time() == since.min.time() else since
        echo(render.candidacy_report(result, workspace=opts.workspace_id, since=shown, limit=shown_limit(opts.limit),
                                     continue_with=again))
    return _exit_code(result)


def check_regime_file(args: argparse.Namespace) -> tuple[Any, int]:
    """Everything about the OHLCV file, checked before any database work."""
    if args.timeframe is not None:
        timeframe_seconds(args.timeframe)  # a bad spelling is refused before the file is read
    data = load_ohlcv(args.ohlcv_file, symbol=args.symbol, date_format=args.date_format,
                      dayfirst=True if args.dayfirst else None)
    if not data.has_symbol_column and not args.symbol:
        raise BadInput(
            f"OHLCV file {data.path} has no symbol column: pass --symbol so its prices are only "
            "applied to that instrument's runs"
        )
    args.timeframe, bar_seconds = check_timeframe(data, args.timeframe)
    return data, bar_seconds


async def cmd_backfill_regime(db: Database, args: argparse.Namespace) -> int:
    """The plan's `backfill-regime` (the file was checked by `check_regime_file`)."""
    data, bar_seconds = args.prepared
    opts = RegimeOptions(
        workspace_id=args.workspace_id, timeframe=args.timeframe,
        symbol=args.symbol.strip().upper() if args.symbol else None, since=args.since, limit=args.limit,
        dry_run=args.dry_run, batch_size=args.batch_size, resume=args.resume,
    )
    result = await _with_console("backfill-regime",
                                 lambda hooks: backfill_regime(db, opts, data, bar_seconds, hooks))
    described = {"ohlcv_file": data.path, "symbol": opts.symbol, "timeframe": opts.timeframe,
                 "ohlcv_rows": data.rows, "date_range": data.date_range()}
    again = continue_command(args, result)
    if args.json:
        render.print_json(render.result_json(result, workspace_id=str(opts.workspace_id), **described,
                                             ohlcv_dropped=data.dropped, continue_with=again or None))
    else:
        echo(render.regime_report(result, workspace=opts.workspace_id, **described, dropped=data.dropped,
                                  continue_with=again))
    return _exit_code(result)


async def cmd_backfill_undo(db: Database, args: argparse.Namespace) -> int:
    result = await undo_backfill(db, args.backfill_run_id)
    render.show(args.json, result, render.undo_text)
    return 0


async def cmd_backfill_runs(db: Database, args: argparse.Namespace) -> int:
    async with db.acquire() as conn:
        items = await ledger.list_runs(conn, args.workspace_id, args.limit)
    render.show(args.json, items, render.ledger_text)
    return 0
