"""backfill-regime: compute each run's own OOS (and IS) regime snapshot from OHLCV data."""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from app.db import Database
from app.db import backfill as runs
from app.db.connector import Conn
from app.db.trials import Record
from app.far_time import INVALID_CREATED_AT, FarTime
from app.services.kb.backfill.engine import BackfillResult, EngineOptions, Outcome, run_backfill
from app.services.kb.regime.features import (
    MIN_EFFECTIVE_BARS,
    REGIME_WINDOW_BARS,
    compute_feature_batch,
    snapshot_dicts,
)
from app.services.kb.regime.ohlcv import OhlcvData, calendar_slack_ns
from app.services.kb.runs.scan import Hooks, ScanOptions
from app.services.kb.runs.summary import json_object
from app.services.kb.runs.windows import Window, extract_windows

INSUFFICIENT_COVERAGE = "insufficient_ohlcv_coverage"
SYMBOL_MISMATCH = "symbol_mismatch"
MISSING_SYMBOL = "missing_symbol"
TIMEFRAME_MISMATCH = "timeframe_mismatch"
NO_EX_ANTE = "insufficient_ex_ante_history"
_Span = tuple[int, int] | None  # a window's first and last bar index
_CACHE_SIZE = 20_000  # computed snapshots kept for runs that share a window


@dataclass(frozen=True)
class RegimeOptions(ScanOptions):
    limit: int = 500
    timeframe: str = "1d"
    symbol: str | None = None


def file_digest(path: Any) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:32]


class RegimeJob:
    kind = "regime"

    def __init__(self, opts: RegimeOptions, data: OhlcvData, bar_seconds: int, digest: str) -> None:
        self.opts = opts
        self.data = data
        self.bar_ns = bar_seconds * 1_000_000_000
        # How far a window's ends may lie from the nearest bar: one bar, or the file's own
        # non-trading gaps (weekends, nights, holidays).
        self.slack = {key: calendar_slack_ns(series, self.bar_ns) for key, series in data.series.items()}
        self.digest = digest
        self.cache: OrderedDict[tuple[str | None, int, int], str] = OrderedDict()
        self.computed_windows = 0

    def identity(self) -> dict[str, Any]:
        return {
            "workspace_id": str(self.opts.workspace_id),
            "since": self.opts.since.isoformat() if self.opts.since else None,
            "symbol": self.opts.symbol,
            "timeframe": self.opts.timeframe,
            "ohlcv_file": str(self.data.path),
            "ohlcv_sha256": self.digest,
        }

    async def fetch_page(
        self, conn: Conn, after: tuple[datetime, uuid.UUID], size: int
    ) -> Sequence[Record]:
        return await runs.regime_page(conn, self.opts.workspace_id, after, size, self.opts.symbol)

    def _series_key(self, run_symbol: Any) -> tuple[str | None, str | None]:
        """(series key, skip reason)."""
        wanted = self.opts.symbol.upper() if self.opts.symbol else None
        have = str(run_symbol).strip().upper() if isinstance(run_symbol, str) and run_symbol.strip() else None
        if self.data.has_symbol_column:
            key = have or wanted
            if key is None:
                return None, MISSING_SYMBOL
            return (key, None) if key in self.data.series else (None, SYMBOL_MISMATCH)
        if have is not None and wanted is not None and have != wanted:
            return None, SYMBOL_MISMATCH
        return next(iter(self.data.series)), None

    def _spans(self, key: str | None, windows: list[Window]) -> list[tuple[int, int] | None]:
        """Per window, the index range of its bars, or None when the data does not cover it."""
        if not windows:
            return []
        ts = self.data.series[key].ts
        start_ns = np.array([int(w.start.timestamp() * 1e6) * 1000 for w in windows], dtype=np.int64)
        end_ns = np.array([int(w.end.timestamp() * 1e6) * 1000 for w in windows], dtype=np.int64)
        s = np.searchsorted(ts, start_ns, "left")
        e = np.searchsorted(ts, end_ns, "right") - 1
        ok = (e >= s) & (e - s + 1 >= MIN_EFFECTIVE_BARS)
        last = len(ts) - 1
        slack = self.slack[key]
        ok &= (ts[np.clip(s, 0, last)] - start_ns <= slack) & (end_ns - ts[np.clip(e, 0, last)] <= slack)
        return [(a, b) if good else None for a, b, good in zip(s.tolist(), e.tolist(), ok.tolist(), strict=True)]

    def _check(self, rows: Sequence[Record]) -> list[tuple[Any, str | None, str | None, Window | None,
                                                           Window | None]]:
        """Per row: the row, a skip reason (None: passes so far), its series key and its windows."""
        wanted_tf = self.opts.timeframe.strip().lower()
        checked: list[tuple[Any, str | None, str | None, Window | None, Window | None]] = []
        for row in rows:
            meta, params = json_object(row["dataset_meta"]), json_object(row["params"])
            windows = extract_windows(meta, params)
            reason = INVALID_CREATED_AT if isinstance(row["created_at"], FarTime) else windows.reason
            key: str | None = None
            if reason is None:
                key, reason = self._series_key(meta.get("symbol"))
            run_tf = meta.get("timeframe")
            if reason is None and isinstance(run_tf, str) and run_tf.strip().lower() != wanted_tf:
                reason = TIMEFRAME_MISMATCH
            oos = windows.oos if reason is None else None
            checked.append((row, reason, key, oos, windows.is_ if oos is not None else None))
        return checked

    def evaluate(self, rows: Sequence[Record]) -> list[Outcome]:
        checked = self._check(rows)
        wanted: dict[str | None, list[Window]] = {}
        for _, _, key, oos_w, is_w in checked:
            wanted.setdefault(key, []).extend(w for w in (oos_w, is_w) if w is not None)
        # The bars of every window, one vectorised lookup per series, in the order asked.
        found = {key: iter(self._spans(key, windows)) for key, windows in wanted.items()}
        plans: list[tuple[Any, str | None, str | None, _Span, _Span, _Span]] = []
        for row, skip, key, oos_w, is_w in checked:
            oos = next(found[key]) if oos_w is not None else None
            is_ = next(found[key]) if is_w is not None else None
            uncovered = oos_w is not None and oos is None
            pre = self._ex_ante(oos) if oos is not None else None
            plans.append((row, INSUFFICIENT_COVERAGE if uncovered else skip, key, oos, None if uncovered else is_, pre))
        self._compute_missing([(k, span) for _, r, k, o, i, p in plans if r is None for span in (o, i, p) if span])
        outcomes = []
        for row, reason, key, oos, is_, pre in plans:
            if reason is not None or oos is None:
                outcomes.append(Outcome(row["id"], row["created_at"], reason))
                continue
            payload = (self._cached(key, oos), self._cached(key, is_) if is_ else None,
                       self._cached(key, pre) if pre else None)
            outcomes.append(Outcome(row["id"], row["created_at"], None, payload, None if pre else NO_EX_ANTE))
        return outcomes

    @staticmethod
    def _ex_ante(oos: tuple[int, int]) -> tuple[int, int] | None:
        """The trailing bars that end just before the OOS window's first bar: what one
        could know when choosing the run's parameters. None when the data does not reach
        back MIN_EFFECTIVE_BARS bars."""
        end = oos[0] - 1
        start = max(0, end - REGIME_WINDOW_BARS + 1)
        return (start, end) if end - start + 1 >= MIN_EFFECTIVE_BARS else None

    def _cached(self, key: str | None, span: tuple[int, int]) -> str:
        return self.cache[(key, span[0], span[1])]

    def _compute_missing(self, wanted: list[tuple[str | None, tuple[int, int]]]) -> None:
        by_series: dict[str | None, set[tuple[int, int]]] = {}
        for key, span in wanted:
            k = (key, span[0], span[1])
            if k in self.cache:
                self.cache.move_to_end(k)  # in use by this page: never the one evicted below
            else:
                by_series.setdefault(key, set()).add(span)
        for key, spans in by_series.items():
            series = self.data.series[key]
            ordered = sorted(spans)
            starts = np.array([s for s, _ in ordered], dtype=np.int64)
            ends = np.array([e for _, e in ordered], dtype=np.int64)
            batch = compute_feature_batch(series.high, series.low, series.close, starts, ends)
            snaps = snapshot_dicts(batch, series.ts, starts, ends, source="backfill",
                                   timeframe=self.opts.timeframe, instrument=key,
                                   total_bars=ends - starts + 1)
            for (s, e), snap in zip(ordered, snaps, strict=True):
                self.cache[(key, s, e)] = orjson.dumps(snap).decode()
            self.computed_windows += len(ordered)
        while len(self.cache) > max(_CACHE_SIZE, len(wanted)):
            self.cache.popitem(last=False)

    async def count_after(self, conn: Conn, after: tuple[datetime, uuid.UUID]) -> int:
        return await runs.count_regime_after(conn, self.opts.workspace_id, after, self.opts.symbol)

    async def write(self, conn: Conn, passed: list[Outcome], backfill_run_id: uuid.UUID) -> int:
        return await runs.write_regimes(conn, self.opts.workspace_id, [o.run_id for o in passed],
                                        [o.payload[0] for o in passed], [o.payload[1] for o in passed],
                                        [o.payload[2] for o in passed], backfill_run_id)


async def backfill_regime(db: Database, opts: RegimeOptions, data: OhlcvData, bar_seconds: int,
                          hooks: Hooks | None = None) -> BackfillResult:
    """Run (or resume) the regime backfill over already-loaded OHLCV data."""
    job = RegimeJob(opts, data, bar_seconds, file_digest(data.path))
    return await run_backfill(db, job, EngineOptions(opts, hooks or Hooks()))
