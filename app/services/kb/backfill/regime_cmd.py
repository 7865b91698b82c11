"""The `backfill-regime` command: validate the file first, then run the backfill."""

from __future__ import annotations

import argparse
import sys

import orjson

from app.errors import BadInput
from app.services.kb.backfill.regime import RegimeOptions, backfill_regime
from app.services.kb.backfill.report import regime_report, result_json
from app.services.kb.console import Progress, StopFlag, echo
from app.services.kb.ohlcv import load_ohlcv, timeframe_seconds
from app.services.kb.session import open_database


async def run_regime_command(args: argparse.Namespace) -> int:
    bar_seconds = timeframe_seconds(args.timeframe)
    # Everything about the file is checked before any database work.
    data = load_ohlcv(args.ohlcv_file, symbol=args.symbol)
    if not data.has_symbol_column and not args.symbol:
        raise BadInput(
            f"OHLCV file {data.path} has no symbol column: pass --symbol so its prices are only "
            "applied to that instrument's runs"
        )
    opts = RegimeOptions(
        workspace_id=args.workspace_id,
        timeframe=args.timeframe,
        symbol=args.symbol.upper() if args.symbol else None,
        since=args.since,
        limit=args.limit,
        dry_run=args.dry_run,
        batch_size=args.batch_size,
        resume=args.resume,
    )
    async with open_database() as db:
        stop = StopFlag()
        progress = Progress("backfill-regime")
        stop.install()
        try:
            result = await backfill_regime(db, opts, data, bar_seconds, progress=progress, should_stop=stop)
        finally:
            stop.uninstall()
            progress.close()
    if args.json:
        report = result_json(result, workspace_id=str(opts.workspace_id), ohlcv_file=str(data.path),
                             symbol=opts.symbol, timeframe=opts.timeframe, ohlcv_rows=data.rows,
                             date_range=data.date_range(), ohlcv_dropped=data.dropped)
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        echo(regime_report(result, workspace=opts.workspace_id, ohlcv_file=data.path, symbol=opts.symbol,
                           timeframe=opts.timeframe, ohlcv_rows=data.rows, date_range=data.date_range(),
                           dropped=data.dropped))
    return 130 if result.status == "interrupted" else 0
