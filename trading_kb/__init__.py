"""trading-kb for notebooks: a synchronous Python API over the KB, safe inside a running event loop."""

from app.errors import BadInput, DatabaseUnavailable, KBError, NotFound
from app.services.kb.recommend.answer import Recommendation
from app.services.kb.recommend.evaluate import Evaluation
from app.services.kb.sync import SyncResult
from trading_kb._client import KnowledgeBase, connect

__all__ = ["BadInput", "DatabaseUnavailable", "Evaluation", "KBError", "KnowledgeBase", "NotFound",
           "Recommendation", "SyncResult", "connect"]
