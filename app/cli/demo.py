"""`kb demo`: a demo workspace, its OHLCV, and the whole pipeline with every report."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from app.cli.console import Progress, echo
from app.cli.kb import regime_from_ohlcv
from app.cli.options import opt, positive
from app.cli.render import (
    candidacy_report,
    import_report,
    ingest_report,
    recommend_report,
    regime_report,
    status_report,
)
from app.db import Database
from app.db.embedded import kb_home
from app.db.workspaces import reset_workspace, workspace_job
from app.services.kb.backfill.candidacy import CandidacyOptions, backfill_candidacy
from app.services.kb.backfill.regime import RegimeOptions, backfill_regime
from app.services.kb.importing.service import ImportReport, import_table, open_file
from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, recommend
from app.services.kb.regime.ohlcv import load_ohlcv
from app.services.kb.runs.scan import Hooks
from app.services.kb.status import workspace_status
from app.services.kb.synthetic.demo import SYMBOLS, make_market, make_runs, write_market, write_runs_csv

DEMO_NAMESPACE = uuid.UUID("6f1c2a52-7d0e-4f7b-9a59-2b8d3f0c1e11")


def demo_workspace_id(seed: int) -> uuid.UUID:
    return uuid.uuid5(DEMO_NAMESPACE, f"demo-{seed}")


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="create a demo workspace and run the whole pipeline on it")
    opt(p, "--runs", type=positive(2_000_000), default=3000, help="runs to generate (default 3000)")
    opt(p, "--seed", type=int, default=7, help="random seed (same seed, same data)")
    opt(p, "--data-dir", default=None, help="where to write the demo OHLCV files (default KB_HOME/demo)")
    p.set_defaults(handler=cmd_demo, database="migrate")


async def load_demo(db: Database, workspace_id: uuid.UUID, runs_csv: Path) -> ImportReport:
    """Reset the demo workspace and import its runs from the CSV export, as a user would."""
    async with db.acquire() as conn, conn.transaction():
        await reset_workspace(conn, workspace_id, "demo")
    table, mapping = open_file(runs_csv, None, {}, {})
    progress = Progress("import", unit=table.progress_unit)
    try:
        return await import_table(db, workspace_id, table, mapping, source=runs_csv.name, dry_run=False,
                                  progress=progress)
    finally:
        progress.close()


async def cmd_demo(db: Database, args: argparse.Namespace) -> int:
    workspace_id = demo_workspace_id(args.seed)
    waiting = lambda: echo("another kb demo is building this workspace; waiting for it to finish",  # noqa: E731
                           sys.stderr)
    async with workspace_job(db, workspace_id, waiting):
        return await _demo(db, args)


async def _demo(db: Database, args: argparse.Namespace) -> int:
    started = time.monotonic()
    rng = np.random.default_rng(args.seed)
    workspace_id = demo_workspace_id(args.seed)
    folder = Path(args.data_dir) if args.data_dir else kb_home() / "demo"
    market = make_market(rng)
    ohlcv_path = write_market(market, folder)
    runs = make_runs(workspace_id, market, args.runs, rng)
    runs_csv = write_runs_csv(runs, folder)
    echo(f"demo workspace {workspace_id}: {len(runs)} runs over {', '.join(SYMBOLS)}; OHLCV at {ohlcv_path}")
    echo(f"$ kb import {runs_csv} --workspace-id {workspace_id}")
    echo(import_report((await load_demo(db, workspace_id, runs_csv)).to_dict()))
    data = load_ohlcv(ohlcv_path)
    limit = len(runs)
    for dry in (True, False):
        regime = await backfill_regime(
            db, RegimeOptions(workspace_id=workspace_id, timeframe="1h", limit=limit, dry_run=dry,
                              batch_size=500), data, 3600, Hooks(progress=Progress("backfill-regime")))
        echo(regime_report(regime, workspace=workspace_id, ohlcv_file=ohlcv_path, symbol=None, timeframe="1h",
                           ohlcv_rows=data.rows, date_range=data.date_range(), dropped=data.dropped))
    query = RecommendQuery(workspace_id, "trend_follow",
                           regime=regime_from_ohlcv(str(ohlcv_path), "AAPL", "1h"), top_k=20)
    for dry in (True, False):
        cand = await backfill_candidacy(
            db, CandidacyOptions(workspace_id=workspace_id, limit=limit, dry_run=dry),
            Hooks(progress=Progress("backfill-candidacy")))
        echo(candidacy_report(cand, workspace=workspace_id, since=None, limit=limit))
    echo(status_report((await workspace_status(db, workspace_id)).to_dict()))
    before = (await recommend(db, query)).to_dict()
    echo(ingest_report(await ingest(db, workspace_id)))
    echo(status_report((await workspace_status(db, workspace_id)).to_dict()))
    after = (await recommend(db, query)).to_dict()
    echo(f"recommend() supporting trials before ingest: {len(before['supporting_trials'])}, "
         f"after: {len(after['supporting_trials'])}")
    echo(recommend_report(after))
    echo(f"demo finished in {time.monotonic() - started:.1f}s")
    echo("See it:")
    echo(f"  kb serve                      # then open http://127.0.0.1:8000/?workspace_id={workspace_id}")
    echo(f"  kb report --workspace-id {workspace_id} --out kb-report.html")
    return 0
