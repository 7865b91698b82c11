"""The `kb` entry point: build the parser from each command module, open the database
once around the chosen command, and turn known errors into one line and an exit code.
Exit codes: 0 done, 1 failed, 2 bad input, 130 stopped by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from app.cli import backfill, db, demo, importing, kb, report, sync
from app.cli.options import Parser, resolve_env_flags
from app.db import Database, open_database
from app.db.connector import TRANSIENT_ERRORS
from app.db.embedded import is_embedded
from app.errors import BadInput, KBError
from app.services.kb.workspaces import resolve_workspace


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kb", description="Knowledge base of trustworthy backtest runs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in (db, backfill, kb, importing, sync, report, demo):
        module.register(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # asyncpg logs its own reconnect attempts with tracebacks; our retries already say
    # what happened in one line each.
    logging.getLogger("asyncpg").setLevel(logging.DEBUG if verbose else logging.ERROR)


# Transient database errors, minus bare OSError (a file error must not read as a lost connection).
_CONNECTION_LOST = tuple(e for e in TRANSIENT_ERRORS if e is not OSError)
# What ends a command with one line on stderr instead of a traceback (driver errors
# arrive as KBError, translated where the database is opened).
_ENDS_COMMAND: tuple[type[BaseException], ...] = (KBError, *_CONNECTION_LOST)


async def dispatch(args: argparse.Namespace) -> int:
    """Prepare (checks that need no database), open the database as the command needs,
    run its handler."""
    prepare = getattr(args, "prepare", None)
    args.prepared = prepare(args) if prepare is not None else None
    mode = getattr(args, "database", "check")
    handler = args.handler
    if mode == "none":
        code: int = await handler(None, args)
        return code
    # "embedded": the embedded database is ours to migrate; a DATABASE_URL one is migrated on purpose only.
    migrate = mode == "migrate" or (mode == "embedded" and is_embedded())
    async with open_database(migrate=migrate, check=not migrate and mode in ("check", "embedded")) as database:
        if hasattr(args, "workspace_create"):
            args.workspace_id = await _workspace(database, args)
        code = await handler(database, args)
    return code


async def _workspace(db: Database, args: argparse.Namespace) -> uuid.UUID:
    """The workspace a command names with `--workspace` (a name or an id) or `--workspace-id`."""
    ref: str | uuid.UUID | None = args.workspace if args.workspace is not None else args.workspace_id
    if args.workspace is not None and args.workspace_id is not None:
        # An option on the command line wins over the other's environment twin.
        given = {a.split("=", 1)[0] for a in getattr(args, "argv", [])}
        if ("--workspace" in given) == ("--workspace-id" in given):
            raise BadInput("give --workspace or --workspace-id, not both")
        ref = args.workspace if "--workspace" in given else args.workspace_id
    if ref is None:
        raise BadInput("which workspace? give --workspace NAME (see `kb workspaces`) or --workspace-id UUID")
    return await resolve_workspace(db, ref, create=args.workspace_create)


async def amain(argv: Sequence[str] | None = None) -> int:
    """Parse, run one command, map known errors to one line and an exit code."""
    verbose = False
    try:
        args = build_parser().parse_args(argv)
        args.argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
        verbose = args.verbose
        resolve_env_flags(args)
        _configure_logging(verbose)
        return await dispatch(args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    except _ENDS_COMMAND as exc:
        if verbose:
            logging.exception("failed")
        message, code = describe(exc)
        sys.stderr.write(f"kb: error: {message}\n")
        return code


def describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an error that ends a command."""
    if isinstance(exc, KBError):
        return str(exc).splitlines()[0][:2000] if str(exc) else type(exc).__name__, exc.exit_code
    text = str(exc).strip()
    first = text.splitlines()[0][:500] if text else type(exc).__name__
    return (f"lost the database connection ({first}); committed work is kept, "
            "run the command again (backfills: --resume)"), 1


def main(argv: Sequence[str] | None = None) -> int:
    # uvloop: a faster event loop for asyncpg and the HTTP server; plain asyncio otherwise.
    try:
        import uvloop  # noqa: PLC0415

        run: Callable[[Coroutine[Any, Any, int]], int] = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        return run(amain(argv))
    except KeyboardInterrupt:
        sys.stderr.write("kb: aborted; committed batches are kept (resume with --resume)\n")
        return 130
