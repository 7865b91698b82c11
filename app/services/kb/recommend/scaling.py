"""Robust feature scaling, written once: per-feature median and IQR (as a normal sigma)
over a set of regime snapshots, floored at the smallest spread that counts as a real
difference between regimes; the same scale applied to a query's features."""

from __future__ import annotations

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
        return cls(center.astype(float), np.maximum((q75 - q25).astype(float) / IQR_TO_SIGMA, MIN_SCALE))

    @classmethod
    def of_sorted(cls, columns: list[np.ndarray]) -> RobustScale:
        """The same fit from each feature's values already sorted (no partition of them
        all): what a matrix that keeps its sorted columns refits from after an append."""
        n = len(columns[0]) if columns else 0
        if n == 0:
            return cls(np.zeros(len(FEATURE_NAMES)), MIN_SCALE.copy())
        q25, center, q75 = _sorted_quartiles(columns, n)
        return cls(center.astype(float), np.maximum((q75 - q25).astype(float) / IQR_TO_SIGMA, MIN_SCALE))

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


def _sorted_quartiles(columns: list[np.ndarray], n: int) -> np.ndarray:
    """numpy's default ("linear") percentile at 25, 50 and 75 of n sorted values, to the
    bit: the same virtual indices, neighbours and interpolation (tested against it)."""
    virtual = (n - 1) * _QUARTILES
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1
    previous[above] = -1
    following[above] = -1
    gamma = (virtual - previous.astype(np.intp))[:, None]
    a = np.stack([col[previous.astype(np.intp)] for col in columns], axis=1)
    b = np.stack([col[following.astype(np.intp)] for col in columns], axis=1)
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
