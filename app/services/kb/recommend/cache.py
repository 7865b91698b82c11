"""Per-(workspace, strategy) matrices built from the database, valid for one revision of
that strategy. A matrix one revision behind is brought up to date by appending the rows
written since (a rebuild only after rows it holds changed or left), so a write of 1,000
trials costs 1,000 rows read, not the whole strategy.

Concurrent requests for a matrix that is not cached share one load (no stampede of
identical queries), and the CPU-bound build runs in a worker thread so the event loop
keeps answering requests whose matrices are cached. With a `MatrixStore`, a matrix
built afresh is also kept on disk, and a process that has none in memory starts from
that file (checked against the database) instead of every row (`persist`)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np

from app.db import Database, trials
from app.db.trials import strategy_revision
from app.services.kb.recommend.decisions import Reuse
from app.services.kb.recommend.evidence import EvidenceBuilder, EvidenceMatrix
from app.services.kb.recommend.persist import DECISIONS_FORMAT, Fingerprint, MatrixStore
from app.services.kb.recommend.query import Scope
from app.services.kb.recommend.trial_matrix import TrialBuilder, TrialMatrix
from app.services.kb.recommend.walkforward import TUNINGS, Outcome

__all__ = ["EvidenceCache", "RevisionCache", "TrialCache", "strategy_revision"]

log = logging.getLogger(__name__)


class Revisioned(Protocol):
    revision: int
    source_rows: int  # the database rows it was built from (before any filter of its own)


class _BaseAhead(Exception):
    """A matrix to append to is of a later revision than the snapshot read."""


M = TypeVar("M", bound=Revisioned)
Key = tuple[uuid.UUID, str, Scope]


M_co = TypeVar("M_co", covariant=True)


class Builder(Protocol[M_co]):
    def take(self, rows: list[Any]) -> Any: ...

    def finish(self, revision: int) -> M_co: ...


class RevisionCache(Generic[M]):
    """`query`: the named query of a strategy's rows after a revision; `builder(base,
    scope)`: what takes them chunk by chunk into a matrix (appended to `base` when given)."""

    def __init__(self, query: str, builder: Callable[[M | None, Scope], Builder[M]], entries: int = 32, *,
                 kind: str = "", store: MatrixStore | Literal["env"] | None = None) -> None:
        self._query = query
        self._builder = builder
        self._size = entries
        self.appends = 0  # matrices brought up to date by appending (the rest were built)
        self.lagged = 0  # loads read again from the primary because the replica was behind
        self.loads = 0
        self._entries: OrderedDict[Key, M] = OrderedDict()
        self._loading: dict[tuple[uuid.UUID, str, Scope, int], asyncio.Task[M]] = {}
        self.kind = kind  # names the files of `store` and their fingerprint query
        self._store = store  # "env": resolved from the environment on first use
        self.disk = {"loads": 0, "stale": 0, "saves": 0}  # files used, files not trusted, files written
        self._saved_size: dict[Key, int] = {}  # per key, the size of the matrix its file holds

    @property
    def store(self) -> MatrixStore | None:
        if self._store == "env":
            self._store = MatrixStore.from_env()
        return self._store

    async def get(self, db: Database, workspace_id: uuid.UUID, strategy: str, revision: int | None = None,
                  scope: Scope | None = None, reads: Database | None = None) -> M:
        """The matrix at `revision` (the current one read from `db` when None). `reads`: a
        replica to load from; a load older than `revision` there is done again on `db`."""
        if revision is None:
            revision = (await trials.strategy_revision(db, workspace_id, strategy))[0]
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
        keep = self.store is not None and key[2].as_of is None  # a look at the past is a one-off: memory only
        kept = await self._from_disk(db, key) if base is None and keep else None
        try:
            matrix, appended = await self._current(db, key, base or kept, reads, wanted)
        except Exception:
            if kept is None:
                raise
            log.warning("the kept matrix of %r could not be brought up to date: built afresh", key[1], exc_info=True)
            self.disk["stale"] += 1
            matrix, appended = await self._current(db, key, None, reads, wanted)
        if keep:
            self._settled(db, key, matrix)
            await self._to_disk(db, key, matrix, appended)
        current = self._entries.get(key)
        if current is None or current.revision <= matrix.revision:  # a slower, older load never replaces a newer
            self._entries[key] = matrix
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return matrix

    async def _current(self, db: Database, key: Key, base: M | None, reads: Database | None,
                       wanted: int) -> tuple[M, bool]:
        """The matrix at the current revision (from `reads` when it is not behind `wanted`),
        and whether it was appended to `base`."""
        try:
            read = await self._read(reads or db, key, base, None if reads is None else wanted)
            if read is None:  # the replica has not replayed that write yet
                self.lagged += 1
                read = await self._read(db, key, base, None)
        except _BaseAhead:  # a base newer than what the database shows: never appended to
            read = await self._read(db, key, None, None)
        assert read is not None
        return read

    async def _read(self, db: Database, key: Key, base: M | None, at_least: int | None) -> tuple[M, bool] | None:
        """The matrix from one snapshot (rows after `base` appended to it, or all rows), and
        whether it was appended; None when that snapshot is older than revision `at_least`.
        Chunks of rows are turned into columns in a worker thread as they arrive, so a cold
        load holds one chunk of records."""
        async with trials.strategy_snapshot(db, self._query, key[0], key[1],
                                            -1 if base is None else base.revision) as snap:
            if at_least is not None and snap.revision < at_least:
                return None
            if base is not None and snap.revision < base.revision:
                raise _BaseAhead
            appending = base is not None and snap.after >= 0
            builder = self._builder(base if appending else None, key[2])
            taking: asyncio.Future[Any] | None = None
            fetched = 0
            try:
                async for rows in snap.chunks():  # the next chunk is read while this one is taken
                    fetched += len(rows)
                    if taking is not None:
                        await taking
                    taking = asyncio.ensure_future(asyncio.to_thread(builder.take, rows))
            finally:
                if taking is not None:
                    await taking
        matrix = await asyncio.to_thread(builder.finish, snap.revision)
        matrix.source_rows = fetched + (base.source_rows if appending and base is not None else 0)
        self.appends += appending
        self._adopt(base, matrix)
        return matrix, appending

    def _file(self, db: Database, key: Key) -> tuple[Path, dict[str, str]]:
        assert self.store is not None
        identity = {"kind": self.kind, "workspace_id": str(key[0]), "strategy": key[1], "scope": key[2].key()}
        return self.store.path(db.dsn, self.kind, key[0], key[1], key[2].key()), identity

    async def _fingerprint(self, db: Database, key: Key, revision: int) -> Fingerprint:
        return Fingerprint(*await trials.rows_fingerprint(db, self.kind, key[0], key[1], revision))

    async def _from_disk(self, db: Database, key: Key) -> M | None:
        """The matrix of the key's file when the database still holds exactly its rows; any
        problem with the file or its check is a miss."""
        assert self.store is not None
        try:
            path, identity = self._file(db, key)
            saved = await asyncio.to_thread(self.store.read, path, identity)
            if saved is None:
                return None
            matrix: M = saved.matrix
            if getattr(matrix, "source_rows", -1) != saved.rows or not saved.matches(
                    await self._fingerprint(db, key, saved.revision)):
                self.disk["stale"] += 1
                return None
        except Exception:  # the file is an aid only: the database answers
            log.warning("could not use the kept matrix of %r", key[1], exc_info=True)
            return None
        self.disk["loads"] += 1
        self._saved_size[key] = saved.rows
        self._kept_as(matrix, (saved.revision, saved.digest, saved.token))
        return matrix

    async def _to_disk(self, db: Database, key: Key, matrix: M, appended: bool) -> None:
        """Keep a matrix built afresh, or one whose rows grew by the store's share since its
        file; only when the database, checked after, holds exactly the rows it was built from."""
        assert self.store is not None
        last = self._saved_size.get(key)
        if appended and last is not None and matrix.source_rows < last * (1 + self.store.growth):
            return
        try:
            found = await self._fingerprint(db, key, matrix.revision)
            if found.reset > matrix.revision or found.rows != matrix.source_rows:
                return  # rows it holds changed or left meanwhile: the next load builds it again
            path, identity = self._file(db, key)
            token = uuid.uuid4().hex
            if await asyncio.to_thread(self._write, path, identity, matrix, found, token):
                self.disk["saves"] += 1
                self._saved_size[key] = matrix.source_rows
                self._kept_as(matrix, (matrix.revision, found.digest, token))
        except Exception:  # the file is an aid only: the answer stands
            log.warning("could not keep the matrix of %r", key[1], exc_info=True)

    def _write(self, path: Path, identity: dict[str, str], matrix: M, found: Fingerprint, token: str) -> bool:
        assert self.store is not None
        return self.store.write(path, identity, matrix, matrix.revision, found, token)

    @staticmethod
    def _size_of(matrix: M) -> int:
        return len(matrix) if isinstance(matrix, TrialMatrix) else int(getattr(matrix, "n_cells", 0))

    def describe(self) -> list[dict[str, Any]]:
        """Each cached matrix: its workspace, strategy, scope, revision, rows and bytes."""
        out = []
        for (workspace_id, strategy, scope), m in self._entries.items():
            rows = self._size_of(m)
            size = m.nbytes() if hasattr(m, "nbytes") else 0
            out.append({"workspace_id": str(workspace_id), "strategy_name": strategy, "scope": scope.key(),
                        "revision": m.revision, "rows": rows, "bytes": size,
                        "bytes_per_row": round(size / rows, 1) if rows else None})
        return out

    def _adopt(self, base: M | None, matrix: M) -> None:
        """What a new matrix takes over from the one it replaces (nothing by default)."""

    def _kept_as(self, matrix: M, file: tuple[int, str, str]) -> None:
        """The matrix is (or was read from) this write of its file: (revision, digest, token)."""

    def _settled(self, db: Database, key: Key, matrix: M) -> None:
        """A matrix loaded, and kept on disk where it should be (nothing more by default)."""


class EvidenceCache(RevisionCache[EvidenceMatrix]):
    """Evidence matrices per (workspace, strategy) for one KB revision."""

    def __init__(self, store: MatrixStore | Literal["env"] | None = None) -> None:
        super().__init__("load_evidence", EvidenceBuilder, kind="evidence", store=store)

    def describe(self) -> list[dict[str, Any]]:
        """Each cached matrix, and the walk-forward check this server replayed for it (None:
        none, or one read from the database): its decisions, and those lent by the check before."""
        out = super().describe()
        for entry, m in zip(out, self._entries.values(), strict=True):
            check = _finished(m.memo.get("check"))
            entry["check"] = {"revision": check.revision, "decisions": len(check.outcomes), "lent": check.reused} \
                if check is not None and check.replayed else None
        return out

    def _kept_as(self, matrix: EvidenceMatrix, file: tuple[int, str, str]) -> None:
        matrix.memo["kept_as"] = file
        matrix.memo["since_kept"] = np.zeros(0, dtype=np.int64)

    def _settled(self, db: Database, key: Key, matrix: EvidenceMatrix) -> None:
        """Beside a matrix kept on disk, its walk-forward decisions: written after its check
        is replayed, and lent to the check of a matrix appended to the same file by a later
        process (a new `kb recommend` replays only what the rows since can change)."""
        if self.store is None:
            return
        path, identity = self._file(db, key)
        path = path.with_name(path.name.replace(f"{self.kind}-", "decisions-", 1))
        matrix.memo["keep_check"] = partial(_keep_decisions, self.store, path, identity, matrix)
        if "reuse" not in matrix.memo and "kept_as" in matrix.memo:  # of the file as it is now
            matrix.memo["reuse_kept"] = partial(_kept_decisions, self.store, path, identity, matrix.revision,
                                                matrix.memo["kept_as"], matrix.memo["since_kept"])

    def _write(self, path: Path, identity: dict[str, str], matrix: EvidenceMatrix, found: Fingerprint,
               token: str) -> bool:
        with matrix.codes_held() as held:  # no builder adds window or set codes while they are written
            return held and super()._write(path, identity, matrix, found, token)

    def _adopt(self, base: EvidenceMatrix | None, matrix: EvidenceMatrix) -> None:
        # The last finished walk-forward check, for answers that may use it while the new one
        # runs; its decisions, for the new check of rows appended to the base's. A matrix
        # appended to one read from (or written to) a file keeps its codes: it remembers
        # the file and every window appended since.
        if base is not None:
            touched = matrix.memo.pop("appended_windows", None)
            if touched is not None and "kept_as" in base.memo:
                matrix.memo["kept_as"] = base.memo["kept_as"]
                matrix.memo["since_kept"] = np.union1d(base.memo["since_kept"], touched)
            check = _finished(base.memo.get("check"))
            if check is not None:
                if touched is not None and check.outcomes:
                    matrix.memo["reuse"] = Reuse(check.outcomes, TUNINGS, touched)
                matrix.memo["previous_check"] = replace(check, outcomes=())  # what a stale answer reads
            elif "previous_check" in base.memo:
                matrix.memo["previous_check"] = base.memo["previous_check"]


def _finished(task: asyncio.Future[Any] | None) -> Any:
    """A check task's result once it finished well (None: none, running, failed or cancelled)."""
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def _keep_decisions(store: MatrixStore, path: Path, identity: dict[str, str], matrix: EvidenceMatrix,
                    outcomes: tuple[Outcome, ...]) -> bool:
    """The decisions of a check of `matrix`, with the file its codes come from (none: not kept)."""
    kept_as = matrix.memo.get("kept_as")
    return kept_as is not None and store.put(path, {"identity": identity, "kept_as": kept_as,
                                                    "revision": matrix.revision}, outcomes, DECISIONS_FORMAT)


def _kept_decisions(store: MatrixStore, path: Path, identity: dict[str, str], revision: int,
                    kept_as: tuple[int, str, str], since: np.ndarray) -> Reuse | None:
    """Decisions kept for the file (`kept_as`) a matrix of `revision` was appended to, made
    at a revision no later than it: each window the appends since the file did not touch
    was decided as then (a window touched since is in `since`, whatever its code there)."""
    found = store.get(path, identity, DECISIONS_FORMAT)
    if found is None or tuple(found[0].get("kept_as", ())) != kept_as or found[0]["revision"] > revision:
        return None
    return Reuse(tuple(found[1]), TUNINGS, since)


class TrialCache(RevisionCache[TrialMatrix]):
    """Trial matrices per (workspace, strategy) for one KB revision, and beside them the
    evidence matrices (with their walk-forward check) that recommend and evaluate read."""

    def __init__(self, store: MatrixStore | Literal["env"] | None = None) -> None:
        """`store`: where matrices are kept between processes (None: nowhere; "env": as
        `KB_MATRIX_CACHE` and `KB_HOME` say, see `persist`)."""
        super().__init__("load_trials", lambda base, _scope: TrialBuilder(base), kind="trials", store=store)
        self.evidence = EvidenceCache(store)

    def describe_all(self) -> dict[str, Any]:
        store = self.store
        disk = {k: self.disk[k] + self.evidence.disk[k] for k in self.disk}
        return {"trials": self.describe(), "evidence": self.evidence.describe(),
                "appends": self.appends + self.evidence.appends, "loads": self.loads + self.evidence.loads,
                "disk": {"directory": None if store is None else str(store.root), **disk}}

    def counts(self) -> tuple[int, int]:
        """Loads so far, and those a replica was too far behind for (both caches)."""
        return self.loads + self.evidence.loads, self.lagged + self.evidence.lagged


DEFAULT_CACHE = TrialCache(store="env")
