"""Running figures of a series whose members arrive out of order: values are placed at
their position in the series as they arrive, and sums by rank among those placed so far
are read in logarithmic time (a Fenwick tree of counts and sums).

The walk-forward replay needs this: a decision reads the decisions whose windows have
ended, in decision order, and windows end in another order than they start."""

from __future__ import annotations

import itertools
import math

import numpy as np


class RankedSums:
    """Values placed at positions 0..size-1; the sum of the first r placed (by position)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._count = [0] * (size + 1)
        self._sum = [0.0] * (size + 1)
        self._top = 1 << max(size.bit_length() - 1, 0)
        self.placed = 0
        self.total = 0.0

    def place(self, position: int, value: float) -> None:
        j = position + 1
        while j <= self._size:
            self._count[j] += 1
            self._sum[j] += value
            j += j & -j
        self.placed += 1
        self.total += value

    def first(self, r: int) -> float:
        """The sum of the first `r` values placed, in position order."""
        if r >= self.placed:
            return self.total
        at, left, total = 0, r, 0.0
        step = self._top
        while step:
            nxt = at + step
            if nxt <= self._size and self._count[nxt] <= left:
                at, left, total = nxt, left - self._count[nxt], total + self._sum[nxt]
            step >>= 1
        return total

    def block_means(self, blocks: int) -> list[float]:
        """The means of `blocks` consecutive blocks of the placed values, in position order."""
        edges = block_edges(self.placed, blocks)
        sums = {r: self.first(r) for r in edges}
        return [(sums[b] - sums[a]) / (b - a) for a, b in itertools.pairwise(edges)]

    def block_se(self, blocks: int) -> float:
        """Standard error of the mean of the placed values in position order (`se_of_block_means`)."""
        return se_of_block_means(self.block_means(blocks))


def block_edges(n: int, blocks: int) -> list[int]:
    """Where `blocks` consecutive blocks of a series of n values start, and its end: blocks
    of ceil(n / blocks) values, the last one shorter."""
    return [*range(0, n, math.ceil(n / blocks)), n] if n else [0]


def se_of_block_means(means: list[float]) -> float:
    """Standard error of the mean of a serially dependent series from the means of its
    consecutive blocks (NaN with fewer than two blocks)."""
    if len(means) < 2:
        return math.nan
    return float(np.std(means, ddof=1) / math.sqrt(len(means)))
