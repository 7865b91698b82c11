"""A walk-forward after an append lends the decisions the append cannot have changed:
the same outcomes as a replay from scratch, to the bit, whatever the append holds (new
windows at the end, windows back in time, more runs in old windows, new sets)."""

from __future__ import annotations

import uuid
from dataclasses import astuple
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from app.services.kb.recommend.decisions import Reuse, walk_forward
from app.services.kb.recommend.evidence import build_matrix, extend_matrix
from app.services.kb.recommend.scaling import ExpandingScale, RobustScale
from app.services.kb.recommend.walkforward import TUNINGS, Outcome

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _rows(rng: np.random.Generator, days: np.ndarray, sets: int = 8, start_set: int = 0) -> list[dict[str, Any]]:
    """One window per start day (lasting 5-40 days), each testing most of `sets` sets."""
    rows = []
    for day in days.tolist():
        start = T0 + timedelta(days=day, minutes=int(rng.integers(0, 60)))
        end = start + timedelta(days=int(rng.integers(5, 40)))
        feats = (rng.normal(size=10) * np.linspace(0.01, 30, 10)).tolist()
        for s in range(start_set, start_set + sets):
            if rng.random() < 0.75:
                rows.append({"source_run_id": uuid.UUID(int=int(rng.integers(1, 2**62))), "symbol": "SPY",
                             "timeframe": "1d", "params": f'{{"set": {s}}}', "sharpe": float(rng.normal(0.1 * s, 1)),
                             "oos_start": start, "oos_end": end, "pre_features": feats, "oos_features": feats,
                             "pre_tags": ["a"], "oos_tags": ["b"], "eligible": bool(rng.random() < 0.8)})
    return rows


def _same(a: list[Outcome], b: list[Outcome]) -> None:
    assert [o.window for o in a] == [o.window for o in b]
    for x, y in zip(a, b, strict=True):
        for p, q in zip(astuple(x), astuple(y), strict=True):
            assert np.array_equal(np.asarray(p), np.asarray(q), equal_nan=True)


def _appended(seed: int, kind: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    first = _rows(rng, np.arange(0, 300, 3))
    if kind == "later windows":
        return first, _rows(rng, np.arange(300, 330, 3))
    if kind == "windows back in time":
        return first, _rows(rng, np.arange(150, 180, 7))
    if kind == "runs in old windows":
        return first, [{**r, "source_run_id": uuid.uuid4(), "sharpe": r["sharpe"] + 1.0} for r in first[-40:]]
    return first, _rows(rng, np.arange(301, 320, 3), sets=4, start_set=20)  # new sets


@pytest.mark.parametrize("kind", ["later windows", "windows back in time", "runs in old windows", "new sets"])
@pytest.mark.parametrize("seed", [1, 2])
def test_lent_decisions_equal_a_replay_from_scratch(seed: int, kind: str) -> None:
    first, more = _appended(seed, kind)
    base = build_matrix(first, 1)
    before = walk_forward(base, TUNINGS)
    grown = extend_matrix(base, more, 2)
    touched = grown.memo["appended_windows"]
    reuse = Reuse(tuple(before), TUNINGS, touched)
    lent_ids = {id(o) for o in before}
    again = walk_forward(grown, TUNINGS, reuse)
    _same(again, walk_forward(build_matrix(first + more, 2), TUNINGS))
    lent = sum(id(o) in lent_ids for o in again)
    assert len(again) > 30
    if kind == "windows back in time":
        assert 0 < lent < len(before)  # the decisions after the new windows ended are made again
    else:
        assert lent >= len(before) * 0.8


def test_a_check_of_other_tunings_lends_nothing() -> None:
    first, more = _appended(3, "later windows")
    base = build_matrix(first, 1)
    before = walk_forward(base, TUNINGS[:3])
    grown = extend_matrix(base, more, 2)
    again = walk_forward(grown, TUNINGS, Reuse(tuple(before), TUNINGS[:3], grown.memo["appended_windows"]))
    assert not {id(o) for o in before} & {id(o) for o in again}
    _same(again, walk_forward(grown, TUNINGS))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_expanding_scale_is_numpys_percentile_of_the_rows_added_to_the_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 700))
    features = rng.normal(size=(n, 10)) * rng.uniform(0.001, 50, 10)
    features[:, 3] = np.round(features[:, 3], 1)  # ties
    scale, order = ExpandingScale(features), rng.permutation(n)
    for i, row in enumerate(order.tolist()):
        scale.add(row)
        if i % 13 == 0 or i == n - 1:
            assert np.array_equal(scale.scale(), RobustScale.fit(features[order[:i + 1]]).scale)
