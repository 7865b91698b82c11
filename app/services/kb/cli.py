"""The plan's module path for the command line: `python -m app.services.kb.cli ...`.
The command line itself lives in `app.cli`."""

from __future__ import annotations

import sys

from app.cli.backfill import cmd_backfill_candidacy, cmd_backfill_regime
from app.cli.main import amain, build_parser, main

__all__ = ["amain", "build_parser", "cmd_backfill_candidacy", "cmd_backfill_regime", "main"]

if __name__ == "__main__":
    sys.exit(main())
