"""Performance evidence for recommend() and evaluate: every completed test variant with a
regime, whatever its kb_status (a set's failures count as much as its successes), with
its OOS window, its ex-ante and OOS regime, and whether it reached the KB.

Ingest writes it (`evidence_row`, `upsert_evidence`) in the same pass as the trials;
recommend and evaluate read it as an `EvidenceMatrix` of OOS Sharpe per window and
parameter set, cached per KB revision.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import orjson

from app.db.connector import Conn
from app.db.sql import q
from app.services.kb.revision_cache import RevisionCache
from app.services.kb.run_fields import ParsedRun
from app.services.kb.snapshot import FEATURE_NAMES
from app.services.kb.windows import extract_windows

ELIGIBLE = ("candidate", "promoted")


def evidence_row(row: asyncpg.Record, run: ParsedRun) -> tuple[Any, ...] | None:
    """One completed test variant as an evidence row, or None when it says nothing usable
    (no regime, no finite Sharpe, no strategy, no OOS features)."""
    m = run.extracted.metrics
    if (row["run_kind"] != "test_variant" or m is None or m.sharpe_oos is None or not row["strategy_name"]
            or run.features is None):
        return None
    window = extract_windows(run.meta, run.params).oos
    symbol = run.symbol.strip().upper() if run.symbol is not None else None
    values = (row["strategy_name"], symbol, run.timeframe, run.params_key, float(m.sharpe_oos), m.n_trades_oos,
              window.start if window else None, window.end if window else None, run.pre_features,
              run.features, run.pre_tags_literal, run.tags_literal, row["kb_status"] in ELIGIBLE)
    digest = hashlib.sha256(orjson.dumps(values, default=str)).hexdigest()[:32]
    return (row["id"], *values, digest)


async def upsert_evidence(conn: Conn, workspace_id: uuid.UUID, rows: list[tuple[Any, ...]]) -> int:
    """Insert or update evidence rows (unchanged ones are skipped); returns how many changed."""
    if not rows:
        return 0
    return len(await conn.fetch(q("upsert_evidence"), workspace_id, *[list(c) for c in zip(*rows, strict=True)]))


async def delete_stale_evidence(conn: Conn, workspace_id: uuid.UUID) -> int:
    """Evidence whose run no longer qualifies (not completed, or its regime removed)."""
    status = await conn.execute(q("delete_stale_evidence"), workspace_id)
    return int(status.rsplit(" ", 1)[-1])


@dataclass
class EvidenceMatrix:
    """Windows x parameter sets of OOS Sharpe, kept sparse: one cell per (window, set)
    that was tested, grouped by window (`ptr[w]:ptr[w+1]`). A window is one (symbol, OOS
    start, OOS end) regime observation; its features are the ex-ante snapshot where
    there is one. Random searches (every run its own set) stay as small as their runs."""

    revision: int
    set_keys: list[str]  # canonical params JSON per set
    eligible: np.ndarray  # per set: reached the KB at least once
    ptr: np.ndarray  # per window: offset of its first cell (n_windows + 1)
    cell_set: np.ndarray
    cell_sharpe: np.ndarray  # mean OOS Sharpe of the set's runs in the window
    cell_run: list[uuid.UUID]  # one run per cell
    features: np.ndarray  # windows x d (raw)
    ex_ante: np.ndarray  # per window: features are ex-ante (else OOS)
    tags: list[tuple[str, ...]]  # per window, of the snapshot matched
    oos_tags: list[tuple[str, ...]]
    start_ns: np.ndarray  # per window OOS start (ns), -1 unknown
    end_ns: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    scaled_features: np.ndarray  # (features - center) / scale, computed once per load
    squared_norms: np.ndarray  # per window, of scaled_features (fast distances)
    # Query-independent results derived from this matrix (all-history stats), built on first use.
    memo: dict[Any, Any] = field(default_factory=dict)

    @property
    def n_windows(self) -> int:
        return len(self.ptr) - 1

    @property
    def n_sets(self) -> int:
        return len(self.set_keys)

    def scaled(self, vector: np.ndarray) -> np.ndarray:
        return (vector - self.center) / self.scale

    def tested(self) -> np.ndarray:
        """Sets tested per window."""
        return np.diff(self.ptr)

    def row(self, w: int) -> np.ndarray:
        """A window's Sharpe per set, NaN where the set was not tested there."""
        out = np.full(self.n_sets, np.nan)
        out[self.cell_set[self.ptr[w]:self.ptr[w + 1]]] = self.cell_sharpe[self.ptr[w]:self.ptr[w + 1]]
        return out

    def cells(self, windows: np.ndarray) -> np.ndarray:
        """Indices of the cells of these windows, window by window."""
        starts = self.ptr[windows]
        lengths = self.ptr[windows + 1] - starts
        # Each window's run of cells: its start, shifted by where its run begins in the output.
        shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        return shift + np.arange(int(lengths.sum()), dtype=np.int64)

    def run_of(self, w: int, s: int) -> uuid.UUID | None:
        lo, hi = int(self.ptr[w]), int(self.ptr[w + 1])
        hits = np.flatnonzero(self.cell_set[lo:hi] == s)
        return self.cell_run[lo + int(hits[0])] if len(hits) else None


# The smallest spread per feature that counts as a real difference between regimes
# (FEATURE_NAMES order), so a tight cluster of windows does not make every other look far.
MIN_SCALE = np.array([0.001, 5.0, 0.005, 0.001, 0.01, 0.5, 0.1, 0.5, 0.1, 0.02])


def _ns(value: Any) -> int:
    return -1 if value is None else int(value.timestamp() * 1e6) * 1000


def build_matrix(rows: list[Any], revision: int) -> EvidenceMatrix:
    windows: dict[tuple[Any, ...], int] = {}
    sets: dict[str, int] = {}
    # (window, set) -> [sum, count, a run]; repeated runs of one set in one window average.
    cells: dict[tuple[int, int], list[Any]] = {}
    eligible: list[bool] = []
    feats: list[Any] = []
    ex_ante: list[bool] = []
    tags: list[tuple[str, ...]] = []
    oos_tags: list[tuple[str, ...]] = []
    starts: list[int] = []
    ends: list[int] = []
    for r in rows:
        use_pre = r["pre_features"] is not None
        vector = r["pre_features"] if use_pre else r["oos_features"]
        if vector is None or len(vector) != len(FEATURE_NAMES) or not math.isfinite(r["sharpe"]):
            continue
        key = (r["symbol"], r["timeframe"], r["oos_start"], r["oos_end"]) if r["oos_start"] is not None \
            else ("run", r["source_run_id"])
        w = windows.get(key)
        if w is None:
            w = windows[key] = len(windows)
            feats.append(vector)
            ex_ante.append(use_pre)
            tags.append(tuple(r["pre_tags"] if use_pre else r["oos_tags"]))
            oos_tags.append(tuple(r["oos_tags"]))
            starts.append(_ns(r["oos_start"]))
            ends.append(_ns(r["oos_end"]))
        s = sets.get(r["params"])
        if s is None:
            s = sets[r["params"]] = len(sets)
            eligible.append(False)
        eligible[s] = eligible[s] or bool(r["eligible"])
        cell = cells.get((w, s))
        if cell is None:
            cells[(w, s)] = [float(r["sharpe"]), 1, r["source_run_id"]]
        else:
            cell[0] += float(r["sharpe"])
            cell[1] += 1
    order = sorted(cells)
    cell_window = np.array([w for w, _ in order], dtype=np.int64)
    ptr = np.searchsorted(cell_window, np.arange(len(windows) + 1)).astype(np.int64)
    n_w = len(windows)
    features = np.array(feats, dtype=float).reshape(n_w, len(FEATURE_NAMES))
    if n_w:
        center = np.median(features, axis=0)
        q75, q25 = np.percentile(features, [75, 25], axis=0)
        scale = np.maximum((q75 - q25) / 1.349, MIN_SCALE)
    else:
        center, scale = np.zeros(len(FEATURE_NAMES)), MIN_SCALE.copy()
    scaled = (features - center) / scale
    return EvidenceMatrix(
        revision, list(sets), np.array(eligible, dtype=bool), ptr,
        np.array([s for _, s in order], dtype=np.int64),
        np.array([cells[c][0] / cells[c][1] for c in order], dtype=float), [cells[c][2] for c in order],
        features, np.array(ex_ante, dtype=bool), tags, oos_tags, np.array(starts, dtype=np.int64),
        np.array(ends, dtype=np.int64), center, scale, scaled, (scaled * scaled).sum(axis=1))


class EvidenceCache(RevisionCache[EvidenceMatrix]):
    """Evidence matrices per (workspace, strategy) for one KB revision."""

    def __init__(self) -> None:
        super().__init__("load_evidence", build_matrix)
