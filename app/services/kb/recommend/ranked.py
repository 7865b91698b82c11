"""Running figures of a series whose members arrive out of order: values are placed at
their position in the series as they arrive, and sums by rank among those placed so far
are read in logarithmic time (a Fenwick tree of counts and sums).

The walk-forward replay needs this: a decision reads the decisions whose windows have
ended, in decision order, and windows end in another order than they start."""

from __future__ import annotations

import math


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

    def block_se(self, blocks: int) -> float:
        """Standard error of the mean of the placed values in position order, from the
        spread of the means of `blocks` consecutive blocks (NaN with fewer than two)."""
        n = self.placed
        if n < 2:
            return math.nan
        size = math.ceil(n / blocks)
        edges = [*range(0, n, size), n]
        if len(edges) < 3:
            return math.nan
        sums = [self.first(r) for r in edges]
        means = [(sums[i + 1] - sums[i]) / (edges[i + 1] - edges[i]) for i in range(len(edges) - 1)]
        mean = sum(means) / len(means)
        var = sum((m - mean) ** 2 for m in means) / (len(means) - 1)
        return math.sqrt(var) / math.sqrt(len(means))
