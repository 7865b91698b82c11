"""The JSON lines pre-pass types each batch's columns from the values' Python types; it
must name exactly what `DataFrame.from_records` would have given (which decides the
dtypes every chunk is read with, and so the imported rows and their content hashes)."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from app.services.kb.importing.kinds import batch_kinds, kind_of

_MISSING = object()
VALUES = [None, _MISSING, True, False, 0, 7, -3, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1.5, -0.0, 1e300,
          "", "x", "12", {"a": 1}, [1, 2], []]


def _pandas(batch: list[dict]) -> dict[str, str]:
    frame = pd.DataFrame.from_records(batch)
    return {str(name): kind_of(frame[name]) for name in frame.columns}


def _batch(rng: random.Random, rows: int, pool: list) -> list[dict]:
    out = []
    for _ in range(rows):
        row = {}
        for name in ("a", "b", "c"):
            value = rng.choice(pool)
            if value is not _MISSING:
                row[name] = value
        out.append(row)
    return out


@pytest.mark.parametrize("seed", range(300))
def test_the_kinds_of_a_batch_are_those_pandas_gives(seed: int) -> None:
    rng = random.Random(seed)
    pool = rng.sample(VALUES, rng.randint(1, 5))  # a few kinds of value per batch, as real files have
    batch = _batch(rng, rng.randint(1, 12), pool)
    if not any(batch):
        batch.append({"a": 1})
    assert list(batch_kinds(batch).items()) == list(_pandas(batch).items()), batch


@pytest.mark.parametrize("batch", [
    [{"n": 1}, {"n": 2}], [{"n": 1}, {}], [{"n": 1}, {"n": None}], [{"n": 1}, {"n": 2.5}], [{"n": True}, {"n": None}],
    [{"n": True}, {"n": 1}], [{"n": "a"}, {"n": 1}], [{"n": None}], [{"n": {"k": 1}}, {"n": None}],
    [{"n": 2**63}, {"n": 1}], [{"n": 2**63}, {"n": -1}], [{"n": 2**63}, {}], [{"x": 1}, {"n": "b", "x": 2}],
])
def test_the_cases_a_sweep_file_has(batch: list[dict]) -> None:
    assert list(batch_kinds(batch).items()) == list(_pandas(batch).items())
