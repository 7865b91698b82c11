"""`kb report`: the dashboard's views of one workspace as a single offline HTML file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from app.cli.console import echo
from app.cli.options import opt, workspace_options
from app.db import Database
from app.errors import BadInput
from app.files import write_whole
from app.services.kb.dashboard import report_data
from app.web import report_page


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="write the dashboard of a workspace as one self-contained HTML file")
    workspace_options(p)
    opt(p, "--out", required=True, help="the HTML file to write")
    p.set_defaults(handler=cmd_report, prepare=_check_out, database="embedded")


def _check_out(args: argparse.Namespace) -> Path:
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise BadInput(f"--out {out} is a directory; give a file name such as {out / 'kb-report.html'}")
    if not out.parent.is_dir():
        raise BadInput(f"--out {out}: the folder {out.parent} does not exist")
    return out


async def cmd_report(db: Database, args: argparse.Namespace) -> int:
    started = time.monotonic()
    out: Path = args.prepared
    html = report_page(await report_data(db, args.workspace_id))
    write_whole(out, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    echo(f"wrote {out} ({len(html.encode()) / 1e6:.1f} MB) in {time.monotonic() - started:.1f}s; "
         f"open it in a browser, no server needed")
    return 0
