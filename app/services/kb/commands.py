"""One async function per CLI command. They print reports (stdout) and progress (stderr);
the library functions they call never print."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import orjson

from app.db.migrate import dump_schema, status
from app.db.queries import q
from app.errors import BadInput
from app.services.kb import kb_commands
from app.services.kb.backfill.candidacy import CandidacyOptions, backfill_candidacy, explain_run
from app.services.kb.backfill.engine import BackfillResult
from app.services.kb.backfill.report import candidacy_report, ledger_row_json, result_json
from app.services.kb.backfill.undo import undo_backfill
from app.services.kb.candidacy import CandidacyConfig
from app.services.kb.console import Progress, StopFlag, echo
from app.services.kb.session import open_database


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


async def dispatch(args: argparse.Namespace) -> int:
    handler = _HANDLERS[args.command]
    return await handler(args)


async def cmd_db(args: argparse.Namespace) -> int:
    async with open_database(migrate=args.db_command == "upgrade") as db, db.acquire() as conn:
        if args.db_command == "upgrade":
            states = await status(conn)
            echo(f"schema up to date: {len(states)} migration(s) applied")
        elif args.db_command == "status":
            for s in await status(conn):
                mark = f"applied {s.applied_at}" if s.applied else "pending"
                echo(f"{s.version:04d}_{s.name}  {mark}")
        else:
            sys.stdout.write(await dump_schema(conn))
    return 0


def _gate_config(args: argparse.Namespace) -> CandidacyConfig:
    defaults = CandidacyConfig()
    return CandidacyConfig(
        require_regime=bool(args.require_regime),
        min_trades=args.min_trades if args.min_trades is not None else defaults.min_trades,
        max_drawdown=args.max_drawdown if args.max_drawdown is not None else defaults.max_drawdown,
        max_overfit_gap=defaults.max_overfit_gap,
        min_sharpe=args.min_sharpe if args.min_sharpe is not None else defaults.min_sharpe,
    )


def _exit_code(result: BackfillResult) -> int:
    return 130 if result.status == "interrupted" else 0


async def cmd_backfill_candidacy(args: argparse.Namespace) -> int:
    """The plan's `backfill-candidacy`."""
    if args.max_drawdown is not None and not 0 <= args.max_drawdown <= 1:
        raise BadInput(f"--max-drawdown is a fraction between 0 and 1, got {args.max_drawdown}")
    opts = CandidacyOptions(
        workspace_id=args.workspace_id,
        since=args.since,
        limit=args.limit,
        dry_run=args.dry_run,
        experiment_type=args.experiment_type,
        batch_size=args.batch_size,
        resume=args.resume,
        gate=_gate_config(args),
    )
    async with open_database() as db:
        if args.explain is not None:
            explanation = await explain_run(db, args.explain, opts)
            if args.json:
                _print_json(dataclasses.asdict(explanation))
            else:
                echo(_explain_text(explanation))
            return 0
        stop = StopFlag()
        progress = Progress("backfill-candidacy")
        stop.install()
        try:
            result = await backfill_candidacy(db, opts, progress=progress, should_stop=stop)
        finally:
            stop.uninstall()
            progress.close()
    if args.json:
        _print_json(result_json(result, workspace_id=str(opts.workspace_id),
                                since=opts.since.isoformat() if opts.since else None, limit=opts.limit))
    else:
        echo(candidacy_report(result, workspace=opts.workspace_id,
                              since=opts.since.date() if opts.since and opts.since.time() == opts.since.min.time()
                              else opts.since, limit=opts.limit))
    return _exit_code(result)


def _explain_text(e: Any) -> str:
    lines = [f"Run {e.run_id} (experiment type {e.experiment_type})"]
    if not e.selected:
        lines.append("Not picked up by backfill-candidacy: " + "; ".join(e.not_selected_because))
    for c in e.checks:
        verdict = {True: "pass", False: "FAIL", None: "skip"}[c.passed]
        note = f"  ({c.note})" if c.note else ""
        lines.append(f"  {c.gate:<16} value={c.value!s:<12} threshold={c.threshold!s:<22} {verdict}{note}")
    lines.append(f"Decision: {'eligible' if e.eligible else 'ineligible'} ({e.reason})")
    return "\n".join(lines)


async def cmd_backfill_regime(args: argparse.Namespace) -> int:
    """The plan's `backfill-regime`."""
    from app.services.kb.backfill.regime_cmd import run_regime_command  # noqa: PLC0415

    return await run_regime_command(args)


async def cmd_backfill_undo(args: argparse.Namespace) -> int:
    async with open_database() as db:
        result = await undo_backfill(db, args.backfill_run_id)
    if args.json:
        _print_json(dataclasses.asdict(result))
        return 0
    echo(f"backfill {result.backfill_run_id}: changed {result.changed_by_backfill} run(s); "
         f"reverted {result.reverted}; left alone {result.changed_since} (changed again since)")
    for run_id, kb_status in result.changed_since_examples:
        echo(f"  left alone: {run_id} (now {kb_status})")
    echo(f"undo recorded as {result.undo_run_id}")
    return 0


async def cmd_backfill_runs(args: argparse.Namespace) -> int:
    async with open_database() as db:
        rows = await db.fetch(q("list_backfill_runs"), args.workspace_id, args.limit)
    items = [ledger_row_json(r) for r in rows]
    if args.json:
        _print_json(items)
        return 0
    if not items:
        echo("no backfill runs in this workspace")
    for it in items:
        counts = it["counts"]
        echo(f"{it['id']}  {it['kind']:<9} {'dry ' if it['dry_run'] else 'real'} {it['status']:<13} "
             f"scanned={counts.get('scanned', counts.get('reverted', 0))} updated={counts.get('updated', 0)} "
             f"started={it['started_at'][:19]}")
    return 0


_HANDLERS = {
    "db": cmd_db,
    "backfill-candidacy": cmd_backfill_candidacy,
    "backfill-regime": cmd_backfill_regime,
    "backfill-undo": cmd_backfill_undo,
    "backfill-runs": cmd_backfill_runs,
    "demo": kb_commands.cmd_demo,
    "seed": kb_commands.cmd_seed,
    "ingest": kb_commands.cmd_ingest,
    "status": kb_commands.cmd_status,
    "recommend": kb_commands.cmd_recommend,
    "serve": kb_commands.cmd_serve,
}
