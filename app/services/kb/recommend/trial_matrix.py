"""A strategy's active trials in memory, compact and appendable.

Per trial the matrix keeps what ranking needs, as arrays: ids as two 64-bit halves,
raw and scaled regime features in float32, the OOS figures, and codes for its tag set,
symbol and bar size (each distinct value stored once). Parameters stay as their JSON
text (the one per-trial object). About 200 bytes per trial plus its parameter text.

A new revision's trials are appended to the arrays (`extend`); the robust scaling is
refitted on all of them, so an appended matrix ranks exactly as one loaded afresh."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from app.services.kb.recommend.scaling import RobustScale
from app.services.kb.regime.snapshot import FEATURE_NAMES

MAX_TAG_BITS = 63  # tag overlap is counted on bitmasks; rarer tags beyond that do not count
W_QUALITY_TERM = 0.15  # the quality weight of a score (nearest.W_QUALITY)


def _quality(sharpe: np.ndarray, max_dd: np.ndarray) -> np.ndarray:
    s = np.clip(np.nan_to_num(sharpe, nan=0.0) / 3.0, 0.0, 1.0)
    dd = 1.0 - np.clip(np.nan_to_num(max_dd, nan=0.25) / 0.5, 0.0, 1.0)
    return 0.7 * s + 0.3 * dd


def _features(vectors: list[Any]) -> np.ndarray:
    """Regime feature vectors as float32 rows, NaN where a trial has no complete one."""
    d = len(FEATURE_NAMES)
    complete = [v is not None and len(v) == d and None not in v for v in vectors]
    out = np.full((len(vectors), d), np.nan, dtype=np.float32)
    if all(complete):
        return np.array(vectors, dtype=np.float32).reshape(len(vectors), d)
    at = np.flatnonzero(complete)
    if len(at):
        out[at] = np.array([vectors[i] for i in at.tolist()], dtype=np.float32)
    return out


def uuid_halves(ids: list[uuid.UUID]) -> np.ndarray:
    """UUIDs as an (n, 2) array of big-endian 64-bit halves (16 bytes each)."""
    return np.frombuffer(b"".join(u.bytes for u in ids), dtype=">u8").reshape(-1, 2).astype(np.uint64)


def uuid_at(halves: np.ndarray, i: int) -> uuid.UUID:
    return uuid.UUID(int=(int(halves[i, 0]) << 64) | int(halves[i, 1]))


@dataclass
class Vocabulary:
    """Distinct values and their codes, shared by a matrix and the matrices appended from
    it (codes only ever grow, so an older matrix's codes stay valid)."""

    values: list[Any]
    codes: dict[Any, int]
    lock: threading.Lock = field(default_factory=threading.Lock)  # two loads may add codes at once

    @classmethod
    def empty(cls) -> Vocabulary:
        return cls([], {})

    def __getstate__(self) -> dict[str, Any]:
        with self.lock:  # another load may be adding codes
            return {"values": list(self.values), "codes": dict(self.codes)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, lock=threading.Lock())

    def codes_of(self, values: list[Any], key: Callable[[Any], Any] | None = None) -> np.ndarray:
        """The code of each value (of `key(value)` when given, worked out once per distinct
        value: chunks repeat a few symbols and tag sets many times)."""
        found, seen = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=False)
        with self.lock:
            distinct = [self.code(key(v) if key is not None else v) for v in seen]
        return np.asarray(distinct, dtype=np.int32)[found] if distinct else np.zeros(0, np.int32)

    def code(self, value: Any) -> int:
        found = self.codes.get(value)
        if found is None:
            found = self.codes[value] = len(self.values)
            self.values.append(value)
        return found

    def find(self, value: Any) -> int:
        """The value's code, -1 when the matrix has never seen it."""
        return self.codes.get(value, -1)


@dataclass
class TrialColumns:
    """The stored columns of trials, and what each trial's own row decides (features
    complete, quality, the tags-only ranking key)."""

    trial_ids: np.ndarray
    run_ids: np.ndarray
    features: np.ndarray  # n x d float32, NaN where a trial has no complete regime
    sharpe: np.ndarray
    return_frac: np.ndarray
    max_dd: np.ndarray
    n_trades: np.ndarray
    promoted: np.ndarray
    tag_code: np.ndarray
    symbol_code: np.ndarray
    timeframe_code: np.ndarray
    has_features: np.ndarray
    quality: np.ndarray  # float32
    tag_key: np.ndarray  # quality term of a tags-only score, promoted first among equals
    params: list[str]
    room: _Room | None = None

    @classmethod
    def of(cls, rows: list[Any], tag_sets: Vocabulary, labels: Vocabulary) -> TrialColumns:
        def col(name: str) -> np.ndarray:  # None reads as NaN
            return np.array([r[name] for r in rows], dtype=float)

        sharpe, max_dd = col("sharpe"), col("max_dd_frac")
        promoted = np.array([r["kb_status"] == "promoted" for r in rows], dtype=bool)
        quality = _quality(sharpe, max_dd).astype(np.float32)
        feats = _features([r["regime_features"] for r in rows])
        return cls(
            uuid_halves([r["id"] for r in rows]), uuid_halves([r["source_run_id"] for r in rows]), feats,
            sharpe, col("return_frac"), max_dd, col("n_trades"), promoted,
            tag_sets.codes_of([tuple(r["regime_tags"] or ()) for r in rows], frozenset),
            labels.codes_of([r["symbol"] or "" for r in rows]), labels.codes_of([r["timeframe"] or "" for r in rows]),
            np.asarray(~np.isnan(feats).any(axis=1)), quality,
            W_QUALITY_TERM * quality.astype(np.float64) + 1e-9 * promoted, [r["params"] for r in rows])

    def __len__(self) -> int:
        return len(self.params)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "room": None}  # the columns alone; the next append makes room

    def __add__(self, other: TrialColumns) -> TrialColumns:
        """Both in one: written into the spare rows after this one's arrays when it is the
        last appended there (older matrices keep their shorter views), else copied into new
        arrays with room to spare."""
        n, k = len(self), len(other)
        with _APPENDING:
            room = self.room
            if room is None or room.filled != n or room.capacity < n + k:
                # Half as much again when chunks of a load arrive (few copies in all), else a spare eighth.
                room = _Room.of({f: getattr(self, f) for f in _ARRAYS}, max(_spared(n + k), n + n // 2))
            for f in _ARRAYS:
                room.arrays[f][n:n + k] = getattr(other, f)
            room.filled = n + k
        views = {f: room.arrays[f][:n + k] for f in _ARRAYS}
        return TrialColumns(**views, params=self.params + other.params, room=room)

    def compact(self) -> TrialColumns:
        """These columns with a spare eighth of rows, no more (after a load's growth)."""
        n = len(self)
        if self.room is None or self.room.capacity <= _spared(n):
            return self
        room = _Room.of({f: getattr(self, f) for f in _ARRAYS}, _spared(n))
        return TrialColumns(**{f: room.arrays[f][:n] for f in _ARRAYS}, params=self.params, room=room)


_ARRAYS = ("trial_ids", "run_ids", "features", "sharpe", "return_frac", "max_dd", "n_trades", "promoted", "tag_code",
           "symbol_code", "timeframe_code", "has_features", "quality", "tag_key")
_APPENDING = threading.Lock()  # appends run in worker threads; taking the spare rows is one step
SPARE_SHARE = 8  # spare rows kept after a matrix's arrays, for the next appends: an eighth


def _spared(rows: int) -> int:
    return rows + rows // SPARE_SHARE + 1


@dataclass
class _Room:
    """The arrays behind the columns of a matrix and those appended from it, with spare
    rows; `filled` rows are taken."""

    arrays: dict[str, np.ndarray]
    filled: int

    @property
    def capacity(self) -> int:
        return len(self.arrays["sharpe"])

    @classmethod
    def of(cls, current: dict[str, np.ndarray], rows: int) -> _Room:
        arrays = {}
        for f, a in current.items():
            arrays[f] = np.empty((rows, *a.shape[1:]), dtype=a.dtype)
            arrays[f][:len(a)] = a
        return cls(arrays, len(current["sharpe"]))

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


@dataclass
class TrialMatrix:
    revision: int
    columns: TrialColumns
    tag_sets: Vocabulary  # of frozensets of tags
    labels: Vocabulary  # symbols and bar sizes
    sorted_features: list[np.ndarray]  # per feature, its values over trials with features, sorted
    scaling: RobustScale
    scaled: np.ndarray  # (features - center) / scale, float32
    squared_norms: np.ndarray  # per trial, of `scaled` (fast distances)
    tag_vocab: dict[str, int]
    combo_bits: np.ndarray  # per tag set (code): one bit per tag in tag_vocab
    _by_tags: list[np.ndarray] | None = None
    source_rows: int = 0  # the database rows it was built from (set by the cache that loads it)

    @classmethod
    def of(cls, columns: TrialColumns, revision: int, tag_sets: Vocabulary, labels: Vocabulary,
           sorted_features: list[np.ndarray] | None = None) -> TrialMatrix:
        if sorted_features is None:
            with_features = columns.features[columns.has_features]
            sorted_features = [np.sort(with_features[:, j]) for j in range(with_features.shape[1])]
        scaling = RobustScale.of_sorted(sorted_features)
        scaled = np.subtract(columns.features, scaling.center.astype(np.float32))
        np.divide(scaled, scaling.scale.astype(np.float32), out=scaled)
        known = sorted(set().union(*tag_sets.values)) if tag_sets.values else []
        vocab = {t: i for i, t in enumerate(known[:MAX_TAG_BITS])}
        bits = np.array([sum(1 << vocab[t] for t in ts if t in vocab) for ts in tag_sets.values], dtype=np.int64)
        return cls(revision, columns, tag_sets, labels, sorted_features, scaling, scaled,
                   np.einsum("ij,ij->i", scaled, scaled), vocab, bits)

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def has_features(self) -> np.ndarray:
        return self.columns.has_features

    @property
    def quality(self) -> np.ndarray:
        return self.columns.quality

    def trial_id(self, i: int) -> uuid.UUID:
        return uuid_at(self.columns.trial_ids, i)

    def run_id(self, i: int) -> uuid.UUID:
        return uuid_at(self.columns.run_ids, i)

    def tags(self, i: int) -> frozenset[str]:
        return frozenset(self.tag_sets.values[int(self.columns.tag_code[i])])

    def tag_bits(self, idx: np.ndarray) -> np.ndarray:
        return self.combo_bits[self.columns.tag_code[idx]] if len(self.combo_bits) else np.zeros(len(idx), np.int64)

    def by_tag_set(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Per tag set (code), its trials best quality first (promoted first among equals,
        then by position), and each trial's quality term of a tags-only score; built once."""
        c = self.columns
        if self._by_tags is None:
            order = np.lexsort((np.arange(len(self)), -c.tag_key, c.tag_code))
            bounds = np.searchsorted(c.tag_code[order], np.arange(len(self.tag_sets.values) + 1))
            self._by_tags = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
        return self._by_tags, c.tag_key

    def extend(self, rows: list[Any], revision: int) -> TrialMatrix:
        return self.extended(TrialColumns.of(rows, self.tag_sets, self.labels), revision)

    def extended(self, added: TrialColumns, revision: int) -> TrialMatrix:
        """This matrix with trials written since its revision appended (a new matrix: the
        old one stays valid for the requests still reading it). The sorted feature columns
        and the per-tag-set orders take the new trials by insertion."""
        new = added.features[added.has_features]
        sorted_features = [np.insert(col, np.searchsorted(col, v), v)
                           for col, v in zip(self.sorted_features, np.sort(new, axis=0).T, strict=True)]
        m = TrialMatrix.of(self.columns + added, revision, self.tag_sets, self.labels, sorted_features)
        if self._by_tags is not None:
            m._by_tags = _merged_orders(self._by_tags, m.columns, len(self), len(self.tag_sets.values))
        return m

    def nbytes(self) -> int:
        """Memory held by the per-trial arrays (with their spare rows), the sorted features and
        the parameter texts."""
        c = self.columns
        arrays = c.room.nbytes() if c.room is not None else sum(getattr(c, f).nbytes for f in _ARRAYS)
        derived = self.scaled.nbytes + self.squared_norms.nbytes + sum(s.nbytes for s in self.sorted_features)
        return arrays + derived + sum(len(p) + 57 for p in c.params)  # str object + list slot


def _merged_orders(orders: list[np.ndarray], c: TrialColumns, start: int, n_codes: int) -> list[np.ndarray]:
    """The per-tag-set orders with trials start.. inserted where a fresh sort puts them."""
    new = np.arange(start, len(c))
    new = new[np.lexsort((new, -c.tag_key[new], c.tag_code[new]))]
    bounds = np.searchsorted(c.tag_code[new], np.arange(n_codes + 1))
    out = orders + [np.zeros(0, dtype=np.int64)] * (n_codes - len(orders))
    for code in np.flatnonzero(np.diff(bounds)).tolist():
        add, old = new[bounds[code]:bounds[code + 1]], out[code]
        # Among equal keys the earlier trial comes first, and every new trial is later.
        out[code] = np.insert(old, np.searchsorted(-c.tag_key[old], -c.tag_key[add], side="right"), add)
    return out


class TrialBuilder:
    """Rows taken chunk by chunk (no chunk kept as records) into a new matrix, or into
    `base` with them appended."""

    def __init__(self, base: TrialMatrix | None = None) -> None:
        self.base = base
        self.tag_sets = base.tag_sets if base is not None else Vocabulary.empty()
        self.labels = base.labels if base is not None else Vocabulary.empty()
        self.columns = TrialColumns.of([], self.tag_sets, self.labels)

    def take(self, rows: list[Any]) -> TrialBuilder:
        self.columns = self.columns + TrialColumns.of(rows, self.tag_sets, self.labels)
        return self

    def finish(self, revision: int) -> TrialMatrix:
        if self.base is not None:
            return self.base.extended(self.columns, revision)
        return TrialMatrix.of(self.columns.compact(), revision, self.tag_sets, self.labels)


def build_trial_matrix(rows: list[Any], revision: int) -> TrialMatrix:
    return TrialBuilder().take(rows).finish(revision)
