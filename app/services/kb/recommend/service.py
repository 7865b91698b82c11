"""recommend(): which tested parameters to use for a strategy in a given market regime."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from app.db import Database
from app.db.trials import kb_revision
from app.services.kb.recommend.answer import Recommendation
from app.services.kb.recommend.cache import DEFAULT_CACHE, TrialCache
from app.services.kb.recommend.evaluate import stored_check
from app.services.kb.recommend.expected import choose_by_expectation
from app.services.kb.recommend.nearest import nearest_trials
from app.services.kb.recommend.query import RecommendQuery


async def recommend(db: Database, query: RecommendQuery, cache: TrialCache | None = None) -> Recommendation:
    """Parameters for a strategy in a regime. The default method answers with a tested
    set chosen by expected OOS performance (`expected`); `median` aggregates the nearest
    trials' parameters (`nearest`). Both list the nearest trials as `supporting_trials`."""
    cache = cache or DEFAULT_CACHE
    revision = await kb_revision(db, query.workspace_id)
    scope = query.scope
    if query.method == "median":
        return nearest_trials(await cache.get(db, query.workspace_id, query.strategy_name, revision), query)
    # Both matrices load at once: their queries and builds overlap.
    trials, evidence = await asyncio.gather(
        cache.get(db, query.workspace_id, query.strategy_name, revision),
        cache.evidence.get(db, query.workspace_id, query.strategy_name, revision, scope))
    nearest = nearest_trials(trials, query)
    if "out_of_distribution" in nearest.reasons:
        return replace(nearest, method=query.method)  # an abstention of the method asked for
    evidence.require_one_bar_size(query.strategy_name)
    check = await stored_check(db, query.workspace_id, query.strategy_name, scope, evidence)
    return choose_by_expectation(evidence, query, nearest, check)
