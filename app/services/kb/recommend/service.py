"""recommend(): which tested parameters to use for a strategy in a given market regime."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

from app.db import Database
from app.db.replica import Replica
from app.db.trials import strategy_revision, trial_dsr
from app.services.kb.recommend.answer import Recommendation
from app.services.kb.recommend.cache import DEFAULT_CACHE, TrialCache
from app.services.kb.recommend.evaluate import stored_check
from app.services.kb.recommend.expected import choose_by_expectation
from app.services.kb.recommend.nearest import nearest_trials
from app.services.kb.recommend.query import RecommendQuery


async def recommend(db: Database, query: RecommendQuery, cache: TrialCache | None = None,
                    wait_for_check: bool = True, replica: Replica | None = None) -> Recommendation:
    """Parameters for a strategy in a regime. The default method answers with a tested
    set chosen by expected OOS performance (`expected`); `median` aggregates the nearest
    trials' parameters (`nearest`). Both list the nearest trials as `supporting_trials`.

    `wait_for_check=False` (a long-running server): while the walk-forward check of a new
    revision is computed, answer with the last finished one; the answer says which
    revision its check is of (`walk_forward.kb_revision`, `walk_forward.stale`).

    `replica`: the matrices are loaded from it; the revision is read on the primary, so a
    replica that has not replayed the caller's last ingest is passed over for that load."""
    cache = cache or DEFAULT_CACHE
    revision, _ = await strategy_revision(db, query.workspace_id, query.strategy_name)
    scope = query.scope
    reads = None if replica is None else await replica.matrices()
    if replica is not None and reads is replica.primary:
        reads = replica = None  # the replica cannot be reached: the primary it is
    before = cache.counts()
    if query.method == "median":
        matrix = await cache.get(db, query.workspace_id, query.strategy_name, revision, reads=reads)
        _report(replica, cache, before)
        return await _with_dsr(db, query, nearest_trials(matrix, query))
    # Both matrices load at once: their queries and builds overlap.
    trials, evidence = await asyncio.gather(
        cache.get(db, query.workspace_id, query.strategy_name, revision, reads=reads),
        cache.evidence.get(db, query.workspace_id, query.strategy_name, revision, scope, reads=reads))
    _report(replica, cache, before)
    nearest = await _with_dsr(db, query, nearest_trials(trials, query))
    if "out_of_distribution" in nearest.reasons:
        return replace(nearest, method=query.method)  # an abstention of the method asked for
    evidence.require_one_bar_size(query.strategy_name)
    check = await stored_check(db, query.workspace_id, query.strategy_name, scope, evidence,
                               stale_ok=not wait_for_check)
    return choose_by_expectation(evidence, query, nearest, check)


def _report(replica: Replica | None, cache: TrialCache, before: tuple[int, int]) -> None:
    """Tell the replica whether the loads of this answer (if any) found it current."""
    loads, lagged = cache.counts()
    if replica is not None and loads > before[0]:
        replica.loaded(lagged > before[1])


async def _with_dsr(db: Database, query: RecommendQuery, answer: Recommendation) -> Recommendation:
    """The supporting trials' deflated Sharpe ratios, read now: an ingest recomputes them
    without changing anything the cached matrices hold."""
    ids = [uuid.UUID(t["trial_id"]) for t in answer.supporting_trials]
    if ids:
        found = await trial_dsr(db, query.workspace_id, ids)
        for t, i in zip(answer.supporting_trials, ids, strict=True):
            t["dsr"] = found.get(i)
    return answer
