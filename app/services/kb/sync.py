"""`kb sync`: a researcher's whole update in one call. Import the given files, compute
regime snapshots for every symbol that has an OHLCV file, run the candidacy gate, ingest.

Each step is incremental: an import skips rows already imported from the same source,
the backfills read only runs that still need them (guarded writes, one ledger row each),
and ingest rewrites only trials whose content changed. A second sync with the same files
changes nothing and its summary says so."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.db import Database
from app.db import backfill as runs
from app.errors import BadInput
from app.services.kb.backfill.candidacy import CandidacyOptions, backfill_candidacy
from app.services.kb.backfill.engine import BackfillResult
from app.services.kb.backfill.regime import RegimeOptions, backfill_regime
from app.services.kb.importing.service import import_table, open_file
from app.services.kb.ingest import ingest
from app.services.kb.regime.ohlcv import check_timeframe, load_ohlcv
from app.services.kb.runs.deflated import periods_per_year
from app.services.kb.runs.scan import Hooks
from app.services.kb.workspaces import resolve_workspace

_BAR_SIZE_SUFFIX = re.compile(r"(.+?)[_\-. ](\d*[A-Za-z])")
OHLCV_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".jsonl", ".ndjson", ".parquet", ".pq")
NO_LIMIT = 2**62
HooksFor = Callable[[str], Hooks]


@dataclass(frozen=True)
class SyncOptions:
    workspace: str | uuid.UUID
    ohlcv: tuple[Path, ...] = ()
    imports: tuple[Path, ...] = ()
    batch_size: int = 1000


@dataclass(frozen=True)
class SyncResult:
    workspace_id: uuid.UUID
    imports: list[dict[str, Any]]
    regime: list[dict[str, Any]]
    symbols_without_ohlcv: dict[str, int]
    candidacy: dict[str, Any]
    ingest: dict[str, Any]
    elapsed_s: float = 0.0
    interrupted: bool = False  # stopped (Ctrl-C) between or inside steps; run sync again to finish
    changed: bool = field(init=False)

    def __post_init__(self) -> None:
        moved = (sum(i["imported"] for i in self.imports) + sum(r["updated"] for r in self.regime)
                 + self.candidacy.get("updated", 0) + self.ingest.get("inserted", 0) + self.ingest.get("updated", 0)
                 + self.ingest.get("archived", 0) + self.ingest.get("evidence", 0))
        object.__setattr__(self, "changed", moved > 0)

    def to_dict(self) -> dict[str, Any]:
        return {"workspace_id": str(self.workspace_id), "changed": self.changed, "imports": self.imports,
                "regime": self.regime, "symbols_without_ohlcv": self.symbols_without_ohlcv,
                "candidacy": self.candidacy, "ingest": self.ingest, "interrupted": self.interrupted,
                "elapsed_s": round(self.elapsed_s, 3)}


def ohlcv_files(paths: tuple[Path, ...]) -> list[Path]:
    """The OHLCV files named, directories expanded to the price files in them (sorted)."""
    found: list[Path] = []
    for given in paths:
        p = given.expanduser()
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in OHLCV_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise BadInput(f"OHLCV path {p} does not exist")
    return found


def symbol_of_file(path: Path) -> str:
    """A price file without a symbol column names its symbol: `SPY.csv`, `spy_1d.parquet`
    (a trailing bar size is dropped), `BRK-B.csv`, `EUR_USD.csv`."""
    stem = path.stem.strip()
    match = _BAR_SIZE_SUFFIX.fullmatch(stem)
    if match and periods_per_year(match.group(2)) is not None:
        stem = match.group(1)
    return stem.upper()


def _counts(result: BackfillResult) -> dict[str, Any]:
    c = result.counters
    return {"run_id": str(result.run_id), "status": result.status, "scanned": c.scanned, "passed": c.passed,
            "rejected": c.rejected, "updated": c.updated, "reasons": dict(c.reasons.most_common())}


async def _import_all(db: Database, workspace_id: uuid.UUID, files: tuple[Path, ...]) -> list[dict[str, Any]]:
    out = []
    for path in files:
        table, mapping = open_file(path.expanduser(), None, {}, {})
        report = await import_table(db, workspace_id, table, mapping, source=path.name, dry_run=False)
        out.append({"file": str(path), "rows": report.rows, "imported": report.imported,
                    "already_present": report.already_present, "invalid": report.invalid,
                    "invalid_by_reason": report.invalid_by_reason})
    return out


async def _regimes(db: Database, workspace_id: uuid.UUID, files: list[Path], batch_size: int,
                   hooks: HooksFor) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A regime backfill per symbol that has runs without a snapshot and a price file."""
    pending = await runs.runs_without_regime_by_symbol(db, workspace_id)
    # A symbol may have a file per bar size: each runs its backfill (runs of another bar
    # size are skipped there as timeframe_mismatch and computed by their own file).
    by_symbol: dict[str, list[tuple[Path, bool]]] = {}
    for path in files:
        data = load_ohlcv(path)
        names = [str(s).upper() for s in data.series] if data.has_symbol_column else [symbol_of_file(path)]
        for name in names:
            by_symbol.setdefault(name, []).append((path, data.has_symbol_column))
    done = []
    for symbol, count in pending.items():
        for path, has_column in by_symbol.get(symbol or "", []):
            data = load_ohlcv(path, symbol=symbol if has_column else None)
            timeframe, bar_seconds = check_timeframe(data, None)
            opts = RegimeOptions(workspace_id=workspace_id, symbol=symbol, timeframe=timeframe, limit=NO_LIMIT,
                                 batch_size=batch_size)
            result = await backfill_regime(db, opts, data, bar_seconds, hooks(f"regime {symbol} {timeframe}"))
            done.append({"symbol": symbol, "file": str(path), "timeframe": timeframe, "pending": count,
                         **_counts(result)})
    missing = {str(s or "(no symbol)"): n for s, n in pending.items() if s is None or s not in by_symbol}
    return done, missing


async def sync(db: Database, opts: SyncOptions, hooks: HooksFor | None = None,
               should_stop: Callable[[], bool] = lambda: False) -> SyncResult:
    """Import, regime backfill per symbol with prices, candidacy, ingest; see the module.
    `should_stop` is polled between batches and between steps: committed work is kept and
    the result says `interrupted`."""
    started = time.monotonic()
    hooks = hooks or (lambda _: Hooks(should_stop=should_stop))
    files = ohlcv_files(opts.ohlcv)  # every path checked before any write
    for path in opts.imports:
        if not path.expanduser().is_file():
            raise BadInput(f"import file {path} does not exist")
    workspace_id = await resolve_workspace(db, opts.workspace, create=bool(opts.imports))
    imported = await _import_all(db, workspace_id, opts.imports)

    def stopped(**done: Any) -> SyncResult:
        return SyncResult(workspace_id, imported, done.get("regime", []), done.get("missing", {}),
                          done.get("candidacy", {}), {}, time.monotonic() - started, interrupted=True)

    if should_stop():
        return stopped()
    regime, missing = await _regimes(db, workspace_id, files, opts.batch_size, hooks)
    if should_stop() or any(r["status"] == "interrupted" for r in regime):
        return stopped(regime=regime, missing=missing)
    cand = await backfill_candidacy(db, CandidacyOptions(workspace_id=workspace_id, limit=NO_LIMIT,
                                                         batch_size=opts.batch_size), hooks("candidacy"))
    if should_stop() or cand.status == "interrupted":
        return stopped(regime=regime, missing=missing, candidacy=_counts(cand))
    ing = await ingest(db, workspace_id)
    return SyncResult(workspace_id, imported, regime, missing, _counts(cand),
                      {k: v for k, v in ing.to_dict().items() if k not in ("workspace_id", "dry_run")},
                      time.monotonic() - started)
