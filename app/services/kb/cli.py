"""The `kb` command line (also `python -m app.services.kb.cli`).

A thin shell: parse arguments (every option has a `KB_<OPTION>` environment twin),
run one async command function, turn known errors into one line and an exit code.
Exit codes: 0 done, 1 failed, 2 bad input, 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from app.db.connector import TRANSIENT_ERRORS
from app.errors import BadInput, KBError
from app.services.kb import commands
from app.services.kb.candidacy import KNOWN_EXPERIMENT_TYPES
from app.services.kb.windows import BadTimestamp, parse_since

# The plan names these functions; they live in `commands`.
cmd_backfill_candidacy = commands.cmd_backfill_candidacy
cmd_backfill_regime = commands.cmd_backfill_regime


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every bad input
        self.exit(2, f"kb: error: {message} (see `kb {self.prog.split()[-1]} --help`)\n")


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _since(text: str) -> datetime:
    try:
        return parse_since(text)
    except BadTimestamp:
        raise argparse.ArgumentTypeError(
            f"not a date or ISO timestamp: {text!r} (e.g. 2025-01-01 or 2025-01-01T09:30:00Z)"
        ) from None


def _positive(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be between 1 and {limit:,}, got {value}")
        return value

    return parse


def _fraction_or_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _experiment_type(text: str) -> str:
    value = text.strip().lower()
    if value not in KNOWN_EXPERIMENT_TYPES:
        raise argparse.ArgumentTypeError(
            f"unknown experiment type {text!r}; choose one of {', '.join(KNOWN_EXPERIMENT_TYPES)}"
        )
    return value


def _env_name(flag: str) -> str:
    return "KB_" + flag.lstrip("-").replace("-", "_").upper()


def _opt(parser: argparse.ArgumentParser, flag: str, **kw: Any) -> None:
    """Add an option whose default may come from its environment twin `KB_<FLAG>`."""
    env = os.environ.get(_env_name(flag))
    action = kw.get("action")
    if env is not None and env != "":
        if action == "store_true":
            kw["default"] = env.strip().lower() in ("1", "true", "yes", "on")
        else:
            convert = kw.get("type", str)
            try:
                kw["default"] = convert(env)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise BadInput(f"environment variable {_env_name(flag)}: {exc}") from None
            kw["required"] = False
    help_text = kw.get("help", "")
    kw["help"] = f"{help_text} [env {_env_name(flag)}]".strip()
    parser.add_argument(flag, **kw)


MAX_LIMIT = 100_000_000


def _backfill_common(p: argparse.ArgumentParser, default_limit: int) -> None:
    _opt(p, "--workspace-id", type=_uuid, required=True, help="target workspace (UUID)")
    _opt(p, "--since", type=_since, default=None, help="only runs created at/after this date or timestamp (UTC)")
    _opt(p, "--limit", type=_positive(MAX_LIMIT), default=default_limit, help=f"max runs (default {default_limit})")
    _opt(p, "--dry-run", action="store_true", default=False, help="preview: same evaluation, no writes")
    _opt(p, "--batch-size", type=_positive(50_000), default=100, help="rows per commit (default 100)")
    _opt(p, "--resume", action="store_true", default=False,
         help="continue the last interrupted or limit-reached run with the same configuration")
    _opt(p, "--json", action="store_true", default=False, help="print the report as one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kb", description="Knowledge base of trustworthy backtest runs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = sub.add_parser("db", help="database schema: upgrade, status, dump-schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    db_sub.add_parser("upgrade", help="apply pending migrations (safe to run concurrently)")
    db_sub.add_parser("status", help="list applied and pending migrations")
    db_sub.add_parser("dump-schema", help="print the schema description the tests compare against")

    p = sub.add_parser("backfill-candidacy", help="mark eligible test variants as KB candidates")
    _backfill_common(p, 1000)
    _opt(p, "--experiment-type", type=_experiment_type, default="sweep",
         help="experiment type for runs that record none (default sweep)")
    _opt(p, "--require-regime", action="store_true", default=False, help="reject runs without regime_oos")
    _opt(p, "--min-trades", type=_positive(10**9), default=None, help="gate: minimum OOS trades (default 5)")
    _opt(p, "--max-drawdown", type=_fraction_or_number, default=None,
         help="gate: maximum OOS drawdown as a fraction (default 0.25)")
    _opt(p, "--min-sharpe", type=_fraction_or_number, default=None, help="gate: minimum OOS Sharpe (default 0.1)")
    _opt(p, "--explain", type=_uuid, default=None, metavar="RUN_ID",
         help="print every gate for one run instead of backfilling")

    p = sub.add_parser("backfill-regime", help="compute missing OOS regime snapshots from an OHLCV file")
    _backfill_common(p, 500)
    _opt(p, "--ohlcv-file", required=True, help="CSV, JSON or Parquet OHLCV file")
    _opt(p, "--symbol", default=None, help="only runs of this symbol (and the file rows of it)")
    _opt(p, "--timeframe", default="1d", help="bar timeframe of the file, e.g. 1h, 1d (default 1d)")

    p = sub.add_parser("backfill-undo", help="revert what one candidacy backfill changed")
    p.add_argument("backfill_run_id", type=_uuid, metavar="RUN_ID", help="id from the report or `kb backfill-runs`")
    _opt(p, "--json", action="store_true", default=False, help="print the result as JSON")

    p = sub.add_parser("backfill-runs", help="list backfill runs of a workspace (the ledger)")
    _opt(p, "--workspace-id", type=_uuid, required=True, help="workspace (UUID)")
    _opt(p, "--limit", type=_positive(10_000), default=20, help="how many, newest first")
    _opt(p, "--json", action="store_true", default=False, help="print as JSON")

    _add_kb_commands(sub)
    return parser


def _add_kb_commands(sub: Any) -> None:
    p = sub.add_parser("demo", help="create a demo workspace and run the whole pipeline on it")
    _opt(p, "--runs", type=_positive(2_000_000), default=3000, help="runs to generate (default 3000)")
    _opt(p, "--seed", type=int, default=7, help="random seed (same seed, same data)")
    _opt(p, "--data-dir", default=None, help="where to write the demo OHLCV files (default KB_HOME/demo)")

    p = sub.add_parser("seed", help="bulk-load synthetic runs with COPY (benchmarks)")
    _opt(p, "--workspace-id", type=_uuid, required=True, help="workspace to fill (created if missing)")
    _opt(p, "--runs", type=_positive(50_000_000), default=100_000, help="how many runs")
    _opt(p, "--seed", type=int, default=1, help="random seed")
    _opt(p, "--eligible-share", type=_fraction_or_number, default=0.3,
         help="share of runs that pass the default gate (default 0.3)")

    p = sub.add_parser("ingest", help="turn candidate/promoted runs into KB trials")
    _opt(p, "--workspace-id", type=_uuid, required=True, help="workspace (UUID)")
    _opt(p, "--since", type=_since, default=None, help="only runs created at/after this date")
    _opt(p, "--dry-run", action="store_true", default=False, help="count what would change, write nothing")
    _opt(p, "--batch-size", type=_positive(50_000), default=1000, help="trials per commit (default 1000)")
    _opt(p, "--json", action="store_true", default=False, help="print the report as JSON")

    p = sub.add_parser("status", help="KB status of a workspace")
    _opt(p, "--workspace-id", type=_uuid, required=True, help="workspace (UUID)")
    _opt(p, "--json", action="store_true", default=False, help="print as JSON")

    p = sub.add_parser("recommend", help="recommend strategy parameters for a market regime")
    _opt(p, "--workspace-id", type=_uuid, required=True, help="workspace (UUID)")
    _opt(p, "--strategy", required=True, help="strategy name")
    _opt(p, "--ohlcv-file", default=None, help="OHLCV file; its latest bars define the current regime")
    _opt(p, "--symbol", default=None, help="symbol (selects file rows; filters trials)")
    _opt(p, "--timeframe", default=None, help="timeframe (filters trials)")
    _opt(p, "--tags", default=None, help="comma-separated regime tags instead of OHLCV")
    _opt(p, "--top-k", type=_positive(1000), default=20, help="supporting trials to use (default 20)")
    _opt(p, "--json", action="store_true", default=False, help="print as JSON")

    p = sub.add_parser("serve", help="run the HTTP API")
    _opt(p, "--host", default="127.0.0.1", help="bind address (non-loopback needs KB_API_TOKEN)")
    _opt(p, "--port", type=_positive(65535), default=8000, help="port (default 8000)")


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
# What ends a command with one line on stderr instead of a traceback.
_ENDS_COMMAND: tuple[type[BaseException], ...] = (KBError, *_CONNECTION_LOST, asyncpg.PostgresError)


async def amain(argv: Sequence[str] | None = None) -> int:
    """Parse, run one command, map known errors to one line and an exit code."""
    try:
        args = build_parser().parse_args(argv)
    except KBError as exc:
        sys.stderr.write(f"kb: error: {exc}\n")
        return exc.exit_code
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    _configure_logging(args.verbose)
    try:
        return await commands.dispatch(args)
    except _ENDS_COMMAND as exc:
        if args.verbose:
            logging.exception("failed")
        message, code = _describe(exc)
        sys.stderr.write(f"kb: error: {message}\n")
        return code


def _describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an error that ends a command."""
    if isinstance(exc, KBError):
        return str(exc), exc.exit_code
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, _CONNECTION_LOST):
        return (f"lost the database connection ({first}); committed work is kept, "
                "run the command again (backfills: --resume)"), 1
    return f"the database refused the command: {first}", 1


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


if __name__ == "__main__":
    sys.exit(main())
