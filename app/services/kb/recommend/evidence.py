"""The evidence matrix recommend and evaluate read: OOS Sharpe per window and parameter
set, from every completed test variant with a regime whatever its kb_status (a set's
failures count as much as its successes), with each window's ex-ante and OOS regime and
whether a set reached the KB. Ingest writes the rows; this builds the matrix from them."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.errors import BadInput
from app.services.kb.recommend.query import Scope
from app.services.kb.recommend.scaling import RobustScale
from app.services.kb.regime.snapshot import FEATURE_NAMES
from app.timestamps import to_ns


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
    cell_eligible: np.ndarray  # a run of the set reached the KB in this window
    features: np.ndarray  # windows x d (raw)
    ex_ante: np.ndarray  # per window: features are ex-ante (else OOS)
    tags: list[tuple[str, ...]]  # per window, of the snapshot matched
    oos_tags: list[tuple[str, ...]]
    start_ns: np.ndarray  # per window OOS start (ns), UNKNOWN_NS unknown
    end_ns: np.ndarray
    scaling: RobustScale
    scaled_features: np.ndarray  # (features - center) / scale, computed once per load
    squared_norms: np.ndarray  # per window, of scaled_features (fast distances)
    # Bar sizes of the windows (None: runs that record none); more than one is never mixed.
    timeframes: frozenset[str | None] = frozenset()
    # Query-independent results derived from this matrix (all-history stats), built on first use.
    memo: dict[Any, Any] = field(default_factory=dict)

    def require_one_bar_size(self, strategy: str) -> None:
        """Refuse to compare windows of different bar sizes (the caller passes --timeframe)."""
        known = sorted(str(t) for t in self.timeframes if t is not None)
        if len(known) > 1:  # runs that record no bar size cannot be told apart and are not refused
            raise BadInput(f"the evidence of {strategy!r} has several bar sizes ({', '.join(known)}): pass "
                           "--timeframe (API: timeframe); bar sizes are never mixed")

    @property
    def n_windows(self) -> int:
        return len(self.ptr) - 1

    @property
    def n_sets(self) -> int:
        return len(self.set_keys)

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


def build_matrix(rows: list[Any], revision: int, scope: Scope | None = None) -> EvidenceMatrix:
    """The matrix of the evidence rows the scope admits (all of them without one)."""
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
    timeframes: set[str | None] = set()
    for r in rows:
        if scope is not None and not scope.admits(r["symbol"], r["timeframe"], r["oos_end"]):
            continue
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
            timeframes.add(r["timeframe"])
            starts.append(to_ns(r["oos_start"]))
            ends.append(to_ns(r["oos_end"]))
        s = sets.get(r["params"])
        if s is None:
            s = sets[r["params"]] = len(sets)
            eligible.append(False)
        eligible[s] = eligible[s] or bool(r["eligible"])
        cell = cells.get((w, s))
        if cell is None:
            cells[(w, s)] = [float(r["sharpe"]), 1, r["source_run_id"], bool(r["eligible"])]
        else:
            cell[0] += float(r["sharpe"])
            cell[1] += 1
            cell[3] = cell[3] or bool(r["eligible"])
    order = sorted(cells)
    cell_window = np.array([w for w, _ in order], dtype=np.int64)
    ptr = np.searchsorted(cell_window, np.arange(len(windows) + 1)).astype(np.int64)
    n_w = len(windows)
    features = np.array(feats, dtype=float).reshape(n_w, len(FEATURE_NAMES))
    scaling = RobustScale.fit(features)
    scaled = scaling.apply(features)
    return EvidenceMatrix(
        revision, list(sets), np.array(eligible, dtype=bool), ptr,
        np.array([s for _, s in order], dtype=np.int64),
        np.array([cells[c][0] / cells[c][1] for c in order], dtype=float), [cells[c][2] for c in order],
        np.array([cells[c][3] for c in order], dtype=bool),
        features, np.array(ex_ante, dtype=bool), tags, oos_tags, np.array(starts, dtype=np.int64),
        np.array(ends, dtype=np.int64), scaling, scaled, (scaled * scaled).sum(axis=1), frozenset(timeframes))
