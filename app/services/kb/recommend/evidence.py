"""The evidence matrix recommend and evaluate read: OOS Sharpe per window and parameter
set, from every completed test variant with a regime whatever its kb_status (a set's
failures count as much as its successes), with each window's ex-ante and OOS regime and
whether a set reached the KB. Ingest writes the rows; this builds the matrix from them."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from app.errors import BadInput
from app.services.kb.recommend.query import Scope
from app.services.kb.recommend.scaling import RobustScale
from app.services.kb.recommend.trial_matrix import uuid_at, uuid_halves
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
    cell_run: np.ndarray  # one run per cell, its id as two 64-bit halves
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
    index: EvidenceIndex | None = None
    raw_cells: Any = None  # the cells as sums and counts, for appends
    windows: Any = None  # the per-window columns, for appends
    source_rows: int = 0  # the database rows it was built from, kept or not (set by the cache that loads it)

    def __getstate__(self) -> dict[str, Any]:
        """What a file keeps: everything but the derived results (`memo`), which may hold tasks."""
        return {**self.__dict__, "memo": {}}

    @contextmanager
    def codes_held(self) -> Iterator[bool]:
        """Hold this matrix's window and set codes still (no builder claims them to add
        codes) while they are copied; yields False when a builder is adding codes now."""
        index = self.index
        with _CLAIMS:
            free = index is not None and index.owner is None
            if free:
                index.owner = _HELD  # type: ignore[union-attr]
        try:
            yield free
        finally:
            if free:
                with _CLAIMS:
                    index.owner = None  # type: ignore[union-attr]

    @property
    def window_labels(self) -> list[str]:
        return list(self.windows.labels) if self.windows is not None else [""] * self.n_windows

    def nbytes(self) -> int:
        """Memory held by the cells, the windows and the set keys (their texts and index)."""
        cells = sum(getattr(self.raw_cells, f).nbytes for f in _CELL_FIELDS) if self.raw_cells is not None else 0
        arrays = (self.cell_set.nbytes + self.cell_sharpe.nbytes + self.cell_run.nbytes + self.cell_eligible.nbytes
                  + self.features.nbytes + self.scaled_features.nbytes + self.ptr.nbytes)
        keys = sum(len(k) + 57 + 100 for k in self.set_keys)  # the text, its list slot and its index entry
        return cells + arrays + keys

    @property
    def n_cells(self) -> int:
        return len(self.cell_set)

    def tag_bits(self) -> tuple[np.ndarray | None, dict[str, int]]:
        """Each window's tags as a bitmask over a vocabulary of them (None: more than 63 tags)."""
        if "tag_bits" not in self.memo:
            vocab = {t: i for i, t in enumerate(sorted({t for ts in self.tags for t in ts}))}
            bits = None if len(vocab) > 63 else np.array(
                [sum(1 << vocab[t] for t in ts) for ts in self.tags], dtype=np.int64).reshape(len(self.tags))
            self.memo["tag_bits"] = (bits, vocab)
        found: tuple[np.ndarray | None, dict[str, int]] = self.memo["tag_bits"]
        return found

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

    def values(self, w: int, wanted: np.ndarray) -> np.ndarray:
        """Each wanted set's Sharpe in window w, NaN where it was not tested there (a
        window's cells are sorted by set)."""
        sets = self.cell_set[self.ptr[w]:self.ptr[w + 1]]
        if not len(sets):
            return np.full(len(wanted), np.nan)
        at = np.minimum(np.searchsorted(sets, wanted), len(sets) - 1)
        return np.where(sets[at] == wanted, self.cell_sharpe[self.ptr[w] + at], np.nan)

    def value(self, w: int, s: int) -> float:
        return float(self.values(w, np.array([s]))[0])

    def run_of(self, w: int, s: int) -> uuid.UUID | None:
        lo, hi = int(self.ptr[w]), int(self.ptr[w + 1])
        hits = np.flatnonzero(self.cell_set[lo:hi] == s)
        return uuid_at(self.cell_run, lo + int(hits[0])) if len(hits) else None


@dataclass
class EvidenceIndex:
    """Window and set codes given so far: shared by a matrix and those appended from it
    (codes only grow, so an older matrix's codes stay valid). One builder at a time adds
    codes (`owner`); the windows it opens are its matrix's rows."""

    windows: dict[tuple[Any, ...], int] = field(default_factory=dict)
    sets: dict[str, int] = field(default_factory=dict)
    owner: object | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "owner": None}  # read back, no builder holds it

    def claimed(self, n_windows: int, n_sets: int, builder: object) -> EvidenceIndex:
        """This index for a builder appending to a matrix of these many windows and sets;
        a copy of that matrix's codes when another builder is adding codes, or when codes
        were given that no matrix of this base holds (a newer append, a failed load)."""
        with _CLAIMS:
            if self.owner is None and len(self.windows) == n_windows and len(self.sets) == n_sets:
                self.owner = builder
                return self
        return EvidenceIndex({k: w for k, w in self.windows.items() if w < n_windows},
                             {k: c for k, c in self.sets.items() if c < n_sets}, builder)


_CLAIMS = threading.Lock()
_HELD = object()  # the owner of an index while a matrix file is written


@dataclass
class _Rows:
    """Evidence rows mapped to (window, set) codes, with the windows they opened."""

    window_code: Any = field(default_factory=list)  # codes (a list or an array)
    set_code: Any = field(default_factory=list)
    sharpe: list[float] = field(default_factory=list)
    run: list[uuid.UUID] = field(default_factory=list)
    eligible: list[bool] = field(default_factory=list)
    feats: list[Any] = field(default_factory=list)
    ex_ante: list[bool] = field(default_factory=list)
    tags: list[tuple[str, ...]] = field(default_factory=list)
    oos_tags: list[tuple[str, ...]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    timeframes: set[str | None] = field(default_factory=set)

    def open(self, r: Any, key: tuple[Any, ...]) -> None:
        """A window first seen at row r: its ex-ante snapshot where there is one, else its OOS one."""
        use_pre = r["pre_features"] is not None
        self.feats.append(r["pre_features"] if use_pre else r["oos_features"])
        self.ex_ante.append(use_pre)
        self.tags.append(tuple(r["pre_tags"] if use_pre else r["oos_tags"]))
        self.oos_tags.append(tuple(r["oos_tags"]))
        self.timeframes.add(r["timeframe"])
        self.starts.append(to_ns(r["oos_start"]))
        self.ends.append(to_ns(r["oos_end"]))
        self.labels.append("|".join(str(k) for k in key))


def _collect(rows: list[Any], scope: Scope | None, index: EvidenceIndex) -> _Rows:
    """The rows the scope admits, with a complete regime and a finite Sharpe, as (window,
    set) codes; the windows first seen here are opened (in order of first appearance, as
    row by row would). Distinct windows and sets are looked up once per chunk."""
    d = len(FEATURE_NAMES)
    kept = []
    for i, r in enumerate(rows):
        if scope is not None and not scope.admits(r["symbol"], r["timeframe"], r["oos_end"]):
            continue
        vector = r["pre_features"] if r["pre_features"] is not None else r["oos_features"]
        if vector is not None and len(vector) == d and math.isfinite(r["sharpe"]):
            kept.append(i)
    rows = [rows[i] for i in kept] if len(kept) < len(rows) else rows
    out = _Rows()
    if not rows:
        return out
    keys = [(r["symbol"], r["timeframe"], r["oos_start"], r["oos_end"]) if r["oos_start"] is not None
            else ("run", r["source_run_id"]) for r in rows]
    found, distinct = pd.factorize(pd.Series(keys, dtype=object), use_na_sentinel=False)
    _, first = np.unique(found, return_index=True)
    codes = [index.windows.get(key, -1) for key in distinct]
    for u, key in enumerate(distinct):
        if codes[u] < 0:
            codes[u] = index.windows[key] = len(index.windows)
            out.open(rows[int(first[u])], key)
    sets, set_keys = pd.factorize(pd.Series([r["params"] for r in rows], dtype=object), use_na_sentinel=False)
    set_codes = [index.sets.setdefault(k, len(index.sets)) for k in set_keys]
    out.window_code = np.asarray(codes, dtype=np.int64)[found]
    out.set_code = np.asarray(set_codes, dtype=np.int64)[sets]
    out.sharpe = [float(r["sharpe"]) for r in rows]
    out.run = [r["source_run_id"] for r in rows]
    out.eligible = [bool(r["eligible"]) for r in rows]
    return out


@dataclass
class _Cells:
    """Cells before they are grouped by window: repeated runs of one set in one window
    average (sum and count kept, so later runs add in)."""

    window: np.ndarray
    set: np.ndarray
    sum: np.ndarray
    count: np.ndarray
    run: np.ndarray  # (n, 2) uint64 halves of one run's id
    eligible: np.ndarray

    def merged(self, other: _Cells, n_sets: int) -> _Cells:
        """Both, with cells of the same (window, set) combined; this one's come first. This
        one is sorted by (window, set) already: the other's cells (few, sorted here) are
        added in place or inserted, so a merge costs one pass, not a sort of everything."""
        if not len(self.window) or not len(other.window):
            return _sorted_cells(self if len(self.window) else other, n_sets)
        new = _sorted_cells(other, n_sets)
        scale = max(n_sets, 1)
        old_key, new_key = self.window * scale + self.set, new.window * scale + new.set
        at = np.searchsorted(old_key, new_key)
        hit = old_key[np.minimum(at, len(old_key) - 1)] == new_key
        total, count, eligible = self.sum.copy(), self.count.copy(), self.eligible.copy()
        total[at[hit]] += new.sum[hit]
        count[at[hit]] += new.count[hit]
        eligible[at[hit]] |= new.eligible[hit]
        put, fresh = at[~hit], ~hit
        return _Cells(np.insert(self.window, put, new.window[fresh]), np.insert(self.set, put, new.set[fresh]),
                      np.insert(total, put, new.sum[fresh]), np.insert(count, put, new.count[fresh]),
                      np.insert(self.run, put, new.run[fresh], axis=0), np.insert(eligible, put, new.eligible[fresh]))


def _sorted_cells(both: _Cells, n_sets: int) -> _Cells:
    """Cells sorted by (window, set), those of one (window, set) combined (the first's run kept)."""
    if not len(both.window):
        return both
    key = both.window * max(n_sets, 1) + both.set
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    at = order[first]
    return _Cells(both.window[at], both.set[at], np.add.reduceat(both.sum[order], first),
                  np.add.reduceat(both.count[order], first), both.run[at],
                  np.logical_or.reduceat(both.eligible[order], first))


_CELL_FIELDS = ("window", "set", "sum", "count", "run", "eligible")


def _cells_of(rows: _Rows) -> _Cells:
    return _Cells(np.array(rows.window_code, dtype=np.int64), np.array(rows.set_code, dtype=np.int64),
                  np.array(rows.sharpe, dtype=float), np.ones(len(rows.window_code), dtype=np.int64),
                  uuid_halves(rows.run), np.array(rows.eligible, dtype=bool))


def _assemble(cells: _Cells, windows: _Windows, index: EvidenceIndex, revision: int) -> EvidenceMatrix:
    n_w, n_s = len(windows.starts), len(index.sets)
    ptr = np.searchsorted(cells.window, np.arange(n_w + 1)).astype(np.int64)
    eligible = np.zeros(n_s, dtype=bool)
    eligible[cells.set[cells.eligible]] = True
    scaling = RobustScale.fit(windows.features)
    scaled = scaling.apply(windows.features)
    return EvidenceMatrix(
        revision, list(index.sets), eligible, ptr, cells.set, cells.sum / cells.count, cells.run, cells.eligible,
        windows.features, windows.ex_ante, windows.tags, windows.oos_tags, windows.starts, windows.ends, scaling,
        scaled, (scaled * scaled).sum(axis=1), frozenset(windows.timeframes), index=index, raw_cells=cells,
        windows=windows)


@dataclass
class _Windows:
    features: np.ndarray
    ex_ante: np.ndarray
    tags: list[tuple[str, ...]]
    oos_tags: list[tuple[str, ...]]
    starts: np.ndarray
    ends: np.ndarray
    labels: list[str]
    timeframes: frozenset[str | None]

    def __add__(self, rows: _Rows) -> _Windows:
        feats = np.array(rows.feats, dtype=float).reshape(len(rows.feats), len(FEATURE_NAMES))
        return _Windows(np.concatenate([self.features, feats]),
                        np.concatenate([self.ex_ante, np.array(rows.ex_ante, dtype=bool)]),
                        self.tags + rows.tags, self.oos_tags + rows.oos_tags,
                        np.concatenate([self.starts, np.array(rows.starts, dtype=np.int64)]),
                        np.concatenate([self.ends, np.array(rows.ends, dtype=np.int64)]),
                        self.labels + rows.labels, self.timeframes | rows.timeframes)


_NO_WINDOWS = _Windows(np.zeros((0, len(FEATURE_NAMES))), np.zeros(0, dtype=bool), [], [], np.zeros(0, np.int64),
                       np.zeros(0, np.int64), [], frozenset())


class EvidenceBuilder:
    """Evidence rows taken chunk by chunk (no chunk kept as records) into a new matrix, or
    into `base` with them added; equal to a build of all the rows at once."""

    def __init__(self, base: EvidenceMatrix | None = None, scope: Scope | None = None) -> None:
        if base is not None and (base.index is None or base.raw_cells is None):
            raise ValueError("this evidence matrix cannot be appended to")  # not built by a builder
        self.base, self.scope = base, scope
        self.index = EvidenceIndex(owner=self) if base is None or base.index is None else \
            base.index.claimed(base.n_windows, base.n_sets, self)
        self.windows = _NO_WINDOWS if base is None else base.windows
        self.parts: list[_Cells] = []

    def take(self, rows: list[Any]) -> EvidenceBuilder:
        found = _collect(rows, self.scope, self.index)
        self.parts.append(_cells_of(found))
        self.windows = self.windows + found
        return self

    def finish(self, revision: int) -> EvidenceMatrix:
        new = _Cells(*(np.concatenate([getattr(p, f) for p in self.parts]) for f in _CELL_FIELDS)) \
            if len(self.parts) > 1 else (self.parts[0] if self.parts else _cells_of(_Rows()))
        n_sets = len(self.index.sets)
        cells = _sorted_cells(new, n_sets) if self.base is None else self.base.raw_cells.merged(new, n_sets)
        matrix = _assemble(cells, self.windows, self.index, revision)
        if self.base is not None:  # what a walk-forward of the base cannot have seen
            matrix.memo["appended_windows"] = np.unique(new.window)
        self.index.owner = None
        return matrix


def build_matrix(rows: list[Any], revision: int, scope: Scope | None = None) -> EvidenceMatrix:
    """The matrix of the evidence rows the scope admits (all of them without one)."""
    return EvidenceBuilder(None, scope).take(rows).finish(revision)


def extend_matrix(m: EvidenceMatrix, rows: list[Any], revision: int, scope: Scope | None = None) -> EvidenceMatrix:
    """`m` with the evidence written since its revision added (a new matrix: `m` stays
    valid for the requests still reading it). Equal to a fresh build of all the rows."""
    return EvidenceBuilder(m, scope).take(rows).finish(revision)
