"""Shared builders for the tests: runs, price frames, regime snapshots, constants.
Test modules import from here, never from each other or from `conftest`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from app.services.kb.recommend.nested import Past, Promise, band_of_sorted, promise_of
from app.services.kb.regime import compute_regime_snapshot

API_TOKEN = "s3cret"

BASE_TIME = datetime(2025, 3, 1, tzinfo=UTC)


RUN_COLUMNS = (
    "id", "workspace_id", "created_at", "started_at", "completed_at", "run_kind", "status",
    "strategy_name", "experiment_type", "params", "dataset_meta", "summary", "trade_count",
    "kb_status", "regime_oos", "regime_is", "regime_pre", "regime_schema_version",
)


def run_row(workspace_id: uuid.UUID, i: int = 0, **overrides: Any) -> dict[str, Any]:
    """A completed, eligible-looking test variant; override any column."""
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "workspace_id": workspace_id,
        "created_at": BASE_TIME + timedelta(minutes=i),
        "started_at": None,
        "completed_at": None,
        "run_kind": "test_variant",
        "status": "completed",
        "strategy_name": "mean_rev",
        "experiment_type": None,
        "params": {"lookback": 20, "z_entry": 1.5},
        "dataset_meta": {"symbol": "AAPL", "timeframe": "1h"},
        "summary": {"trades": 40, "sharpe": 1.2, "max_drawdown_pct": -12.0, "return_pct": 8.0},
        "trade_count": None,
        "kb_status": "excluded",
        "regime_oos": None,
        "regime_is": None,
        "regime_pre": None,
        "regime_schema_version": None,
    }
    row.update(overrides)
    return row


def ohlcv_frame(start: datetime, rows: int, *, seed: int, tz: str = "UTC") -> pd.DataFrame:
    """Hourly bars of a random walk from `start`; ISO timestamps written in `tz`."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, rows)))
    ts = pd.date_range(start, periods=rows, freq="h", tz="UTC").tz_convert(tz)
    return pd.DataFrame({"timestamp": ts.map(lambda t: t.isoformat()), "open": close, "high": close * 1.003,
                         "low": close * 0.997, "close": close, "volume": 1000.0})



START = datetime(2024, 1, 1, tzinfo=UTC)
HOURS = 2000


def up_then_down(symbol: str | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    half = HOURS // 2
    # 0.15% per bar each way: beyond the trend_dir dead band of 0.1% per bar
    trend = 100 * np.exp(np.concatenate([np.arange(half), half - np.arange(HOURS - half)]) * 0.0015)
    close = trend * (1 + rng.normal(0, 0.001, HOURS))
    ts = pd.date_range(START, periods=HOURS, freq="h", tz="UTC")
    df = pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "open": close,
                       "high": close * 1.002, "low": close * 0.998, "close": close, "volume": 1000})
    if symbol:
        df.insert(0, "symbol", symbol)
    return df


def iso(hours: int) -> str:
    return (START + timedelta(hours=hours)).isoformat()


def trend_snapshot(direction: int, noise: float = 0.0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.arange(200) * 0.002 * direction + rng.normal(0, noise + 1e-4, 200))
    ts = pd.date_range("2024-01-01", periods=200, freq="h", tz="UTC")
    df = pd.DataFrame({"timestamp": ts, "high": close * 1.002, "low": close * 0.998, "close": close})
    return compute_regime_snapshot(df, source="test", timeframe="1h").to_dict()


def trend_snapshot_frame(direction: int) -> dict:
    close = 100 * np.exp(np.arange(200) * 0.002 * direction)
    return {"timestamp": pd.date_range("2024-03-01", periods=200, freq="h", tz="UTC"),
            "high": close * 1.002, "low": close * 0.998, "close": close}


def chunked_sweep_export(path: Path, rows: int, chunk_rows: int) -> Path:
    """A sweep export whose chunks of `chunk_rows` rows, each read alone, would read
    otherwise than the whole file: `param_a` whole numbers in the first chunk and fractions
    after; `param_b` numbers, then a word on every third row after two chunks; `param_c`
    whole numbers with gaps only after two chunks; `symbol` numbers missing from some late
    rows; run ids with leading zeros on even rows (the others' id is a content hash).
    CSV, JSON lines, one JSON array (`.json`) or Parquet (without `param_b`: one type per
    column), by the path's suffix."""
    k = range(rows)
    late = 2 * chunk_rows
    columns = {
        "strategy_name": ["sma"] * rows,
        "param_a": [float(v % 7) if v < chunk_rows else v % 7 + 0.5 for v in k],
        "param_b": ["auto" if v >= late and v % 3 == 0 else v % 5 for v in k],
        "param_c": [None if v >= late and v % 2 else v % 9 for v in k],
        "symbol": [None if v >= late and v % 2 == 0 else v % 4 for v in k],
        "run_id": [f"{v:07d}" if v % 2 == 0 else None for v in k],
        "sharpe": [v / 1000 for v in k], "trades": [v % 50 for v in k],
        "oos_start": [f"2024-01-{1 + v % 28:02d}" for v in k], "oos_end": ["2024-03-01"] * rows,
    }
    if path.suffix == ".csv":
        pd.DataFrame({**columns, "param_c": pd.array(columns["param_c"], dtype="Int64")}).to_csv(path, index=False)
    elif path.suffix in (".jsonl", ".json"):
        columns["param_a"] = [int(a) if v < chunk_rows else a for v, a in enumerate(columns["param_a"])]
        records = [{n: c[i] for n, c in columns.items() if c[i] is not None} for i in range(rows)]
        if path.suffix == ".json":  # one array: read whole, then cut into chunks
            path.write_bytes(b"[\n" + b",\n".join(orjson.dumps(r) for r in records) + b"\n]")
        else:
            path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    else:
        del columns["param_b"]
        table = pa.table({**columns, "param_c": pa.array(columns["param_c"], pa.int64()),
                          "symbol": pa.array(columns["symbol"], pa.int64())})
        pq.write_table(table, path, row_group_size=7_000)  # batches end at row-group ends
    return path


SWEEP_T0 = datetime(2024, 1, 1, tzinfo=UTC)
SWEEP_UP, SWEEP_DOWN = trend_snapshot(1, seed=1), trend_snapshot(-1, seed=2)


def sweep_windows(ws: uuid.UUID, n_windows: int, sharpe_of: Any) -> list[dict]:
    """One full sweep of sets A and B per window; windows alternate regime in blocks of 5.
    The ex-ante snapshot is the window's own regime (regimes persist)."""
    rows = []
    for w in range(n_windows):
        up = (w // 5) % 2 == 0
        snap = SWEEP_UP if up else SWEEP_DOWN
        start = SWEEP_T0 + timedelta(days=10 * w)
        for name in ("A", "B"):
            rows.append(run_row(
                ws, len(rows), strategy_name="s", params={"set": name, "lookback": 10 if name == "A" else 30},
                kb_status="candidate", regime_oos=snap, regime_pre=snap,
                dataset_meta={"symbol": "SYN", "timeframe": "1h", "oos_start": start.isoformat(),
                              "oos_end": (start + timedelta(days=9)).isoformat()},
                summary={"trades": 40, "sharpe": sharpe_of(name, up, w), "max_drawdown_pct": -5.0}))
    return rows


def calibrate(raw: float, past_raw: np.ndarray, past_realised: np.ndarray, past_cal: np.ndarray,
              fallback_sd: float, prior: float, past_missed: int | None = None) -> Promise:
    """The promise the replay makes for `raw`, from earlier answers given as arrays."""
    return promise_of(raw, Past.of(past_raw, past_realised, past_cal, past_missed), fallback_sd, prior)


def conformal_band(residuals: np.ndarray, miss_rate: float) -> tuple[float, float]:
    """The replay's conformal band of residuals in any order."""
    return band_of_sorted(np.sort(residuals), miss_rate)
