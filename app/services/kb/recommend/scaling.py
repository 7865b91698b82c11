"""Robust feature scaling, written once: per-feature median and IQR (as a normal sigma)
over a set of regime snapshots, floored at the smallest spread that counts as a real
difference between regimes; the same scale applied to a query's features."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.services.kb.regime.snapshot import FEATURE_NAMES, RegimeSnapshot

# The smallest spread per feature that counts as a real difference between regimes
# (FEATURE_NAMES order). Without it a small, tight cluster has a near-zero IQR and every
# other regime looks infinitely far away.
MIN_SCALE = np.array([0.001, 5.0, 0.005, 0.001, 0.01, 0.5, 0.1, 0.5, 0.1, 0.02])
IQR_TO_SIGMA = 1.349  # the IQR of a normal distribution in standard deviations


@dataclass(frozen=True)
class RobustScale:
    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> RobustScale:
        """From the rows of `features` (rows with a NaN are the caller's to drop)."""
        if len(features) == 0:
            return cls(np.zeros(len(FEATURE_NAMES)), MIN_SCALE.copy())
        # One pass for the three quantiles, in the features' own precision (no float64 copy).
        q25, center, q75 = np.percentile(features, [25, 50, 75], axis=0)
        return cls(center.astype(float), _spread(q25, q75))

    @classmethod
    def of_sorted(cls, columns: list[np.ndarray]) -> RobustScale:
        """The same fit from each feature's values already sorted (no partition of them
        all): what a matrix that keeps its sorted columns refits from after an append."""
        n = len(columns[0]) if columns else 0
        if n == 0:
            return cls(np.zeros(len(FEATURE_NAMES)), MIN_SCALE.copy())
        q25, center, q75 = _sorted_quartiles(lambda at: np.stack([col[at] for col in columns], axis=1), n)
        return cls(center.astype(float), _spread(q25, q75))

    def apply(self, features: np.ndarray) -> np.ndarray:
        return (features - self.center) / self.scale

    def query(self, regime: RegimeSnapshot | None) -> np.ndarray | None:
        """A query regime's scaled feature vector, or None when it has no complete one."""
        if regime is None:
            return None
        vec = regime.feature_vector()
        if any(v is None for v in vec):
            return None
        return self.apply(np.array(vec, dtype=float))


_QUARTILES = np.true_divide([25, 50, 75], 100)


def _spread(q25: np.ndarray, q75: np.ndarray) -> np.ndarray:
    return np.maximum((q75 - q25).astype(float) / IQR_TO_SIGMA, MIN_SCALE)


def _sorted_quartiles(take: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
    """numpy's default ("linear") percentile at 25, 50 and 75 of n values, to the bit: the
    same virtual indices, neighbours and interpolation (tested against it). `take(at)`:
    per feature, the values of order statistics `at` (0-based, -1 the largest), (3, d)."""
    virtual = (n - 1) * _QUARTILES
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1
    previous[above] = -1
    following[above] = -1
    gamma = (virtual - previous.astype(np.intp))[:, None]
    a, b = np.split(take(np.concatenate([previous, following]).astype(np.intp)), 2)
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=np.broadcast_to(gamma >= 0.5, out.shape), casting="unsafe")
    return out


def rms_distances(scaled: np.ndarray, squared_norms: np.ndarray, query: np.ndarray) -> np.ndarray:
    """RMS distance of each row of `scaled` to `query`, from precomputed squared row norms:
    |x - q|^2 = |x|^2 - 2 x.q + |q|^2, one matrix-vector product instead of a full
    difference matrix."""
    squared = squared_norms - 2.0 * (scaled @ query) + float(query @ query)
    return np.sqrt(np.maximum(squared, 0.0) / scaled.shape[1])


class ExpandingScale:
    """The robust scale (as `RobustScale.fit`) of a growing subset of fixed feature rows,
    rows added one at a time: what a walk-forward knows at each decision. Each feature's
    rows are ranked once; order statistics come from per-block counts of the rows added."""

    BLOCK = 128

    def __init__(self, features: np.ndarray) -> None:
        n_rows, self.d = features.shape
        order = np.argsort(features, axis=0, kind="stable").T  # (d, rows): row at each rank
        self.sorted = np.take_along_axis(features.T, order, axis=1)
        self.rank = np.empty_like(order)
        np.put_along_axis(self.rank, order, np.arange(n_rows)[None, :].repeat(self.d, axis=0), axis=1)
        blocks = max(1, -(-n_rows // self.BLOCK))
        self.added = np.zeros((self.d, blocks * self.BLOCK), dtype=np.int64)
        self.counts = np.zeros((self.d, blocks), dtype=np.int64)
        self.n = 0
        self._features = np.arange(self.d)
        self._scale: tuple[int, np.ndarray] | None = None

    def add(self, row: int) -> None:
        at = self.rank[:, row]
        self.added[self._features, at] = 1
        self.counts[self._features, at // self.BLOCK] += 1
        self.n += 1

    def _order_statistics(self, at: np.ndarray) -> np.ndarray:
        """Per feature, the values of ranks `at` (0-based, -1 the largest) among the rows added: (len(at), d)."""
        k = np.where(at < 0, self.n + at, at)[:, None]  # (m, 1)
        cum = np.zeros((self.d, self.counts.shape[1] + 1), dtype=np.int64)
        np.cumsum(self.counts, axis=1, out=cum[:, 1:])  # (d, blocks + 1): rows added before each block
        block = (cum[None, :, 1:] <= k[:, :, None]).sum(axis=2)  # (m, d): the block holding rank k
        before = cum[self._features[None, :], block]
        cols = block[:, :, None] * self.BLOCK + np.arange(self.BLOCK)
        inside = np.cumsum(self.added[self._features[None, :, None], cols], axis=2)
        offset = (inside <= (k - before)[:, :, None]).sum(axis=2)
        return self.sorted[self._features[None, :], block * self.BLOCK + offset]

    def scale(self) -> np.ndarray:
        if self._scale is None or self._scale[0] != self.n:  # decisions between two added rows share it
            if self.n == 0:
                self._scale = (0, MIN_SCALE.copy())
            else:
                q25, _, q75 = _sorted_quartiles(self._order_statistics, self.n)
                self._scale = (self.n, _spread(q25, q75))
        return self._scale[1]


def scaled_distances(raw: np.ndarray, raw_squared: np.ndarray, query: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """RMS distance of each row of `raw` to `query` in units of `scale` per feature, from
    the rows' precomputed squares: two matrix-vector products, no difference matrix."""
    w = 1.0 / (scale * scale)
    squared = raw_squared @ w - 2.0 * (raw @ (w * query)) + float((query * query) @ w)
    return np.sqrt(np.maximum(squared, 0.0) / raw.shape[1])
