"""Recommend and evaluate: the evidence matrix, feature scaling, nearest windows, the expected-performance
choice, the walk-forward check, the caches per KB revision, and one entry point."""

from app.services.kb.recommend.cache import TrialCache
from app.services.kb.recommend.nearest import aggregate_params
from app.services.kb.recommend.query import RecommendQuery
from app.services.kb.recommend.service import recommend

__all__ = ["RecommendQuery", "TrialCache", "aggregate_params", "recommend"]
