"""Do the KB's recommendations, and what it claims about them, hold on real prices out of sample?

Four real price series that ship inside PyPI packages (realmarket_sweep.py: S&P 500 and
NASDAQ daily from `arch`, GOOG daily and EUR/USD hourly from `backtesting`) are cut into
rolling OOS windows. backtesting.py runs two long/short strategies on every window, an SMA
cross (20 sets, n1 x n2) and a Bollinger-band mean reversion (24 sets, n x k), with the indicators
warmed up on the bars before the window and the stats kept to the window's own bars. The
stats rows, exported as backtesting.py writes them plus `symbol` and `timeframe`, go
through the product's own command line only, into one shared workspace of a fresh
database: `kb import`, `kb backfill-regime` per series (OHLCV files reach 200 bars before
the first window, so every run has its ex-ante snapshot), `kb backfill-candidacy`,
`kb ingest`.

Then the later windows of each series are decision points. At window j the bench asks
`kb recommend --symbol S --timeframe T --ohlcv-file <the series' bars before window j>
--as-of <window j's start>` (the KB may only use windows that ended before then; without
--as-of in the product the bench runs without it and says "as-of unsupported: look-ahead"
loudly) and reads the realised Sharpe of the answer on window j from its own sweep (every
set ran there; a run with no trade counts as Sharpe 0). Baselines: the bench's own global
best as of that time (best mean Sharpe over the same series' windows that ended before
window j) and the KB's `global_best`. `kb evaluate` gives the KB's own claims (uplift over
its global best, interval coverage), per series when it takes --symbol, and per strategy.
Each answer is also checked for look-ahead: it may not count more evidence windows than
had ended before its decision time in its scope.

Printed per series x strategy, per strategy and overall: decisions, mean realised Sharpe of
recommend / bench global best / KB global best / a random set / the best set in hindsight,
the uplift over the bench's global best with a standard error that allows for overlapping
windows (Newey-West with lag ceil(window/step) - 1 within a series; pooled, pairs weighted
by the share of time their windows overlap: realmarket_stats.py) beside evaluate's claim;
then the promises: mean expected_sharpe against mean realised, coverage of `interval`,
mean confidence against the share of realised Sharpe above 0, and the share of answers
that fell back to the global best (`regime_conditioned` false); then wall time per stage
and every kb command that failed. `--json` prints all figures and every decision as one
JSON document instead (BENCH_JSON=path also writes it to a file).

Knobs (environment):
  BENCH_SERIES           comma list, default SP500,NASDAQ,GOOG,EURUSD
  BENCH_WINDOW           OOS window in bars: "126" for every series, or per timeframe
                         "1d=126,1h=240" (the default)
  BENCH_STEP             step between windows, same forms, default "1d=63,1h=120"
  BENCH_DECISION_SHARE   share of each series' windows (the latest) that are decisions, default 0.4
  BENCH_BARS             keep only the first N bars of each series (quick runs), default all
  BENCH_JOBS             processes for the sweep and concurrent `kb recommend` calls, default 1
  BENCH_POOL             1: pass --pool (every instrument of the bar size as evidence) to recommend
                         and the per-series evaluate; default 0 (the product's default scope)
  BENCH_KB               the kb command (default: `kb` beside this Python)
  BENCH_JSON             also write the JSON report to this path
Sweeps are cached in bench/.cache/ (keyed by series, sizes, grids and package versions).
Needs `pip install -e . --group bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from realmarket_stats import mean_or_nan, newey_west_se, overlap_kernel_se, overlap_lag  # noqa: E402
from realmarket_sweep import (  # noqa: E402
    GRIDS,
    SERIES,
    SeriesSpec,
    SweepTable,
    load_series,
    ohlcv_file_frame,
    params_key,
    sweep_export,
    sweep_tables,
    window_starts,
)

DB_NAME = "kb_bench_realmarket"
CACHE = HERE / ".cache"
LOUD = "!" * 78


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def per_timeframe(name: str, default: dict[str, int]) -> dict[str, int]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return dict(default)
    if "=" not in raw:
        return dict.fromkeys(default, int(raw))
    out = dict(default)
    for part in filter(None, (p.strip() for p in raw.split(","))):
        tf, _, value = part.partition("=")
        out[tf.strip()] = int(value)
    return out


# ---------------------------------------------------------------------------- kb commands


@dataclass
class Kb:
    """The product's command line, run as subprocesses against one database."""

    command: list[str]
    env: dict[str, str]
    failures: list[dict[str, Any]] = field(default_factory=list)
    upgrades: list[str] = field(default_factory=list)  # commands that met a schema newer than the database
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _call(self, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.command, *args], env=self.env, capture_output=True, text=True, check=False)
        if proc.returncode != 0 and "kb db upgrade" in proc.stderr and args[:2] != ("db", "upgrade"):
            # The product gained a migration while the bench ran (its tree is being edited):
            # migrate, note it, and run the command once more.
            with self.lock:
                self.upgrades.append(self.show(args))
                subprocess.run([*self.command, "db", "upgrade"], env=self.env, capture_output=True, check=False)
            proc = subprocess.run([*self.command, *args], env=self.env, capture_output=True, text=True, check=False)
        return proc

    def run(self, *args: str, expect_json: bool = True, record: bool = True) -> tuple[int, Any, str]:
        proc = self._call(args)
        body: Any = proc.stdout
        if expect_json and proc.returncode == 0:
            try:
                body = json.loads(proc.stdout)
            except json.JSONDecodeError:
                self.failures.append({"command": self.show(args), "exit": 0,
                                      "error": "stdout is not JSON: " + proc.stdout[:300]})
                return 0, None, proc.stderr
        if proc.returncode != 0 and record:
            self.failures.append({"command": self.show(args), "exit": proc.returncode,
                                  "error": proc.stderr.strip()[-2000:]})
        return proc.returncode, body, proc.stderr

    def must(self, *args: str) -> Any:
        code, body, err = self.run(*args)
        if code != 0 or body is None:
            raise SystemExit(f"`{self.show(args)}` failed (exit {code}):\n{err.strip()[-3000:]}")
        return body

    def show(self, args: tuple[str, ...]) -> str:
        return shlex.join(["kb", *args])

    def help_text(self, command: str) -> str:
        _, out, _ = self.run(command, "--help", expect_json=False, record=False)
        return out if isinstance(out, str) else ""


def kb_command() -> list[str]:
    configured = os.environ.get("BENCH_KB", "").strip()
    if configured:
        return shlex.split(configured)
    return [str(Path(sys.executable).with_name("kb"))]


def fresh_database_url() -> str:
    """A fresh migrated database (bench/_common.py) on the configured or embedded server,
    and its URL for the `kb` subprocesses. The embedded server lives as long as this process."""
    from _common import fresh_database  # noqa: PLC0415

    from app.db.embedded import database_url  # noqa: PLC0415

    async def make() -> None:
        db = await fresh_database(DB_NAME)
        await db.close()

    asyncio.run(make())
    parts = urlsplit(database_url())
    return urlunsplit((parts.scheme, parts.netloc, "/" + DB_NAME, parts.query, parts.fragment))


# ---------------------------------------------------------------------------- decisions


@dataclass
class SeriesRun:
    spec: SeriesSpec
    bars: pd.DataFrame
    window: int
    step: int
    export: Path
    tables: dict[str, SweepTable]
    starts_i: list[int]
    first_decision: int


def iso(ts: pd.Timestamp) -> str:
    return f"{ts:%Y-%m-%dT%H:%M:%S}+00:00"


def bench_global_best(table: SweepTable, j: int) -> int | None:
    """The set with the best mean Sharpe (no trade = 0) over the windows of the same series
    that ended before window j starts; None when there is none yet."""
    prior = [w for w in range(j) if table.ends[w] < table.starts[j]]
    if not prior:
        return None
    return int(np.argmax(np.nan_to_num(table.sharpe[prior], nan=0.0).mean(axis=0)))


def set_index(table: SweepTable, params: Any) -> int | None:
    if not isinstance(params, dict) or not params:
        return None
    try:
        key = params_key(params)
    except (TypeError, ValueError):
        return None
    for i, p in enumerate(table.sets):
        if params_key(p) == key:
            return i
    return None


def decide(kb: Kb, ws: str, run: SeriesRun, strategy: str, j: int, ohlcv: Path, as_of: dict[str, Any],
           visible: int, pool: bool) -> dict:
    table = run.tables[strategy]
    spec = run.spec
    args = ["recommend", "--workspace-id", ws, "--strategy", strategy, "--ohlcv-file", str(ohlcv),
            "--symbol", spec.symbol, "--timeframe", spec.timeframe, "--json", *(["--pool"] if pool else [])]
    started = time.monotonic()
    if as_of["supported"]:
        code, body, err = kb.run(*args, "--as-of", iso(table.starts[j]), record=False)
        if code == 2 and "--as-of" in err and "unrecognized" in err:
            as_of["supported"] = False
            as_of["rejected_with"] = err.strip()[-500:]
        elif code != 0:
            kb.failures.append({"command": kb.show((*args, "--as-of", iso(table.starts[j]))), "exit": code,
                                "error": err.strip()[-2000:]})
    if not as_of["supported"]:
        code, body, err = kb.run(*args)
    elapsed = time.monotonic() - started
    gb = bench_global_best(table, j)
    row = np.nan_to_num(table.sharpe[j], nan=0.0)
    out: dict[str, Any] = {
        "series": spec.symbol, "strategy": strategy, "window": j, "start": iso(table.starts[j]),
        "windows_ended_before": visible,
        "end": iso(table.ends[j]), "span_end": iso(span_end(run, j)), "elapsed_s": round(elapsed, 3), "exit": code,
        "as_of_sent": bool(as_of["supported"]),
        "bench_global_best": None if gb is None else table.sets[gb],
        "realised_bench_global": None if gb is None else table.realised(j, gb),
        "realised_random": float(row.mean()), "realised_oracle": float(row.max()),
    }
    if code != 0 or not isinstance(body, dict):
        out["error"] = err.strip()[-500:]
        return out
    chosen = set_index(table, body.get("params"))
    kb_gb = set_index(table, (body.get("global_best") or {}).get("params"))
    interval = body.get("interval")
    out.update({
        "status": body.get("status"), "method": body.get("method"), "params": body.get("params"),
        "reasons": body.get("reasons"), "confidence": body.get("confidence"),
        "expected_sharpe": body.get("expected_sharpe"),
        "interval": interval if isinstance(interval, list) and len(interval) == 2 else None,
        "regime_conditioned": body.get("regime_conditioned"),
        "kb_global_best": (body.get("global_best") or {}).get("params"),
        "matched_on": (body.get("evidence") or {}).get("matched_on"),
        "evidence_windows": (body.get("evidence") or {}).get("windows"),
        "scope": body.get("scope"),
        "raw_expected_sharpe": body.get("raw_expected_sharpe"),
        "realised": None if chosen is None else table.realised(j, chosen),
        "realised_kb_global": None if kb_gb is None else table.realised(j, kb_gb),
        "answer_in_grid": chosen is not None,
    })
    return out


def windows_ended_before(runs: list[SeriesRun], run: SeriesRun, when: pd.Timestamp, pool: bool) -> int:
    """How many windows in the answer's scope (the series itself, or with --pool every
    series of its bar size) ended before `when`: the most evidence an answer restricted
    by --as-of may count."""
    scope = [r for r in runs if r.spec.timeframe == run.spec.timeframe] if pool else [run]
    return sum(1 for r in scope for end in r.tables[next(iter(GRIDS))].ends if end < when)


def span_end(run: SeriesRun, j: int) -> pd.Timestamp:
    """When window j's last bar closes: the next bar's time (one bar after the last one at
    the end of the series). Windows are [start, span_end) for the overlap weights."""
    after = run.starts_i[j] + run.window
    index = run.bars.index
    return index[after] if after < len(index) else index[after - 1] + (index[after - 1] - index[after - 2])


def decision_points(runs: list[SeriesRun]) -> list[tuple[SeriesRun, str, int]]:
    return [(r, s, j) for r in runs for s in GRIDS for j in range(r.first_decision, len(r.starts_i))]


# ---------------------------------------------------------------------------- figures


def _ns(text: str) -> int:
    return pd.Timestamp(text).value


def leaked(d: dict) -> bool:
    """An answer that counted more evidence windows than had ended before its decision
    time (in its scope), or that does not echo the --as-of it was asked with."""
    windows = d.get("evidence_windows")
    if isinstance(windows, int) and windows > (d.get("windows_ended_before") or 0):
        return True
    scope = d.get("scope")
    return bool(d.get("as_of_sent")) and isinstance(scope, dict) and not scope.get("as_of")


def summarize(ds: list[dict], lag: int | None, claim: dict | None) -> dict[str, Any]:
    """Figures for one group of decisions (in window order when `lag` is given: Newey-West;
    else pooled with the overlap kernel)."""
    answered = [d for d in ds if d.get("realised") is not None and d.get("realised_bench_global") is not None]
    diff = np.array([d["realised"] - d["realised_bench_global"] for d in answered])
    if lag is not None:
        se = newey_west_se(diff, lag)
    else:
        se = overlap_kernel_se(diff, np.array([_ns(d["start"]) for d in answered]),
                               np.array([_ns(d["span_end"]) for d in answered]))
    with_kb_gb = [d for d in answered if d.get("realised_kb_global") is not None]
    with_exp = [d for d in answered if d.get("expected_sharpe") is not None]
    with_iv = [d for d in answered if d.get("interval") is not None and None not in d["interval"]]
    with_conf = [d for d in answered if isinstance(d.get("confidence"), int | float) and d.get("method") == "expected"]
    uplift = float(diff.mean()) if len(diff) else float("nan")
    return {
        "decisions": len(ds),
        "answered": len(answered),
        "failed": sum(1 for d in ds if d.get("exit") not in (0, None)),
        "no_answer": sum(1 for d in ds if d.get("exit") == 0 and d.get("realised") is None),
        "off_grid": sum(1 for d in ds if d.get("params") and not d.get("answer_in_grid")),
        "evidence_beyond_as_of": sum(1 for d in ds if leaked(d)),
        "realised": {
            "recommend": mean_or_nan([d["realised"] for d in answered]),
            "bench_global_best": mean_or_nan([d["realised_bench_global"] for d in answered]),
            "kb_global_best": mean_or_nan([d["realised_kb_global"] for d in with_kb_gb]),
            "kb_global_best_n": len(with_kb_gb),
            "random_set": mean_or_nan([d["realised_random"] for d in answered]),
            "oracle": mean_or_nan([d["realised_oracle"] for d in answered]),
        },
        "uplift": uplift,
        "uplift_se": se,
        "uplift_t": uplift / se if se and math.isfinite(se) and se > 0 else float("nan"),
        "se_method": f"newey-west lag {lag}" if lag is not None else "overlap kernel (pooled)",
        "uplift_vs_kb_global_best": mean_or_nan([d["realised"] - d["realised_kb_global"] for d in with_kb_gb]),
        "hit_rate": float((diff >= 0).mean()) if len(diff) else float("nan"),
        "evaluate_claim": claim,
        "expected_sharpe_mean": mean_or_nan([d["expected_sharpe"] for d in with_exp]),
        "realised_where_expected": mean_or_nan([d["realised"] for d in with_exp]),
        "expected_n": len(with_exp),
        "interval_coverage": mean_or_nan([float(d["interval"][0] <= d["realised"] <= d["interval"][1])
                                          for d in with_iv]),
        "interval_n": len(with_iv),
        "confidence_mean": mean_or_nan([float(d["confidence"]) for d in with_conf]),
        "realised_positive_share": mean_or_nan([float(d["realised"] > 0) for d in with_conf]),
        "confidence_n": len(with_conf),
        "global_best_share": mean_or_nan([float(d.get("regime_conditioned") is False) for d in answered]),
        "answer_is_kb_global_best_share": mean_or_nan(
            [float(d["params"] is not None and d["kb_global_best"] is not None
                   and params_key(d["params"]) == params_key(d["kb_global_best"])) for d in with_kb_gb]),
        "answer_is_bench_global_best_share": mean_or_nan(
            [float(params_key(d["params"]) == params_key(d["bench_global_best"])) for d in answered]),
    }


def evaluate_claims(kb: Kb, ws: str, runs: list[SeriesRun], pool: bool) -> tuple[dict, dict, bool]:
    per_strategy: dict[str, Any] = {}
    per_series: dict[str, Any] = {}
    help_text = kb.help_text("evaluate")
    by_series = "--symbol" in help_text and "--timeframe" in help_text
    for strategy in GRIDS:
        # One claim per bar size, pooled over its instruments: the KB never mixes bar sizes.
        for tf in sorted({r.spec.timeframe for r in runs}):
            code, body, err = kb.run("evaluate", "--workspace-id", ws, "--strategy", strategy, "--timeframe", tf,
                                     "--json")
            per_strategy[f"{strategy}@{tf}"] = (
                _claim(body) if code == 0 and isinstance(body, dict) else {"error": err.strip()})
        if by_series:
            for r in runs:
                code, body, err = kb.run("evaluate", "--workspace-id", ws, "--strategy", strategy,
                                         "--symbol", r.spec.symbol, "--timeframe", r.spec.timeframe, "--json",
                                         *(["--pool"] if pool else []))
                per_series[f"{r.spec.symbol}/{strategy}"] = (
                    _claim(body) if code == 0 and isinstance(body, dict) else {"error": err.strip()})
    return per_strategy, per_series, by_series


def _claim(body: dict) -> dict:
    keep = ("decisions", "uplift", "uplift_se", "hit_rate", "windows", "parameter_sets", "ex_ante_share", "scope",
            "tuning", "regime_conditioned", "conditioned_share", "realised_sharpe", "promises", "reasons", "elapsed_s")
    return {k: body.get(k) for k in keep if k in body}


# ---------------------------------------------------------------------------- report


def fmt(x: Any, spec: str = "+.3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec)


def print_report(report: dict) -> None:
    cfg = report["config"]
    if not report["as_of"]["supported"]:
        print(f"\n{LOUD}\n!! as-of unsupported: look-ahead. `kb recommend` has no --as-of here, so every answer was\n"
              f"!! chosen from ALL windows, including the decision window itself and later ones. The\n"
              f"!! recommend figures below are NOT out of sample.\n{LOUD}")
    print("\n== series")
    for s in report["series"]:
        print(f"   {s['symbol']:<7} {s['package']:<18}{s['source']:<26} {s['timeframe']:<3} {s['bars']:>6,} bars "
              f"{s['first']} .. {s['last']}  {s['windows']} windows of {s['window']} step {s['step']}, "
              f"decisions from window {s['first_decision']}  ({s['runs']:,} runs, sweep "
              f"{'cached' if s['sweep_cached'] else str(round(s['sweep_s'])) + 's'})")
    print("   strategies: " + ", ".join(f"{k} ({len(v)} sets)" for k, v in GRIDS.items())
          + f"; decision share {cfg['decision_share']}; kb: {' '.join(cfg['kb'])}")
    kbs = report["kb"]
    cand = kbs["reports"].get("backfill-candidacy") or {}
    print(f"   imported {kbs['imported']:,} runs ({kbs['no_sharpe_runs']:,} with no trade, empty Sharpe); gate passed "
          f"{cand.get('passed', 'n/a')} of {cand.get('total_scanned', 'n/a')} ("
          + ", ".join(f"{k} {v}" for k, v in sorted((cand.get("reasons") or {}).items())) + "); "
          f"KB trials {kbs.get('trials', 'n/a')}, evidence rows {kbs.get('evidence', 'n/a')}")
    status = kbs["reports"].get("status") or {}
    if status.get("eligible_by_strategy"):
        print("   candidate runs by strategy: " + ", ".join(f"{k} {v}" for k, v in
                                                         sorted(status["eligible_by_strategy"].items())))
    for name, rep in kbs["reports"].items():
        if name.startswith("backfill-regime") and isinstance(rep, dict) and (rep.get("reasons") or rep.get("notes")):
            print(f"   {name}: skipped {rep.get('reasons')}, notes {rep.get('notes')}")

    groups = [(k, g) for k, g in report["groups"]["series_strategy"].items()]
    groups += [(f"all series / {k}", g) for k, g in report["groups"]["strategy"].items()]
    groups.append(("overall", report["groups"]["overall"]))

    def n_of(g: dict) -> str:
        return f"{g['answered']}" if g["answered"] == g["decisions"] else f"{g['answered']}/{g['decisions']}"

    def pm(value: Any, se: Any) -> str:
        return f"{fmt(value)} +- {fmt(se, '.3f')}"

    print("\n== realised OOS Sharpe on the decision windows (no trade = 0); uplift = recommend - bench global best")
    print(f"   {'group':<32}{'n':>8}{'recommend':>10}{'bench GB':>9}{'KB GB':>8}{'random':>8}{'oracle':>8}"
          f"{'uplift +- HAC SE':>19}{'t':>6}{'evaluate claims':>19}")
    for label, g in groups:
        r, claim = g["realised"], g.get("evaluate_claim") or {}
        print(f"   {label:<32}{n_of(g):>8}{fmt(r['recommend']):>10}{fmt(r['bench_global_best']):>9}"
              f"{fmt(r['kb_global_best']):>8}{fmt(r['random_set']):>8}{fmt(r['oracle']):>8}"
              f"{pm(g['uplift'], g['uplift_se']):>19}{fmt(g['uplift_t'], '+.1f'):>6}"
              f"{pm(claim.get('uplift'), claim.get('uplift_se')) if 'uplift' in claim else '-':>19}")
    nominal = next((c.get("promises", {}).get("interval_nominal") for c in
                    [*report["evaluate"]["per_series"].values(), *report["evaluate"]["per_strategy"].values()]
                    if isinstance(c.get("promises"), dict)), None)
    print(f"\n== the answers' promises against what they realised (interval nominal {fmt(nominal, '.2f')})")
    print(f"   {'group':<32}{'n':>8}{'E[S]':>8}{'real':>8}{'claim E/real':>15}{'cov':>7}{'claim cov':>10}"
          f"{'conf':>7}{'S>0':>7}{'GB share':>9}")
    for label, g in groups:
        pr = (g.get("evaluate_claim") or {}).get("promises") or {}
        claim_er = (f"{fmt(pr.get('mean_expected'), '+.2f')}/{fmt(pr.get('mean_realised'), '+.2f')}"
                    if pr else "-")
        print(f"   {label:<32}{n_of(g):>8}{fmt(g['expected_sharpe_mean']):>8}{fmt(g['realised_where_expected']):>8}"
              f"{claim_er:>15}{fmt(g['interval_coverage'], '.2f'):>7}"
              f"{fmt(pr.get('interval_coverage'), '.2f') if pr else '-':>10}"
              f"{fmt(g['confidence_mean'], '.2f'):>7}{fmt(g['realised_positive_share'], '.2f'):>7}"
              f"{fmt(g['global_best_share'], '.2f'):>9}")
    if report["evaluate"]["by_series"]:
        claims = ("`kb evaluate --symbol --timeframe" + (" --pool" if cfg.get("pool") else "")
                  + "` per series; all-series rows: `kb evaluate` without --symbol")
    else:
        claims = "`kb evaluate` per strategy (it takes no --symbol)"
    notes = ["HAC SE: Newey-West within a series (lag = how many later windows a window overlaps); pooled rows",
             "weight each pair of decisions by the share of time their windows overlap.",
             f"evaluate claims: {claims}.",
             "E[S] / real: mean expected_sharpe and mean realised Sharpe where an answer gave one; claim E/real:",
             "the same pair as evaluate reports it. cov: share of realised inside `interval`; conf: mean confidence",
             "(claimed P(Sharpe > 0)); S>0: share realised > 0; GB share: answers with regime_conditioned false."]
    print("\n".join("   " + n for n in notes))
    o = report["groups"]["overall"]
    print(f"   overall: {o['answered']} answers ({o['no_answer']} without a usable answer, of which {o['off_grid']} "
          f"outside the grid; {o['failed']} failed); {o['evidence_beyond_as_of']} answers counted more evidence "
          f"windows than had ended before their decision time (look-ahead)")
    print(f"   uplift vs KB global best {fmt(o['uplift_vs_kb_global_best'])}; hit rate {fmt(o['hit_rate'], '.2f')}; "
          f"answer = KB global best {fmt(o['answer_is_kb_global_best_share'], '.2f')}, "
          f"= bench global best {fmt(o['answer_is_bench_global_best_share'], '.2f')}")
    reasons: dict[str, int] = {}
    for d in report["decisions"]:
        for reason in d.get("reasons") or ():
            reasons[reason] = reasons.get(reason, 0) + 1
    methods: dict[str, int] = {}
    for d in report["decisions"]:
        methods[str(d.get("method"))] = methods.get(str(d.get("method")), 0) + 1
    print("   answer reasons: " + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none")
          + "; methods: " + ", ".join(f"{k} {v}" for k, v in sorted(methods.items())))

    ev = report["evaluate"]
    print("\n== kb evaluate (the KB's own walk-forward claim)")
    for name, c in {**ev["per_strategy"], **ev["per_series"]}.items():
        if "error" in c:
            print(f"   {name:<32} error: {c['error'][:200]}")
            continue
        rs = c.get("realised_sharpe") or {}
        pr = c.get("promises") or {}
        print(f"   {name:<32} {c.get('decisions')} decisions over {c.get('windows')} windows: uplift "
              f"{fmt(c.get('uplift'))} +- {fmt(c.get('uplift_se'), '.3f')}, recommend {fmt(rs.get('recommend'))}, "
              f"global best {fmt(rs.get('global_best'))}, conditioned now {c.get('regime_conditioned')}, "
              f"coverage {fmt(pr.get('interval_coverage'), '.2f')}")

    print("\n== wall time")
    for stage, seconds in report["timing"].items():
        print(f"   {stage:<34}{seconds:>9.1f}s")
    rec = report["recommend_latency"]
    print(f"   kb recommend per call: p50 {rec['p50']:.2f}s, p95 {rec['p95']:.2f}s, {rec['calls']} calls, "
          f"{report['config']['jobs']} at a time")
    if report["schema_upgrades_mid_run"]:
        print(f"\n== the database schema fell behind the product mid-run {len(report['schema_upgrades_mid_run'])} "
              f"time(s): `kb db upgrade` was run and the command repeated (first: "
              f"{report['schema_upgrades_mid_run'][0]})")
    if report["failures"]:
        print(f"\n== kb commands that failed ({len(report['failures'])})")
        for f in report["failures"][:20]:
            tail = "\n      ".join(f["error"].splitlines()[-6:])
            print(f"   exit {f['exit']}: {f['command']}\n      {tail}")
    if not report["as_of"]["supported"]:
        print(f"\n{LOUD}\n!! as-of unsupported: look-ahead (see the top of this report)\n{LOUD}")


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of text")
    opts = parser.parse_args()

    wanted = [s.strip().upper() for s in os.environ.get("BENCH_SERIES", ",".join(SERIES)).split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SERIES]
    if unknown:
        raise SystemExit(f"BENCH_SERIES: unknown {unknown}; known: {', '.join(SERIES)}")
    windows = per_timeframe("BENCH_WINDOW", {"1d": 126, "1h": 240})
    steps = per_timeframe("BENCH_STEP", {"1d": 63, "1h": 120})
    share = float(os.environ.get("BENCH_DECISION_SHARE", "0.4"))
    max_bars = int(os.environ.get("BENCH_BARS", "0"))
    jobs = max(int(os.environ.get("BENCH_JOBS", "1")), 1)
    pool = os.environ.get("BENCH_POOL", "0").strip().lower() in ("1", "true", "yes")
    timing: dict[str, float] = {}
    t_all = time.monotonic()
    probe = subprocess.run([*kb_command(), "--help"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise SystemExit(f"`{shlex.join(kb_command())} --help` fails (exit {probe.returncode}):\n"
                         f"{probe.stderr.strip()[-2000:]}")

    # 1. series and sweeps
    runs: list[SeriesRun] = []
    series_info = []
    for symbol in wanted:
        spec = SERIES[symbol]
        bars = load_series(symbol)
        if max_bars:
            bars = bars.iloc[:max_bars]
        window, step = windows[spec.timeframe], steps[spec.timeframe]
        starts_i = window_starts(len(bars), window, step)
        if len(starts_i) < 3:
            raise SystemExit(f"{symbol}: {len(bars)} bars give {len(starts_i)} windows of {window}; need 3+")
        t = time.monotonic()
        log(f"sweep {symbol}: {len(starts_i)} windows x {sum(len(g) for g in GRIDS.values())} sets ...")
        export, cached = sweep_export(spec, bars, window, step, CACHE, jobs=jobs)
        sweep_s = time.monotonic() - t
        timing[f"sweep {symbol}" + (" (cached)" if cached else "")] = sweep_s
        tables = sweep_tables(export, bars, window, step)
        first = max(len(starts_i) - max(round(share * len(starts_i)), 1), 1)
        while first < len(starts_i) and bench_global_best(tables["SmaCross"], first) is None:
            first += 1
        runs.append(SeriesRun(spec, bars, window, step, export, tables, starts_i, first))
        series_info.append({
            "symbol": symbol, "package": f"{spec.package} {_version(spec.package)}", "source": spec.source,
            "timeframe": spec.timeframe, "bars": len(bars), "first": f"{bars.index[0]:%Y-%m-%d %H:%M}",
            "last": f"{bars.index[-1]:%Y-%m-%d %H:%M}", "window": window, "step": step,
            "windows": len(starts_i), "first_decision": first, "runs": len(starts_i) * sum(map(len, GRIDS.values())),
            "sweep_cached": cached, "sweep_s": round(sweep_s, 1), "commission": spec.commission})

    # 2. a fresh database and the pipeline, through the kb command line
    t = time.monotonic()
    url = fresh_database_url()
    timing["fresh database"] = time.monotonic() - t
    kb = Kb(kb_command(), {**os.environ, "DATABASE_URL": url})
    kb.run("db", "upgrade", expect_json=False)  # with the migrations of the kb in use (BENCH_KB may be another tree)
    ws = str(uuid.uuid4())
    kb_state: dict[str, Any] = {"workspace_id": ws, "imported": 0, "no_sharpe_runs": 0, "reports": {}}
    with tempfile.TemporaryDirectory(prefix="bench-realmarket-") as tmp_name:
        tmp = Path(tmp_name)
        t = time.monotonic()
        for r in runs:
            log(f"kb import {r.export.name}")
            rep = kb.must("import", str(r.export), "--workspace-id", ws, "--source", f"realmarket-{r.spec.symbol}",
                          "--json")
            kb_state["reports"][f"import {r.spec.symbol}"] = rep
            kb_state["imported"] += int(_first(rep, ("imported", "inserted", "rows_imported")) or 0)
            kb_state["no_sharpe_runs"] += int(pd.read_csv(r.export, usecols=["Sharpe Ratio"])["Sharpe Ratio"]
                                              .isna().sum())
        timing["kb import"] = time.monotonic() - t
        ohlcv_files = {}
        for r in runs:
            path = tmp / f"{r.spec.symbol}.csv"
            ohlcv_file_frame(r.bars).to_csv(path, index=False)
            ohlcv_files[r.spec.symbol] = path
        t = time.monotonic()
        for r in runs:
            log(f"kb backfill-regime {r.spec.symbol}")
            kb_state["reports"][f"backfill-regime {r.spec.symbol}"] = kb.must(
                "backfill-regime", "--workspace-id", ws, "--ohlcv-file", str(ohlcv_files[r.spec.symbol]),
                "--symbol", r.spec.symbol, "--timeframe", r.spec.timeframe, "--limit", "100000000", "--json")
        timing["kb backfill-regime"] = time.monotonic() - t
        t = time.monotonic()
        log("kb backfill-candidacy")
        kb_state["reports"]["backfill-candidacy"] = kb.must("backfill-candidacy", "--workspace-id", ws,
                                                            "--limit", "100000000", "--json")
        timing["kb backfill-candidacy"] = time.monotonic() - t
        t = time.monotonic()
        log("kb ingest")
        ing = kb.must("ingest", "--workspace-id", ws, "--json")
        kb_state["reports"]["ingest"] = ing
        kb_state["trials"] = _first(ing, ("inserted", "trials"))
        kb_state["evidence"] = _first(ing, ("evidence",))
        timing["kb ingest"] = time.monotonic() - t
        code, status, _ = kb.run("status", "--workspace-id", ws, "--json")
        kb_state["reports"]["status"] = status if code == 0 else None

        # 3. decisions
        as_of = {"supported": "--as-of" in kb.help_text("recommend")}
        if not as_of["supported"]:
            log(f"{LOUD}\nas-of unsupported: look-ahead (kb recommend --help lists no --as-of)\n{LOUD}")
        points = decision_points(runs)
        prefixes: dict[tuple[str, int], Path] = {}
        for r, _, j in points:
            key = (r.spec.symbol, j)
            if key not in prefixes:
                path = tmp / f"{r.spec.symbol}-before-{j}.csv"
                ohlcv_file_frame(r.bars.iloc[:r.starts_i[j]]).to_csv(path, index=False)
                prefixes[key] = path
        log(f"kb recommend x {len(points)} ({jobs} at a time)")
        t = time.monotonic()
        done = 0

        def one(point: tuple[SeriesRun, str, int]) -> dict:
            nonlocal done
            r, strategy, j = point
            d = decide(kb, ws, r, strategy, j, prefixes[(r.spec.symbol, j)], as_of,
                       windows_ended_before(runs, r, r.tables[strategy].starts[j], pool), pool)
            done += 1
            if done % 20 == 0:
                log(f"   {done}/{len(points)} ({time.monotonic() - t:.0f}s)")
            return d

        if jobs > 1:
            # The first call alone: it settles whether --as-of is accepted.
            decisions = [one(points[0])]
            with ThreadPoolExecutor(jobs) as executor:
                decisions += list(executor.map(one, points[1:]))
        else:
            decisions = [one(p) for p in points]
        timing["kb recommend (all decisions)"] = time.monotonic() - t

    # 4. the KB's own claims
    t = time.monotonic()
    per_strategy, per_series, by_series = evaluate_claims(kb, ws, runs, pool)
    timing["kb evaluate"] = time.monotonic() - t
    timing["total"] = time.monotonic() - t_all

    # 5. figures
    groups: dict[str, Any] = {"series_strategy": {}, "strategy": {}}
    for r in runs:
        lag = overlap_lag(r.window, r.step)
        for strategy in GRIDS:
            key = f"{r.spec.symbol}/{strategy}"
            mine = [d for d in decisions if d["series"] == r.spec.symbol and d["strategy"] == strategy]
            groups["series_strategy"][key] = summarize(mine, lag, per_series.get(key))
    for strategy in GRIDS:
        groups["strategy"][strategy] = summarize([d for d in decisions if d["strategy"] == strategy], None,
                                                 per_strategy.get(strategy))
    groups["overall"] = summarize(decisions, None, None)
    lat = np.array([d["elapsed_s"] for d in decisions]) if decisions else np.array([np.nan])
    report = {
        "config": {"series": wanted, "window": windows, "step": steps, "decision_share": share, "bars_cap": max_bars,
                   "jobs": jobs, "pool": pool, "kb": kb.command, "grids": GRIDS, "database": DB_NAME,
                   "backtesting": _version("backtesting"), "arch": _version("arch")},
        "as_of": as_of,
        "series": series_info,
        "kb": kb_state,
        "evaluate": {"per_strategy": per_strategy, "per_series": per_series, "by_series": by_series},
        "groups": groups,
        "decisions": decisions,
        "timing": {k: round(v, 2) for k, v in timing.items()},
        "recommend_latency": {"calls": len(decisions), "p50": float(np.nanpercentile(lat, 50)),
                              "p95": float(np.nanpercentile(lat, 95))},
        "failures": kb.failures,
        "schema_upgrades_mid_run": kb.upgrades,
    }
    text = json.dumps(_finite(report), indent=1, default=_json_default, allow_nan=False)
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(text)
    if opts.json:
        print(text)
    else:
        print_report(report)


def _finite(value: Any) -> Any:
    """NaN and infinities as null (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def _first(body: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(body, dict):
        for k in keys:
            if k in body:
                return body[k]
    return None


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
