"""`kb import` speed: 200,000 runs from CSV, Parquet and JSON lines, and an Optuna study
of 10,000 trials, each into a fresh workspace (open the file, then read, check and write it
a chunk at a time, as `kb import` does), plus the re-import of the CSV (everything already
present).

Baseline in the same run, just before and just after each file's import: a plain COPY
of the very rows that import writes (made ready beforehand, no file, no checks) into
`backtest_runs` of another fresh workspace, in one transaction. The table grows with
every load, so the ratio is import rows/s over the mean of the two COPYs' rows/s.
`kb seed` (COPY of synthetic rows it builds itself) is printed too, for reference.

BENCH_ROWS overrides 200,000; BENCH_TRIALS overrides 10,000.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from _common import env_int, fresh_database, peak_rss_mb, run

from app.db import Database
from app.db.runs import copy_run_records
from app.db.workspaces import ensure_workspace
from app.services.kb.importing.optuna_source import study_frame
from app.services.kb.importing.rows import RUN_COLUMNS, prepare, run_records
from app.services.kb.importing.service import import_frame, import_table, load_file, open_file
from app.services.kb.synthetic.seed import seed_runs


def sweep(rows: int) -> pd.DataFrame:
    """A researcher's export: backtesting.py-style stats plus param columns."""
    rng = np.random.default_rng(5)
    start = pd.Timestamp("2022-01-03", tz="UTC") + pd.to_timedelta(rng.integers(0, 900, rows), unit="D")
    return pd.DataFrame({
        "strategy_name": rng.choice(["sma_cross", "bollinger", "breakout"], rows),
        "param_fast": rng.integers(5, 50, rows), "param_slow": rng.integers(50, 200, rows),
        "param_stop": rng.uniform(0.5, 3, rows).round(2),
        "symbol": rng.choice(["SPY", "QQQ", "IWM"], rows), "timeframe": "1d",
        "Start": start, "End": start + pd.Timedelta(days=90),
        "Sharpe Ratio": rng.normal(0.5, 1, rows).round(4), "Max. Drawdown [%]": -rng.uniform(2, 40, rows).round(3),
        "# Trades": rng.integers(0, 300, rows), "Return [%]": rng.normal(4, 12, rows).round(3),
        "Win Rate [%]": rng.uniform(20, 80, rows).round(2), "Profit Factor": rng.uniform(0.5, 3, rows).round(3),
        "run_id": [f"r{i}" for i in range(rows)],
    })


def optuna_study(path: Path, trials: int) -> str:
    import optuna  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{path}"
    study = optuna.create_study(study_name="bench", storage=storage, direction="maximize")
    rng = np.random.default_rng(6)
    dists = {"fast": optuna.distributions.IntDistribution(5, 50),
             "stop": optuna.distributions.FloatDistribution(0.5, 3.0)}
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    made = [optuna.trial.create_trial(
        params={"fast": int(rng.integers(5, 51)), "stop": float(rng.uniform(0.5, 3))}, distributions=dists,
        value=float(rng.normal(0.5, 1)), user_attrs={"symbol": "SPY", "timeframe": "1d", "trades": 40,
                                                     "oos_start": "2024-01-02", "oos_end": "2024-04-01"},
        state=optuna.trial.TrialState.COMPLETE) for _ in range(trials)]
    for i, trial in enumerate(made):
        trial.datetime_start = trial.datetime_complete = t0 + timedelta(seconds=i)
    study.add_trials(made)
    return storage


async def plain_copy(db: Database, path: Path, source: str) -> float:
    """Rows/s of one COPY of the rows an import of `path` writes, made ready beforehand."""
    table, mapping = load_file(path, None, {}, {})
    ws = uuid.uuid4()
    records = run_records(prepare(table, mapping).records, ws, source, datetime.now(UTC))
    async with db.acquire() as conn:
        await ensure_workspace(conn, ws, "bench copy")
        started = time.perf_counter()
        async with conn.transaction():
            await copy_run_records(conn, records, RUN_COLUMNS)
        took = time.perf_counter() - started
    print(f"{'':<13} plain COPY of the same {len(records):,} ready rows into backtest_runs: {took:.2f}s = "
          f"{len(records) / took:,.0f} rows/s")
    return len(records) / took


async def main() -> None:
    rows = env_int("BENCH_ROWS", 200_000)
    trials = env_int("BENCH_TRIALS", 10_000)
    db = await fresh_database("kb_bench_import")
    started = time.perf_counter()
    await seed_runs(db, uuid.uuid4(), rows, seed=1, eligible_share=0.3)
    base = time.perf_counter() - started
    print(f"reference kb seed (builds and COPYs synthetic rows): {rows:,} in {base:.2f}s = {rows / base:,.0f} rows/s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frame = sweep(rows)
        frame.to_csv(folder / "runs.csv", index=False)
        frame.to_parquet(folder / "runs.parquet")
        frame.assign(Start=frame["Start"].astype(str), End=frame["End"].astype(str)).to_json(
            folder / "runs.jsonl", orient="records", lines=True)
        ratios = []
        copy_before = await plain_copy(db, folder / "runs.csv", "runs.csv")
        for i, name in enumerate(("runs.csv", "runs.parquet", "runs.jsonl", "runs.csv")):
            ws = uuid.UUID(int=1) if name == "runs.csv" else uuid.uuid4()
            started = time.perf_counter()
            opened, mapping = open_file(folder / name, None, {}, {})
            read = time.perf_counter() - started
            report = (await import_table(db, ws, opened, mapping, source=name, dry_run=False)).to_dict()
            total = time.perf_counter() - started
            print(f"{name:<13} {report['rows']:,} rows: imported {report['imported']:,}, present "
                  f"{report['already_present']:,}, invalid {report['invalid']:,}; open {read:.2f}s, "
                  f"total {total:.2f}s = {report['rows'] / total:,.0f} rows/s; peak RSS {peak_rss_mb():.0f} MB")
            if i < 3:
                # The table grows with every load, so each import is set against the mean
                # of the COPYs just before and just after it.
                copy_after = await plain_copy(db, folder / name, name)
                ratios.append(report["rows"] / total / ((copy_before + copy_after) / 2))
                print(f"{'':<13} import / plain COPY (mean of the COPYs before and after) = {ratios[-1]:.2f}x")
                copy_before = copy_after
        print(f"import / plain COPY (same rows, same run): {', '.join(f'{r:.2f}x' for r in ratios)}; "
              f"lowest {min(ratios):.2f}x")
        storage = optuna_study(folder / "study.db", trials)
        started = time.perf_counter()
        table, mapping, counts = study_frame(storage, "bench", None)
        read = time.perf_counter() - started
        report = (await import_frame(db, uuid.uuid4(), table, mapping, source="optuna:bench", dry_run=False)).to_dict()
        total = time.perf_counter() - started
        print(f"optuna study  {counts['trials']:,} trials: imported {report['imported']:,}; read {read:.2f}s, "
              f"total {total:.2f}s = {report['rows'] / total:,.0f} rows/s")
    await db.close()


if __name__ == "__main__":
    run(main())
