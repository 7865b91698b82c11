"""`kb sync`: import, regime backfill per symbol, candidacy and ingest in one command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from app.cli import render
from app.cli.console import Progress, StopFlag
from app.cli.options import opt, positive
from app.db import Database
from app.services.kb.runs.scan import Hooks
from app.services.kb.sync import SyncOptions, sync


def register(sub: Any) -> None:
    p = sub.add_parser("sync", help="import new sweeps, then regime backfill, candidacy and ingest, in order")
    opt(p, "--workspace", required=True, metavar="NAME_OR_ID",
        help="workspace by name or id (created by --import when the name is new)")
    p.add_argument("--ohlcv", action="append", default=[], metavar="DIR_OR_FILE",
                   help="OHLCV files, or folders of them; a file without a symbol column is named by its "
                        "symbol (SPY.csv, spy_1d.parquet) (repeatable)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE",
                   help="run files to import first, as `kb import` reads them (repeatable)")
    opt(p, "--batch-size", type=positive(50_000), default=1000, help="rows per commit (default 1000)")
    opt(p, "--json", action="store_true", default=False, help="print the summary as JSON")
    p.set_defaults(handler=cmd_sync)


async def cmd_sync(db: Database, args: argparse.Namespace) -> int:
    opts = SyncOptions(workspace=args.workspace, ohlcv=tuple(Path(p) for p in args.ohlcv),
                       imports=tuple(Path(p) for p in args.imports), batch_size=args.batch_size)
    bars: list[Progress] = []
    stop = StopFlag()

    def hooks(label: str) -> Hooks:
        if bars:
            bars[-1].close()
        bars.append(Progress(f"sync: {label}"))
        return Hooks(progress=bars[-1], should_stop=stop)

    stop.install()
    try:
        result = await sync(db, opts, hooks, should_stop=stop)
    finally:
        stop.uninstall()
        if bars:
            bars[-1].close()
    render.show(args.json, result.to_dict(), render.sync_report)
    return 130 if result.interrupted else 0
