"""Reports in the plan's layouts, and their JSON twins."""

from __future__ import annotations

from typing import Any

import orjson

from app.services.kb.backfill.counters import Counters
from app.services.kb.backfill.engine import BackfillResult

WIDTH = 50
RULE = "=" * WIDTH
THIN = "-" * WIDTH


def _label(name: str, value: object) -> str:
    return f"{name + ':':<16}{value}"


def _updated(result: BackfillResult) -> str:
    return "0 (dry run)" if result.dry_run else str(result.counters.updated)


def _reasons(counters: Counters, indent: str, width: int) -> list[str]:
    lines = []
    for reason, count in counters.reasons.most_common():
        lines.append(f"{indent}{reason + ':':<{max(width, len(reason) + 2)}}{count}")
        examples = counters.examples.get(reason)
        if examples:
            lines.append(f"{indent}    e.g. {', '.join(examples)}")
    return lines


def _footer(result: BackfillResult) -> list[str]:
    lines = [THIN, _label("Backfill Run", result.run_id), _label("Status", result.status)]
    if result.counters.changed_concurrently:
        lines.append(_label("Changed Meanwhile", f"{result.counters.changed_concurrently} (left untouched)"))
    if result.resumed:
        lines.append(_label("Run Totals", f"scanned {result.totals.scanned}, updated {result.totals.updated}"))
    if result.status == "limit_reached":
        lines.append("More runs may remain: continue with the same flags plus --resume.")
    elif result.status == "interrupted":
        lines.append("Stopped early; committed batches are kept: continue with --resume.")
    lines.append(_label("Elapsed", f"{result.elapsed_s:.2f}s"))
    return lines


def candidacy_report(result: BackfillResult, *, workspace: object, since: object, limit: int) -> str:
    c = result.counters
    lines = [
        RULE,
        "BACKFILL CANDIDACY REPORT",
        RULE,
        _label("Workspace", workspace),
        _label("Since", since if since is not None else "(all)"),
        _label("Limit", limit),
        _label("Dry Run", result.dry_run),
        THIN,
        _label("Total Scanned", c.scanned),
        _label("Eligible", c.passed),
        _label("Ineligible", c.rejected),
        _label("Updated", _updated(result)),
        THIN,
        "Rejection Reasons:",
        *(_reasons(c, "  ", 26) or ["  (none)"]),
        *_footer(result),
        RULE,
    ]
    return "\n".join(lines)


def regime_report(
    result: BackfillResult,
    *,
    workspace: object,
    ohlcv_file: object,
    symbol: object,
    timeframe: str,
    ohlcv_rows: int,
    date_range: str,
    dropped: dict[str, int],
) -> str:
    c = result.counters
    lines = [
        RULE,
        "BACKFILL REGIME REPORT",
        RULE,
        _label("Workspace", workspace),
        _label("OHLCV File", ohlcv_file),
        _label("Symbol", symbol if symbol is not None else "(per run)"),
        _label("Timeframe", timeframe),
        _label("OHLCV Rows", ohlcv_rows),
        _label("Date Range", date_range),
    ]
    if any(dropped.values()):
        lines.append(_label("OHLCV Dropped", ", ".join(f"{k} {v}" for k, v in dropped.items() if v)))
    lines += [
        _label("Dry Run", result.dry_run),
        THIN,
        _label("Total Scanned", c.scanned),
        _label("Computed", c.passed),
        _label("Skipped", c.rejected),
        *_reasons(c, "  - ", 30),
        _label("Updated", _updated(result)),
        *_footer(result),
        RULE,
    ]
    return "\n".join(lines)


def result_json(result: BackfillResult, **extra: Any) -> dict[str, Any]:
    c = result.counters
    return {
        "backfill_run_id": str(result.run_id),
        "kind": result.kind,
        "status": result.status,
        "dry_run": result.dry_run,
        **extra,
        "total_scanned": c.scanned,
        "passed": c.passed,
        "rejected": c.rejected,
        "updated": c.updated,
        "changed_concurrently": c.changed_concurrently,
        "reasons": dict(c.reasons.most_common()),
        "examples": c.examples,
        "run_totals": result.totals.to_dict(),
        "resumed": result.resumed,
        "elapsed_s": round(result.elapsed_s, 3),
    }


def ledger_row_json(r: Any) -> dict[str, Any]:
    """One `list_backfill_runs` row as JSON-ready data (CLI `backfill-runs` and the API)."""
    return {
        "id": str(r["id"]), "kind": r["kind"], "dry_run": r["dry_run"], "status": r["status"],
        "config": orjson.loads(r["config"]), "counts": orjson.loads(r["counts"]),
        "started_at": r["started_at"].isoformat(), "heartbeat_at": r["heartbeat_at"].isoformat(),
        "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
        "invocations": r["invocations"], "error": r["error"],
    }
