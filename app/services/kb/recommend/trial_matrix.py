"""A strategy's active trials in memory, compact and appendable.

Per trial the matrix keeps what ranking needs, as arrays: ids as two 64-bit halves,
raw and scaled regime features in float32, the OOS figures, and codes for its tag set,
symbol and bar size (each distinct value stored once). Parameters stay as their JSON
text (the one per-trial object). About 200 bytes per trial plus its parameter text.

A new revision's trials are appended to the arrays (`extend`); the robust scaling is
refitted on all of them, so an appended matrix ranks exactly as one loaded afresh."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.services.kb.recommend.scaling import RobustScale
from app.services.kb.regime.snapshot import FEATURE_NAMES

MAX_TAG_BITS = 63  # tag overlap is counted on bitmasks; rarer tags beyond that do not count
W_QUALITY_TERM = 0.15  # the quality weight of a score (nearest.W_QUALITY)


def _quality(sharpe: np.ndarray, max_dd: np.ndarray) -> np.ndarray:
    s = np.clip(np.nan_to_num(sharpe, nan=0.0) / 3.0, 0.0, 1.0)
    dd = 1.0 - np.clip(np.nan_to_num(max_dd, nan=0.25) / 0.5, 0.0, 1.0)
    return 0.7 * s + 0.3 * dd


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

    @classmethod
    def empty(cls) -> Vocabulary:
        return cls([], {})

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
    """The stored columns of trials, before anything derived."""

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
    params: list[str]

    @classmethod
    def of(cls, rows: list[Any], tag_sets: Vocabulary, labels: Vocabulary) -> TrialColumns:
        n, d = len(rows), len(FEATURE_NAMES)
        feats = np.full((n, d), np.nan, dtype=np.float32)
        for i, r in enumerate(rows):
            if r["regime_features"] is not None and len(r["regime_features"]) == d:
                feats[i] = r["regime_features"]

        def col(name: str) -> np.ndarray:
            return np.array([np.nan if r[name] is None else r[name] for r in rows], dtype=float)

        def codes(values: list[Any], vocab: Vocabulary) -> np.ndarray:
            return np.array([vocab.code(v) for v in values], dtype=np.int32)

        return cls(
            uuid_halves([r["id"] for r in rows]), uuid_halves([r["source_run_id"] for r in rows]), feats,
            col("sharpe"), col("return_frac"), col("max_dd_frac"), col("n_trades"),
            np.array([r["kb_status"] == "promoted" for r in rows], dtype=bool),
            codes([frozenset(r["regime_tags"] or ()) for r in rows], tag_sets),
            codes([r["symbol"] or "" for r in rows], labels), codes([r["timeframe"] or "" for r in rows], labels),
            [r["params"] for r in rows])

    def __add__(self, other: TrialColumns) -> TrialColumns:
        def both(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.concatenate([a, b]) if len(b) else a

        joined = {f: both(getattr(self, f), getattr(other, f)) for f in _ARRAYS}
        return TrialColumns(joined["trial_ids"], joined["run_ids"], joined["features"], joined["sharpe"],
                            joined["return_frac"], joined["max_dd"], joined["n_trades"], joined["promoted"],
                            joined["tag_code"], joined["symbol_code"], joined["timeframe_code"],
                            self.params + other.params)


_ARRAYS = ("trial_ids", "run_ids", "features", "sharpe", "return_frac", "max_dd", "n_trades", "promoted", "tag_code",
           "symbol_code", "timeframe_code")


@dataclass
class TrialMatrix:
    revision: int
    columns: TrialColumns
    tag_sets: Vocabulary  # of frozensets of tags
    labels: Vocabulary  # symbols and bar sizes
    has_features: np.ndarray
    scaling: RobustScale
    scaled: np.ndarray  # (features - center) / scale, float32
    squared_norms: np.ndarray  # per trial, of `scaled` (fast distances)
    quality: np.ndarray
    tag_vocab: dict[str, int]
    combo_bits: np.ndarray  # per tag set (code): one bit per tag in tag_vocab
    _by_tags: tuple[list[np.ndarray], np.ndarray] | None = None

    @classmethod
    def of(cls, columns: TrialColumns, revision: int, tag_sets: Vocabulary, labels: Vocabulary) -> TrialMatrix:
        feats = columns.features
        has = ~np.isnan(feats).any(axis=1)
        scaling = RobustScale.fit(feats if has.all() else feats[has])
        scaled = (feats - scaling.center.astype(np.float32)) / scaling.scale.astype(np.float32)
        known = sorted(set().union(*tag_sets.values)) if tag_sets.values else []
        vocab = {t: i for i, t in enumerate(known[:MAX_TAG_BITS])}
        bits = np.array([sum(1 << vocab[t] for t in ts if t in vocab) for ts in tag_sets.values], dtype=np.int64)
        return cls(revision, columns, tag_sets, labels, has, scaling, scaled,
                   np.einsum("ij,ij->i", scaled, scaled), _quality(columns.sharpe, columns.max_dd).astype(np.float32),
                   vocab, bits)

    def __len__(self) -> int:
        return len(self.columns.params)

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
        if self._by_tags is None:
            c = self.columns
            key = W_QUALITY_TERM * self.quality.astype(np.float64) + 1e-9 * c.promoted
            order = np.lexsort((np.arange(len(self)), -key, c.tag_code))
            bounds = np.searchsorted(c.tag_code[order], np.arange(len(self.tag_sets.values) + 1))
            self._by_tags = ([order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)], key)
        return self._by_tags

    def extend(self, rows: list[Any], revision: int) -> TrialMatrix:
        """This matrix with trials written since its revision appended (a new matrix: the
        old one stays valid for the requests still reading it)."""
        added = TrialColumns.of(rows, self.tag_sets, self.labels)
        return TrialMatrix.of(self.columns + added, revision, self.tag_sets, self.labels)

    def nbytes(self) -> int:
        """Memory held by the per-trial arrays and parameter texts."""
        arrays = sum(getattr(self.columns, f).nbytes for f in _ARRAYS)
        derived = self.scaled.nbytes + self.squared_norms.nbytes + self.quality.nbytes + self.has_features.nbytes
        return arrays + derived + sum(len(p) + 57 for p in self.columns.params)  # str object + list slot


def build_trial_matrix(rows: list[Any], revision: int) -> TrialMatrix:
    tag_sets, labels = Vocabulary.empty(), Vocabulary.empty()
    return TrialMatrix.of(TrialColumns.of(rows, tag_sets, labels), revision, tag_sets, labels)
