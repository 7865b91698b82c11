"""Time-ordered run ids (`app.ids`): version 7 layout, sorted by their millisecond, distinct."""

from __future__ import annotations

from app.ids import time_ordered_ids


def test_ids_carry_their_millisecond_and_sort_by_it() -> None:
    early, late = time_ordered_ids(1000, at_ms=1_700_000_000_000), time_ordered_ids(1000, at_ms=1_700_000_000_001)
    assert len(set(early + late)) == 2000
    assert all(u.version == 7 and u.variant == "specified in RFC 4122" for u in early + late)
    assert {u.int >> 80 for u in early} == {1_700_000_000_000} and {u.int >> 80 for u in late} == {1_700_000_000_001}
    assert max(early) < min(late)
    assert time_ordered_ids(0) == []
