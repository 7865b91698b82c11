"""`kb import` (CSV, JSON lines, Parquet) and `kb import-optuna`: each subparser beside its handler."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from app.cli import render
from app.cli.console import Progress
from app.cli.options import opt, workspace_options
from app.db import Database
from app.services.kb.importing.fields import parse_pairs
from app.services.kb.importing.optuna_source import study_frame
from app.services.kb.importing.service import import_frame, load_file
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
    """Before any database work: the file is readable and every field and column exists."""
    args.started = time.monotonic()
    maps = parse_pairs(args.map, "--map")
    sets = parse_pairs(args.set, "--set")
    path = Path(args.file)
    return (*load_file(path, args.format, maps, sets), args.source or path.name)


def _read_study(args: argparse.Namespace) -> Any:
    args.started = time.monotonic()
    frame, mapping, counts = study_frame(args.storage, args.study, args.strategy)
    return frame, mapping, f"optuna:{args.study}", counts


async def cmd_import(db: Database, args: argparse.Namespace) -> int:
    frame, mapping, source = args.prepared
    report = await _run(db, args, frame, mapping, source)
    render.show(args.json, report, render.import_report)
    return 0


async def cmd_import_optuna(db: Database, args: argparse.Namespace) -> int:
    frame, mapping, source, counts = args.prepared
    report = await _run(db, args, frame, mapping, source)
    report["optuna"] = counts
    render.show(args.json, report, render.import_report)
    return 0


async def _run(db: Database, args: argparse.Namespace, frame: Any, mapping: Any, source: str) -> dict[str, Any]:
    started = getattr(args, "started", time.monotonic())
    progress = Progress("import")
    try:
        done = await import_frame(db, args.workspace_id, frame, mapping, source=source, dry_run=args.dry_run,
                                  progress=progress)
    finally:
        progress.close()
    elapsed = time.monotonic() - started
    report = done.to_dict()
    report["elapsed_s"] = round(elapsed, 3)
    report["rows_per_s"] = round(report["rows"] / max(elapsed, 1e-9), 1)
    return report
