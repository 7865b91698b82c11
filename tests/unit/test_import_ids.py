"""The hashes of the ids an import has written (`app.db.imports.SeenIds`): every id added
is found, through any number of merges, and ids never added are not (no database here)."""

from __future__ import annotations

import numpy as np

from app.db.imports import SeenIds


def test_every_added_id_is_found_and_no_other() -> None:
    seen = SeenIds()
    added: list[str] = []
    for chunk in range(40):
        ids = [f"run-{chunk}-{i}" for i in range(1 + (chunk * 37) % 500)]
        hashes = SeenIds.hashes(ids)
        assert not seen.matches(hashes).any()
        seen.add(hashes)
        added += ids
        assert seen.matches(SeenIds.hashes(added)).all()
        assert len(seen.runs) <= 2 + int(np.log2(len(added)))  # merged as they grow
    assert sum(len(r) for r in seen.runs) == len(added)
    assert all((np.diff(r) >= 0).all() for r in seen.runs)
    assert not seen.matches(SeenIds.hashes([f"other-{i}" for i in range(1000)])).any()


def test_runs_stop_merging_at_the_cap(monkeypatch) -> None:
    monkeypatch.setattr(SeenIds, "RUN_CAP", 1000)
    seen = SeenIds()
    added: list[str] = []
    for chunk in range(30):
        ids = [f"run-{chunk}-{i}" for i in range(300)]
        seen.add(SeenIds.hashes(ids))
        added += ids
    assert max(len(r) for r in seen.runs) <= 1000 and len(seen.runs) >= 9
    assert seen.matches(SeenIds.hashes(added)).all()
    assert not seen.matches(SeenIds.hashes([f"other-{i}" for i in range(1000)])).any()
