"""CLI commands for the KB side: ingest, status, recommend, seed, demo, serve."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from app.errors import BadInput
from app.services.kb.console import Progress, echo
from app.services.kb.ingest import IngestResult, ingest, kb_status
from app.services.kb.ohlcv import load_ohlcv
from app.services.kb.recommend import RecommendQuery, recommend
from app.services.kb.regime import REGIME_WINDOW_BARS, compute_feature_batch, snapshot_dicts
from app.services.kb.seed import seed_runs
from app.services.kb.session import open_database
from app.services.kb.types import RegimeSnapshot


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def ingest_report(r: IngestResult) -> str:
    lines = ["=" * 50, "KB INGEST REPORT", "=" * 50,
             f"{'Workspace:':<16}{r.workspace_id}", f"{'Dry Run:':<16}{r.dry_run}", "-" * 50,
             f"{'Scanned:':<16}{r.scanned}", f"{'Inserted:':<16}{r.inserted}", f"{'Updated:':<16}{r.updated}",
             f"{'Skipped:':<16}{r.skipped} (unchanged)", f"{'Archived:':<16}{r.archived}",
             f"{'Errors:':<16}{r.errors}"]
    for reason, ids in r.error_examples.items():
        lines.append(f"  {reason}: e.g. {', '.join(ids)}")
    lines += [f"{'Elapsed:':<16}{r.elapsed_s:.2f}s", "=" * 50]
    return "\n".join(lines)


def status_report(s: dict[str, Any]) -> str:
    lines = ["=" * 50, "KB STATUS", "=" * 50, f"{'Workspace:':<22}{s['workspace_id']}"]
    for k, v in s["runs_by_kb_status"].items():
        lines.append(f"{'Runs ' + k + ':':<22}{v}")
    lines += [f"{'Runs with regime_oos:':<22}{s['runs_with_regime_oos']}",
              f"{'Eligible (KB trials):':<22}{s['eligible']}",
              f"{'Active trials:':<22}{s['active_trials']}",
              f"{'Archived trials:':<22}{s['archived_trials']}", "-" * 50, "Per strategy (eligible / active):"]
    for strategy in sorted(set(s["eligible_by_strategy"]) | set(s["active_trials_by_strategy"])):
        lines.append(f"  {strategy:<20}{s['eligible_by_strategy'].get(strategy, 0)} / "
                     f"{s['active_trials_by_strategy'].get(strategy, 0)}")
    if s["recent_backfills"]:
        lines += ["-" * 50, "Recent backfills:"]
        for b in s["recent_backfills"]:
            lines.append(f"  {b['id']} {b['kind']:<9} {'dry ' if b['dry_run'] else 'real'} {b['status']}")
    lines.append("=" * 50)
    return "\n".join(lines)


def recommend_report(r: dict[str, Any]) -> str:
    lines = ["=" * 50, "RECOMMENDATION", "=" * 50,
             f"{'Strategy:':<16}{r['query']['strategy_name']}",
             f"{'Regime tags:':<16}{', '.join(r['query']['tags']) or '(none)'}",
             f"{'Status:':<16}{r['status']}", f"{'Confidence:':<16}{r['confidence']:.2f}",
             f"{'Considered:':<16}{r['considered']}", f"{'Supporting:':<16}{len(r['supporting_trials'])}"]
    if r["params"]:
        lines.append("Parameters:")
        for k, v in r["params"].items():
            lines.append(f"  {k:<14}{v}")
    if r["reasons"]:
        lines.append(f"{'Reasons:':<16}{', '.join(r['reasons'])}")
    for action in r["suggested_actions"]:
        lines.append(f"  -> {action}")
    if r["supporting_trials"]:
        lines.append("Top trials (similarity, sharpe, run):")
        for t in r["supporting_trials"][:5]:
            sharpe = t["sharpe"] if t["sharpe"] is not None else "-"
            lines.append(f"  {t['similarity']:.3f}  {sharpe:>6}  {t['run_id']}")
    lines.append("=" * 50)
    return "\n".join(lines)


def regime_from_ohlcv(path: str, symbol: str | None, timeframe: str | None) -> RegimeSnapshot:
    data = load_ohlcv(path, symbol=symbol)
    if len(data.series) != 1:
        raise BadInput(f"OHLCV file {path} holds {len(data.series)} symbols: pass --symbol")
    series = next(iter(data.series.values()))
    end = len(series) - 1
    starts, ends = [max(0, end - REGIME_WINDOW_BARS + 1)], [end]
    import numpy as np  # noqa: PLC0415

    batch = compute_feature_batch(series.high, series.low, series.close, np.array(starts), np.array(ends))
    snap = snapshot_dicts(batch, series.ts, np.array(starts), np.array(ends), source="recommend",
                          timeframe=timeframe, instrument=series.symbol)[0]
    snap["feature_params"] = {}
    return RegimeSnapshot.from_dict(snap)


async def cmd_ingest(args: argparse.Namespace) -> int:
    async with open_database() as db:
        progress = Progress("ingest")
        try:
            result = await ingest(db, args.workspace_id, since=args.since, dry_run=args.dry_run,
                                  batch_size=args.batch_size, progress=progress)
        finally:
            progress.close()
    if args.json:
        print_json(result.to_dict())
    else:
        echo(ingest_report(result))
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    async with open_database() as db:
        status = await kb_status(db, args.workspace_id)
    if args.json:
        print_json(status)
    else:
        echo(status_report(status))
    return 0


async def cmd_recommend(args: argparse.Namespace) -> int:
    if bool(args.ohlcv_file) == bool(args.tags):
        raise BadInput("give the current regime as --ohlcv-file or as --tags (one of them)")
    regime = regime_from_ohlcv(args.ohlcv_file, args.symbol, args.timeframe) if args.ohlcv_file else None
    tags = tuple(t.strip() for t in (args.tags or "").split(",") if t.strip())
    async with open_database() as db:
        result = await recommend(db, RecommendQuery(
            workspace_id=args.workspace_id, strategy_name=args.strategy, regime=regime, tags=tags,
            symbol=args.symbol, timeframe=args.timeframe, top_k=args.top_k))
    if args.json:
        print_json(result)
    else:
        echo(recommend_report(result))
    return 0


async def cmd_seed(args: argparse.Namespace) -> int:
    if not 0.0 <= args.eligible_share <= 1.0:
        raise BadInput(f"--eligible-share is a fraction between 0 and 1, got {args.eligible_share}")
    async with open_database(migrate=True) as db:
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


async def cmd_demo(args: argparse.Namespace) -> int:
    from app.services.kb.demo import run_demo  # noqa: PLC0415

    return await run_demo(args)


async def cmd_serve(args: argparse.Namespace) -> int:
    from app.api.serve import serve  # noqa: PLC0415

    return await serve(args.host, args.port)
