"""Argument parsing shared by every command: the one-line usage error, value types, and
environment twins (`KB_<OPTION>`), which are checked only by the command they apply to."""

from __future__ import annotations

import argparse
import math
import os
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from app.errors import BadInput
from app.services.kb.runs.gate import KNOWN_EXPERIMENT_TYPES
from app.services.kb.runs.windows import BadTimestamp, parse_since

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every bad input
        self.exit(2, f"kb: error: {message} (see `kb {self.prog.split()[-1]} --help`)\n")


class EnvText(str):
    """A default taken from an environment twin; argparse converts string defaults with
    the option's type only for the command being run, so a twin meant for one command
    never breaks another."""

    env_name: str

    def __new__(cls, value: str, env_name: str) -> EnvText:
        made = super().__new__(cls, value)
        made.env_name = env_name
        return made


class EnvFlag:
    """A boolean twin, read after parsing (and so only for the command being run)."""

    def __init__(self, raw: str, env_name: str) -> None:
        self.raw = raw
        self.env_name = env_name

    def value(self) -> bool:
        word = self.raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise BadInput(f"environment variable {self.env_name}={self.raw[:40]!r} is not a yes/no value; "
                       f"use one of {', '.join(sorted(TRUE_WORDS | (FALSE_WORDS - {''})))}")


def resolve_env_flags(args: argparse.Namespace) -> None:
    """Turn boolean twins of the chosen command into booleans (unknown words: BadInput)."""
    for name, value in vars(args).items():
        if isinstance(value, EnvFlag):
            setattr(args, name, value.value())


def env_name(flag: str) -> str:
    return "KB_" + flag.lstrip("-").replace("-", "_").upper()


def _typed(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            if isinstance(text, EnvText):
                raise argparse.ArgumentTypeError(f"{exc} (from environment variable {text.env_name})") from None
            raise

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def opt(parser: argparse.ArgumentParser, flag: str, **kw: Any) -> None:
    """Add an option whose default may come from its environment twin `KB_<FLAG>`."""
    name = env_name(flag)
    env = os.environ.get(name)
    if env is not None and kw.get("action") == "store_true":
        kw["default"] = EnvFlag(env, name)
    elif env is not None and env != "":
        kw["default"] = EnvText(env, name)
        kw["required"] = False
    if "type" in kw:
        kw["type"] = _typed(kw["type"])
    kw["help"] = f"{kw.get('help', '')} [env {name}]".strip()
    parser.add_argument(flag, **kw)


def uuid_arg(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text[:80]!r}") from None


def since_arg(text: str) -> datetime:
    try:
        return parse_since(text)
    except BadTimestamp:
        raise argparse.ArgumentTypeError(
            f"not a date or ISO timestamp: {text[:80]!r} (e.g. 2025-01-01 or 2025-01-01T09:30:00Z)"
        ) from None


def positive(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be between 1 and {limit:,}, got {value}")
        return value

    return parse


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text[:40]!r}")
    return value


def experiment_type(text: str) -> str:
    value = text.strip().lower()
    if value not in KNOWN_EXPERIMENT_TYPES:
        raise argparse.ArgumentTypeError(
            f"unknown experiment type {text[:40]!r}; choose one of {', '.join(KNOWN_EXPERIMENT_TYPES)}"
        )
    return value


MAX_LIMIT = 100_000_000
# `--limit all`: no cap (a count beyond any table).
ALL = 2**62


def limit_arg(text: str) -> int:
    """A run count, or `all` for every run the scan finds."""
    if text.strip().lower() == "all":
        return ALL
    return positive(MAX_LIMIT)(text)


limit_arg.__name__ = "limit"


def workspace_options(p: argparse.ArgumentParser, *, create: bool = False) -> None:
    """`--workspace NAME_OR_ID` and `--workspace-id UUID`: one of them names the workspace
    (resolved once the database is open; `create`: a new name makes a new workspace)."""
    made = " (created if missing)" if create else ""
    opt(p, "--workspace", default=None, metavar="NAME_OR_ID", help=f"workspace by name or id{made}")
    opt(p, "--workspace-id", type=uuid_arg, default=None, help=f"workspace by id (a UUID){made}")
    p.set_defaults(workspace_create=create)


def scan_options(p: argparse.ArgumentParser, default_limit: int) -> None:
    """The options every backfill shares (see `ScanOptions`)."""
    workspace_options(p)
    opt(p, "--since", type=since_arg, default=None, help="only runs created at/after this date or timestamp (UTC)")
    opt(p, "--limit", type=limit_arg, default=default_limit,
        help=f"max runs, or `all` (default {default_limit})")
    opt(p, "--dry-run", action="store_true", default=False, help="preview: same evaluation, no writes")
    opt(p, "--batch-size", type=positive(50_000), default=100, help="rows per commit (default 100)")
    opt(p, "--resume", action="store_true", default=False,
        help="continue the last interrupted or limit-reached run with the same configuration")
    opt(p, "--json", action="store_true", default=False, help="print the report as one JSON object")
