"""Per-(workspace, strategy) matrices built from the database, valid for one revision of
that strategy. A matrix one revision behind is brought up to date by appending the rows
written since (a rebuild only after rows it holds changed or left), so a write of 1,000
trials costs 1,000 rows read, not the whole strategy.

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
from app.db.trials import load_evidence, load_trials, strategy_revision
from app.services.kb.recommend.evidence import EvidenceMatrix, build_matrix, extend_matrix
from app.services.kb.recommend.query import Scope
from app.services.kb.recommend.trial_matrix import TrialMatrix, build_trial_matrix

__all__ = ["EvidenceCache", "RevisionCache", "TrialCache", "strategy_revision"]


class Revisioned(Protocol):
    revision: int


M = TypeVar("M", bound=Revisioned)
Key = tuple[uuid.UUID, str, Scope]
# (database, workspace, strategy, after revision) -> (revision, after revision used, rows)
Loader = Callable[[Database, uuid.UUID, str, int], Awaitable[tuple[int, int, list[Any]]]]


class RevisionCache(Generic[M]):
    def __init__(self, load: Loader, build: Callable[[list[Any], int, Scope], M],
                 extend: Callable[[M, list[Any], int, Scope], M], entries: int = 32) -> None:
        self._load_rows = load
        self._build = build
        self._extend = extend
        self._size = entries
        self.appends = 0  # matrices brought up to date by appending (the rest were built)
        self.lagged = 0  # loads read again from the primary because the replica was behind
        self.loads = 0
        self._entries: OrderedDict[Key, M] = OrderedDict()
        self._loading: dict[tuple[uuid.UUID, str, Scope, int], asyncio.Task[M]] = {}

    async def get(self, db: Database, workspace_id: uuid.UUID, strategy: str, revision: int | None = None,
                  scope: Scope | None = None, reads: Database | None = None) -> M:
        """The matrix at `revision` (the current one read from `db` when None). `reads`: a
        replica to load from; a load older than `revision` there is done again on `db`."""
        if revision is None:
            revision = (await strategy_revision(db, workspace_id, strategy))[0]
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
            task = asyncio.create_task(self._load(db, key, hit, reads, revision))
            self._loading[loading_key] = task
            task.add_done_callback(lambda t: self._loaded(t, loading_key))
        return await asyncio.shield(task)

    def _loaded(self, task: asyncio.Task[M], loading_key: tuple[uuid.UUID, str, Scope, int]) -> None:
        self._loading.pop(loading_key, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not logged twice

    async def _load(self, db: Database, key: Key, base: M | None, reads: Database | None, wanted: int) -> M:
        self.loads += 1
        since = -1 if base is None else base.revision
        revision, after, rows = await self._load_rows(reads or db, key[0], key[1], since)
        if reads is not None and revision < wanted:  # the replica has not replayed that write yet
            self.lagged += 1
            revision, after, rows = await self._load_rows(db, key[0], key[1], since)
        if base is not None and after >= 0:
            matrix = await asyncio.to_thread(self._extend, base, rows, revision, key[2])
            self.appends += 1
        else:
            matrix = await asyncio.to_thread(self._build, rows, revision, key[2])
        self._adopt(base, matrix)
        current = self._entries.get(key)
        if current is None or current.revision <= matrix.revision:  # a slower, older load never replaces a newer
            self._entries[key] = matrix
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return matrix

    def describe(self) -> list[dict[str, Any]]:
        """Each cached matrix: its workspace, strategy, scope, revision, rows and bytes."""
        out = []
        for (workspace_id, strategy, scope), m in self._entries.items():
            rows = len(m) if isinstance(m, TrialMatrix) else getattr(m, "n_cells", 0)
            size = m.nbytes() if hasattr(m, "nbytes") else 0
            out.append({"workspace_id": str(workspace_id), "strategy_name": strategy, "scope": scope.key(),
                        "revision": m.revision, "rows": rows, "bytes": size,
                        "bytes_per_row": round(size / rows, 1) if rows else None})
        return out

    def _adopt(self, base: M | None, matrix: M) -> None:
        """What a new matrix takes over from the one it replaces (nothing by default)."""


class EvidenceCache(RevisionCache[EvidenceMatrix]):
    """Evidence matrices per (workspace, strategy) for one KB revision."""

    def __init__(self) -> None:
        super().__init__(load_evidence, build_matrix, extend_matrix)

    def _adopt(self, base: EvidenceMatrix | None, matrix: EvidenceMatrix) -> None:
        # The last finished walk-forward check, for answers that may use it while the new one runs.
        if base is not None:
            done = base.memo.get("check")
            if done is not None and done.done() and not done.cancelled() and done.exception() is None:
                matrix.memo["previous_check"] = done.result()
            elif "previous_check" in base.memo:
                matrix.memo["previous_check"] = base.memo["previous_check"]


class TrialCache(RevisionCache[TrialMatrix]):
    """Trial matrices per (workspace, strategy) for one KB revision, and beside them the
    evidence matrices (with their walk-forward check) that recommend and evaluate read."""

    def __init__(self) -> None:
        super().__init__(load_trials, lambda rows, revision, _scope: build_trial_matrix(rows, revision),
                         lambda m, rows, revision, _scope: m.extend(rows, revision))
        self.evidence = EvidenceCache()

    def describe_all(self) -> dict[str, Any]:
        return {"trials": self.describe(), "evidence": self.evidence.describe(),
                "appends": self.appends + self.evidence.appends, "loads": self.loads + self.evidence.loads}

    def counts(self) -> tuple[int, int]:
        """Loads so far, and those a replica was too far behind for (both caches)."""
        return self.loads + self.evidence.loads, self.lagged + self.evidence.lagged


DEFAULT_CACHE = TrialCache()
