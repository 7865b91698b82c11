"""Per-(workspace, strategy) matrices built from the database, valid for one KB revision.

Concurrent requests for a matrix that is not cached share one load (no stampede of
identical queries), and the CPU-bound build runs in a worker thread so the event loop
keeps answering requests whose matrices are cached."""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from app.db import Database
from app.db.trials import kb_revision, load_evidence, load_trials
from app.services.kb.recommend.evidence import EvidenceMatrix, build_matrix
from app.services.kb.recommend.nearest import TrialMatrix, build_trial_matrix
from app.services.kb.recommend.query import Scope

__all__ = ["EvidenceCache", "RevisionCache", "TrialCache", "kb_revision"]


class Revisioned(Protocol):
    revision: int


M = TypeVar("M", bound=Revisioned)
Key = tuple[uuid.UUID, str, Scope]
Loader = Callable[[Database, uuid.UUID, str], Awaitable[list[Any]]]


class RevisionCache(Generic[M]):
    def __init__(self, load: Loader, build: Callable[[list[Any], int, Scope], M], entries: int = 32) -> None:
        self._load_rows = load
        self._build = build
        self._size = entries
        self._entries: OrderedDict[Key, M] = OrderedDict()
        self._loading: dict[tuple[uuid.UUID, str, Scope, int], asyncio.Task[M]] = {}

    async def get(self, db: Database, workspace_id: uuid.UUID, strategy: str, revision: int | None = None,
                  scope: Scope | None = None) -> M:
        if revision is None:
            revision = await kb_revision(db, workspace_id)
        key = (workspace_id, strategy, scope or Scope())
        hit = self._entries.get(key)
        if hit is not None and hit.revision == revision:
            self._entries.move_to_end(key)
            return hit
        loading_key = (*key, revision)
        task = self._loading.get(loading_key)
        if task is None:
            # A task of its own: a caller that gives up (client gone) does not cancel the
            # load the other callers wait for.
            task = asyncio.create_task(self._load(db, key, revision))
            self._loading[loading_key] = task
            task.add_done_callback(lambda t: self._loaded(t, loading_key))
        return await asyncio.shield(task)

    def _loaded(self, task: asyncio.Task[M], loading_key: tuple[uuid.UUID, str, Scope, int]) -> None:
        self._loading.pop(loading_key, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not logged twice

    async def _load(self, db: Database, key: Key, revision: int) -> M:
        rows = await self._load_rows(db, key[0], key[1])
        matrix = await asyncio.to_thread(self._build, rows, revision, key[2])
        self._entries[key] = matrix
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return matrix


class EvidenceCache(RevisionCache[EvidenceMatrix]):
    """Evidence matrices per (workspace, strategy) for one KB revision."""

    def __init__(self) -> None:
        super().__init__(load_evidence, build_matrix)


class TrialCache(RevisionCache[TrialMatrix]):
    """Trial matrices per (workspace, strategy) for one KB revision, and beside them the
    evidence matrices (with their walk-forward check) that recommend and evaluate read."""

    def __init__(self) -> None:
        super().__init__(load_trials, lambda rows, revision, _scope: build_trial_matrix(rows, revision))
        self.evidence = EvidenceCache()


DEFAULT_CACHE = TrialCache()
