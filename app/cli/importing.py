"""`kb import` (CSV, JSON lines, Parquet) and `kb import-optuna`: each subparser beside its handler."""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from app.cli import render
from app.cli.console import Progress, ProgressFn
from app.cli.options import opt, workspace_options
from app.db import Database
from app.services.kb.importing.fields import parse_pairs
from app.services.kb.importing.optuna_source import study_frame
from app.services.kb.importing.service import ImportReport, import_frame, import_table, open_file
from app.services.kb.importing.sources import FORMATS


def register(sub: Any) -> None:
    p = sub.add_parser("import", help="import backtest runs from a CSV, JSON lines or Parquet file")
    p.add_argument("file", help="the file to import")
    workspace_options(p, create=True)
    opt(p, "--format", choices=FORMATS, default=None, help="file format (default: from the file name)")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                   help="take FIELD from COLUMN (repeatable); recognised headers need no --map")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="give FIELD the same VALUE on every row (repeatable), e.g. --set symbol=SPY")
    opt(p, "--source", default=None, help="name of the source for idempotence (default: the file name)")
    opt(p, "--dry-run", action="store_true", default=False, help="check and count, write nothing")
    opt(p, "--json", action="store_true", default=False, help="print the report as JSON")
    p.set_defaults(handler=cmd_import, prepare=_read_file, database="migrate")

    p = sub.add_parser("import-optuna", help="import the COMPLETE trials of an Optuna study")
    opt(p, "--storage", required=True, help="Optuna storage URL, e.g. sqlite:///study.db")
    opt(p, "--study", required=True, help="study name")
    workspace_options(p, create=True)
    opt(p, "--strategy", default=None, help="strategy name (default: the study name)")
    opt(p, "--dry-run", action="store_true", default=False, help="check and count, write nothing")
    opt(p, "--json", action="store_true", default=False, help="print the report as JSON")
    p.set_defaults(handler=cmd_import_optuna, prepare=_read_study, database="migrate")


def _read_file(args: argparse.Namespace) -> Any:
    """Before any database work: the file is readable and every field and column exists
    (the rows are read while they are written)."""
    args.started = time.monotonic()
    maps = parse_pairs(args.map, "--map")
    sets = parse_pairs(args.set, "--set")
    path = Path(args.file)
    return (*open_file(path, args.format, maps, sets), args.source or path.name)


def _read_study(args: argparse.Namespace) -> Any:
    args.started = time.monotonic()
    frame, mapping, counts = study_frame(args.storage, args.study, args.strategy)
    return frame, mapping, f"optuna:{args.study}", counts


async def cmd_import(db: Database, args: argparse.Namespace) -> int:
    table, mapping, source = args.prepared
    report = await _run(args, table.progress_unit, lambda progress: import_table(
        db, args.workspace_id, table, mapping, source=source, dry_run=args.dry_run, progress=progress))
    render.show(args.json, report, render.import_report)
    return 0


async def cmd_import_optuna(db: Database, args: argparse.Namespace) -> int:
    frame, mapping, source, counts = args.prepared
    report = await _run(args, "rows", lambda progress: import_frame(
        db, args.workspace_id, frame, mapping, source=source, dry_run=args.dry_run, progress=progress))
    report["optuna"] = counts
    render.show(args.json, report, render.import_report)
    return 0


async def _run(args: argparse.Namespace, unit: str,
               start: Callable[[ProgressFn], Awaitable[ImportReport]]) -> dict[str, Any]:
    started = getattr(args, "started", time.monotonic())
    progress = Progress("import", unit=unit)
    try:
        done = await start(progress)
    finally:
        progress.close()
    elapsed = time.monotonic() - started
    report = done.to_dict()
    report["elapsed_s"] = round(elapsed, 3)
    report["rows_per_s"] = round(report["rows"] / max(elapsed, 1e-9), 1)
    return report
