"""NaN-safe rounding for figures that go out as JSON (NaN and infinities become None)."""

from __future__ import annotations

import math


def rounded(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)
