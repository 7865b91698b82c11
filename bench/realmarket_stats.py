"""Standard errors of means of overlapping-window results, for bench_realmarket.py.

Consecutive OOS windows share bars when the step is shorter than the window, so their
realised Sharpe ratios (and the differences between two choices made on them) are
correlated and the plain standard error of their mean is too small.

- `newey_west_se`: one series of decisions in window order, Bartlett weights 1 - l/(L+1)
  up to lag L. With windows of W bars stepping S bars, a window shares bars with the next
  ceil(W/S) - 1 windows: that is the lag (`overlap_lag`).
- `overlap_kernel_se`: decisions from several series and strategies pooled. The weight of
  a pair is the share of time their windows have in common, |A n B| / sqrt(|A| |B|): 1 for
  the same window (two strategies on one series, or two indices over the same dates), 0
  for disjoint ones. It is the Gram matrix of the windows' normalized indicator functions,
  so the variance it gives is never negative, and for one series of equal windows it is
  the Newey-West estimate above (weight 1 - l*S/W at lag l).
"""

from __future__ import annotations

import math

import numpy as np


def overlap_lag(window: int, step: int) -> int:
    return max(math.ceil(window / step) - 1, 0)


def newey_west_se(x: np.ndarray, lag: int) -> float:
    """HAC standard error of the mean of x (in order), Bartlett kernel up to `lag`."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 2:
        return float("nan")
    e = x - x.mean()
    var = float(e @ e) / n
    for lo in range(1, min(lag, n - 1) + 1):
        var += 2.0 * (1.0 - lo / (lag + 1)) * float(e[lo:] @ e[:-lo]) / n
    return math.sqrt(max(var, 0.0) / n)


def overlap_kernel_se(x: np.ndarray, start_ns: np.ndarray, end_ns: np.ndarray) -> float:
    """HAC standard error of the mean of x, each value observed over [start, end]; pairs
    are weighted by how much of their windows they share (module docstring)."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 2:
        return float("nan")
    s, e_ = np.asarray(start_ns, dtype=float), np.asarray(end_ns, dtype=float)
    length = np.maximum(e_ - s, 1.0)
    common = np.clip(np.minimum(e_[:, None], e_[None, :]) - np.maximum(s[:, None], s[None, :]), 0.0, None)
    same = (s[:, None] == s[None, :]) & (e_[:, None] == e_[None, :])
    kernel = np.where(same, 1.0, common / np.sqrt(length[:, None] * length[None, :]))
    dev = x - x.mean()
    return math.sqrt(max(float(dev @ kernel @ dev), 0.0)) / n


def mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
