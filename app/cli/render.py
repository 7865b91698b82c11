"""Every text report the CLI prints (the plan's layouts and the KB's), their JSON twins,
and the one JSON printer."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from app.services.kb.backfill.counters import Counters
from app.services.kb.backfill.engine import BackfillResult

if TYPE_CHECKING:
    from app.services.kb.backfill.candidacy import Explanation
    from app.services.kb.backfill.undo import UndoResult
    from app.services.kb.ingest import IngestResult

T = TypeVar("T")
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


def _footer(result: BackfillResult, continue_with: str = "") -> list[str]:
    lines = [THIN, _label("Backfill Run", result.run_id), _label("Status", result.status)]
    if result.counters.changed_concurrently:
        lines.append(_label("Changed Meanwhile", f"{result.counters.changed_concurrently} (left untouched)"))
    if result.resumed:
        lines.append(_label("Run Totals", f"scanned {result.totals.scanned}, updated {result.totals.updated}"))
    if result.status == "limit_reached":
        left = "more runs may remain" if result.remaining is None else f"{result.remaining:,} run(s) remain"
        lines.append(_label("Remaining", left))
        if continue_with:
            lines.append(f"Continue with: {continue_with}")
    elif result.status == "interrupted":
        lines.append("Stopped early; committed batches are kept: continue with --resume.")
    lines.append(_label("Elapsed", f"{result.elapsed_s:.2f}s"))
    return lines


def candidacy_report(result: BackfillResult, *, workspace: object, since: object, limit: int | str,
                     continue_with: str = "") -> str:
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
        *_footer(result, continue_with),
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
    continue_with: str = "",
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
        *[_label("Note", f"{count} written without ex-ante snapshot ({note})") for note, count in result.notes.items()],
        *_footer(result, continue_with),
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
        "notes": result.notes,
        "remaining": result.remaining,
        "elapsed_s": round(result.elapsed_s, 3),
    }


def print_json(value: Any) -> None:
    """Dicts, lists and dataclasses (UUIDs and datetimes as strings) as indented JSON."""
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
                                  default=str).decode() + "\n")


def show(as_json: bool, value: T, text: Callable[[T], str]) -> None:
    """A command's result: JSON for machines, else its text report."""
    if as_json:
        print_json(value)
    else:
        sys.stdout.write(text(value) + "\n")


def explain_text(e: Explanation) -> str:
    lines = [f"Run {e.run_id} (experiment type {e.experiment_type})"]
    if not e.selected:
        lines.append("Not picked up by backfill-candidacy: " + "; ".join(e.not_selected_because))
    for c in e.checks:
        verdict = {True: "pass", False: "FAIL", None: "skip"}[c.passed]
        note = f"  ({c.note})" if c.note else ""
        lines.append(f"  {c.gate:<16} value={c.value!s:<12} threshold={c.threshold!s:<22} {verdict}{note}")
    lines.append(f"Decision: {'eligible' if e.eligible else 'ineligible'} ({e.reason})")
    return "\n".join(lines)


def undo_text(result: UndoResult) -> str:
    lines = [f"backfill {result.backfill_run_id}: changed {result.changed_by_backfill} run(s); "
             f"reverted {result.reverted}; already undone {result.already_undone}; "
             f"left alone {result.changed_since} (changed again since)"]
    lines += [f"  left alone: {run_id} (now {kb_status})" for run_id, kb_status in result.changed_since_examples]
    lines.append(f"undo recorded as {result.undo_run_id}")
    return "\n".join(lines)


def ledger_text(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no backfill runs in this workspace"
    lines = []
    for it in items:
        counts = it["counts"]
        lines.append(f"{it['id']}  {it['kind']:<9} {'dry ' if it['dry_run'] else 'real'} {it['status']:<13} "
                     f"scanned={counts.get('scanned', counts.get('reverted', 0))} "
                     f"updated={counts.get('updated', 0)} started={it['started_at'][:19]}")
    return "\n".join(lines)


def sync_report(r: dict[str, Any]) -> str:
    lines = [RULE, "KB SYNC REPORT", RULE, _label("Workspace", r["workspace_id"]), THIN]
    for i in r["imports"]:
        lines.append(f"import {i['file']}: {i['rows']:,} rows, {i['imported']:,} new, "
                     f"{i['already_present']:,} already present, {i['invalid']:,} invalid")
    for g in r["regime"]:
        lines.append(f"regime {g['symbol']} ({g['timeframe']}, {g['file']}): {g['scanned']:,} scanned, "
                     f"{g['updated']:,} updated, {g['rejected']:,} skipped {g['reasons'] or ''}".rstrip())
    for symbol, n in r["symbols_without_ohlcv"].items():
        lines.append(f"regime {symbol}: {n:,} run(s) without a snapshot and no OHLCV file given")
    c, i = r["candidacy"], r["ingest"]
    if c:
        lines.append(f"candidacy: {c['scanned']:,} scanned, {c['updated']:,} became candidates")
    if i:
        lines.append(f"ingest: {i['inserted']:,} trials added, {i['updated']:,} updated, {i['archived']:,} archived, "
                     f"{i['evidence']:,} evidence rows changed")
    if r.get("interrupted"):
        lines.append("Stopped early: committed work is kept; run the same kb sync again to finish.")
    lines += [THIN,
              "Changed: " + ("yes" if r["changed"] else "nothing (the KB was already up to date)"),
              _label("Elapsed", f"{r['elapsed_s']:.2f}s"), RULE]
    return "\n".join(lines)


def workspaces_text(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no workspaces yet: `kb import FILE --workspace NAME` creates one"
    width = max(len(w["name"]) for w in items)
    lines = [f"{'name':<{width}}  {'id':<36}  {'runs':>10}  {'trials':>8}  created"]
    lines += [f"{w['name']:<{width}}  {w['id']:<36}  {w['runs']:>10,}  {w['trials']:>8,}  {w['created_at'][:19]}"
              for w in items]
    return "\n".join(lines)


def ingest_report(r: IngestResult) -> str:
    mode = "incremental (runs written since the last ingest)" if r.mode == "incremental" else "full (every run)"
    lines = [RULE, "KB INGEST REPORT", RULE, _label("Workspace", r.workspace_id), _label("Dry Run", r.dry_run),
             _label("Read", mode), THIN,
             _label("Scanned", r.scanned), _label("Inserted", r.inserted), _label("Updated", r.updated),
             _label("Skipped", f"{r.skipped} (unchanged)"), _label("Archived", r.archived),
             _label("Evidence", r.evidence)]
    lines += [f"  kept, {reason}: {n}" for reason, n in sorted(r.evidence_notes.items())]
    lines += [f"  not evidence, {reason}: {n}" for reason, n in sorted(r.evidence_skipped.items())]
    lines.append(_label("Errors", r.errors))
    if r.deleted_meanwhile:
        lines.append(f"  {r.deleted_meanwhile} run(s) deleted while the ingest ran: left out")
    if r.retried_pages:
        lines.append(f"  {r.retried_pages} page(s) written again after a lost connection (their rows may count "
                     "as unchanged)")
    for reason, ids in r.error_examples.items():
        lines.append(f"  {reason}: e.g. {', '.join(ids)}")
    lines += [_label("Elapsed", f"{r.elapsed_s:.2f}s"), RULE]
    return "\n".join(lines)


def status_report(s: dict[str, Any]) -> str:
    lines = [RULE, "KB STATUS", RULE, f"{'Workspace:':<22}{s['workspace_id']}"]
    for k, v in s["runs_by_kb_status"].items():
        lines.append(f"{'Runs ' + k + ':':<22}{v}")
    lines += [f"{'Runs with regime_oos:':<22}{s['runs_with_regime_oos']}",
              f"{'Eligible (KB trials):':<22}{s['eligible']}",
              f"{'Active trials:':<22}{s['active_trials']}",
              f"{'Archived trials:':<22}{s['archived_trials']}", THIN, "Per strategy (eligible / active):"]
    for strategy in sorted(set(s["eligible_by_strategy"]) | set(s["active_trials_by_strategy"])):
        lines.append(f"  {strategy:<20}{s['eligible_by_strategy'].get(strategy, 0)} / "
                     f"{s['active_trials_by_strategy'].get(strategy, 0)}")
    if s["recent_backfills"]:
        lines += [THIN, "Recent backfills:"]
        for b in s["recent_backfills"]:
            lines.append(f"  {b['id']} {b['kind']:<9} {'dry ' if b['dry_run'] else 'real'} {b['status']}")
    lines.append(RULE)
    return "\n".join(lines)


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def recommend_report(r: dict[str, Any]) -> str:
    lines = [RULE, "RECOMMENDATION", RULE,
             f"{'Strategy:':<16}{r['query']['strategy_name']}",
             f"{'Regime tags:':<16}{', '.join(r['query']['tags']) or '(none)'}",
             f"{'Status:':<16}{r['status']}", f"{'Method:':<16}{r.get('method', '-')}",
             f"{'Confidence:':<16}{r['confidence']:.2f}" + (" (P(next Sharpe > 0))" if "confidence_means" in r else ""),
             f"{'Considered:':<16}{r['considered']}", f"{'Supporting:':<16}{len(r['supporting_trials'])}"]
    if r["params"]:
        lines.append("Parameters:")
        for k, v in r["params"].items():
            lines.append(f"  {k:<14}{v}")
    expected = r.get("expected_sharpe")
    if expected is not None:
        low, high = r.get("interval") or (None, None)
        lines.append(f"{'Expected Sharpe:':<16}{_fmt(expected)} [{_fmt(low)}, {_fmt(high)}] (80% interval)")
    best = r.get("global_best")
    if best:
        lines.append(f"{'Global best:':<16}{best['params']} (expected {_fmt(best.get('expected_sharpe'))})")
    for alt in (r.get("runner_ups") or [])[:3]:
        lines.append(f"  runner-up      {alt['params']} (expected {_fmt(alt.get('expected_sharpe'))})")
    scope = r.get("scope")
    if scope:
        pooled = "pooled instruments" if scope["pooled"] else str(scope["symbol"])
        lines.append(f"{'Evidence:':<16}{scope['windows']} windows ({pooled}, bar size {scope['timeframe'] or 'any'}"
                     + (f", before {scope['as_of']}" if scope["as_of"] else "") + ")")
    if r["reasons"]:
        lines.append(f"{'Reasons:':<16}{', '.join(r['reasons'])}")
    for action in r["suggested_actions"]:
        lines.append(f"  -> {action}")
    if r["supporting_trials"]:
        lines.append("Top trials (similarity, sharpe, run):")
        for t in r["supporting_trials"][:5]:
            lines.append(f"  {t['similarity']:.3f}  {_fmt(t['sharpe']):>6}  {t['run_id']}")
    if "optuna_enqueued" in r:
        e = r["optuna_enqueued"]
        lines.append(f"Optuna: {e['enqueued']} of {e['offered']} set(s) enqueued in study {e['study']!r} "
                     "(sets already queued or tried are skipped)")
    lines.append(RULE)
    return "\n".join(lines)


def evaluate_report(r: dict[str, Any]) -> str:
    lines = [RULE, "WALK-FORWARD EVALUATION", RULE, _label("Strategy", r["strategy_name"]),
             _label("Windows", r["windows"]), _label("Param Sets", r["parameter_sets"]),
             _label("Decisions", r["decisions"])]
    if not r["decisions"]:
        lines += ["Not enough history for a walk-forward check.", RULE]
        return "\n".join(lines)
    tuning = r["tuning"]
    lines += [_label("Tuning", f"k={tuning['k']} shrink={tuning['shrink']}"), THIN, "Realised OOS Sharpe:"]
    lines += [f"  {name:<14}{_fmt(value)}" for name, value in r["realised_sharpe"].items()]
    lines += [THIN, _label("Uplift", f"{_fmt(r['uplift'])} +- {_fmt(r['uplift_se'])} (block SE, {r['blocks']} blocks)"),
              _label("Hit Rate", _fmt(r["hit_rate"])), THIN, "Per regime (decisions, recommend, global best):"]
    lines += [f"  {tag:<16}{v['decisions']:>5}  {_fmt(v['recommend']):>6}  {_fmt(v['global_best']):>6}"
              for tag, v in r["per_regime"].items()]
    lines += [THIN, "Confidence tercile (decisions, mean confidence, realised):"]
    lines += [f"  {name:<6}{v['decisions']:>5}  {_fmt(v['mean_confidence']):>6}  {_fmt(v['realised']):>6}"
              for name, v in r["calibration"].items()]
    lines += [_label("Elapsed", f"{r['elapsed_s']:.2f}s"), RULE]
    return "\n".join(lines)


def import_report(r: dict[str, Any]) -> str:
    head = "kb import" + (" (dry run: nothing written)" if r["dry_run"] else "")
    verb = "would import" if r["dry_run"] else "imported"
    lines = [head, f"  workspace:        {r['workspace_id']}", f"  source:           {r['source']}"]
    if "optuna" in r:
        lines.append("  trials:           " + ", ".join(f"{k} {v:,}" for k, v in r["optuna"].items()))
    lines += [
        f"  rows read:        {r['rows']:,}",
        f"  {verb + ':':<17} {r['imported']:,}",
        f"  already present:  {r['already_present']:,}",
        f"  invalid:          {r['invalid']:,}",
    ]
    lines += [f"    {reason:<34} {count:,}" for reason, count in r["invalid_by_reason"].items()]
    for item in r["errors"][:10]:
        lines.append(f"    row {item['row']}: {item['reason']}")
    if r["invalid"] > 10:
        lines.append(f"    ... {r['invalid'] - 10:,} more (--json lists up to {len(r['errors']):,})")
    lines += [f"  note: {count:,} row(s): {note}" for note, count in r.get("notes", {}).items()]
    m = r["mapping"]
    if m["columns"]:
        lines.append("  columns:          " + ", ".join(f"{f}<-{c!r}" for f, c in m["columns"].items()))
    if m["param_columns"]:
        lines.append("  param columns:    " + ", ".join(f"{p}<-{c!r}" for p, c in m["param_columns"].items()))
    if m["constants"]:
        lines.append("  set:              " + ", ".join(f"{f}={v}" for f, v in m["constants"].items()))
    if m["ignored_columns"]:
        lines.append("  ignored columns:  " + ", ".join(repr(c) for c in m["ignored_columns"][:15])
                     + (" ..." if len(m["ignored_columns"]) > 15 else ""))
    if "elapsed_s" in r:
        lines.append(f"  elapsed:          {r['elapsed_s']:.1f}s ({r['rows_per_s']:,.0f} rows/s)")
    return "\n".join(lines)
