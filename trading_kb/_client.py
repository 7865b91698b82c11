"""`KnowledgeBase`: the synchronous calls a notebook makes, each run on the connection's private loop."""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any

import pandas as pd

from app.db.frames import runs_frame_rows, trials_frame_rows
from app.errors import BadInput
from app.services.kb.importing.fields import resolve_mapping
from app.services.kb.importing.service import import_frame
from app.services.kb.recommend import RecommendQuery
from app.services.kb.recommend import recommend as recommend_params
from app.services.kb.recommend.answer import Recommendation
from app.services.kb.recommend.evaluate import Evaluation
from app.services.kb.recommend.evaluate import evaluate as evaluate_strategy
from app.services.kb.recommend.query import Scope
from app.services.kb.sync import SyncOptions, SyncResult
from app.services.kb.sync import sync as sync_workspace
from app.services.kb.workspaces import list_workspaces, resolve_workspace
from trading_kb import _frames, _inputs
from trading_kb._inputs import PathLike
from trading_kb._session import Session

Workspace = str | uuid.UUID


class KnowledgeBase:
    """A connection to the KB. Every method blocks until done and works the same from a
    script and from inside a running event loop (Jupyter). Errors are `KBError`s."""

    def __init__(self, url: str | None = None) -> None:
        self._session = Session(url)
        self._session.open()
        # Closed when collected or at exit if the caller never calls close().
        self._finalizer = weakref.finalize(self, self._session.finalize)

    def __repr__(self) -> str:
        state = "closed" if self._session.closed else "open"
        where = "DATABASE_URL or embedded" if self._session.url is None else "url"
        return f"<trading_kb.KnowledgeBase {state} ({where})>"

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connections and stop this connection's loop thread."""
        self._finalizer.detach()
        self._session.close()

    async def _workspace(self, ref: Workspace, *, create: bool = False) -> uuid.UUID:
        if not isinstance(ref, str | uuid.UUID):
            raise BadInput(f"workspace is a name or an id, not {type(ref).__name__}")
        return await resolve_workspace(self._session.db, ref, create=create)

    def workspaces(self) -> pd.DataFrame:
        """Workspaces, newest first: id, name, created_at, runs, trials."""
        return _frames.workspaces_frame(self._session.call(lambda: list_workspaces(self._session.db)))

    def import_runs(self, df: pd.DataFrame, workspace: Workspace, source: str = "notebook",
                    map: dict[str, str] | None = None, set: dict[str, Any] | None = None,
                    dry_run: bool = False) -> dict[str, Any]:
        """Import a DataFrame of runs (the fields of `kb import`) into the workspace, which
        is created when new. `map` takes fields from other columns ({"sharpe": "oos_sharpe"}),
        `set` gives every row a value ({"symbol": "SPY"}). Rows already imported from the same
        `source` are skipped. Returns the import report (bad rows listed by number from 1)."""
        frame = _inputs.import_frame_of(df)
        mapping = resolve_mapping([str(c) for c in frame.columns], _inputs.pairs(map, "map"),
                                  _inputs.pairs(set, "set"))
        if not isinstance(source, str) or not source.strip():
            raise BadInput("source is a non-empty name (rows already imported from it are skipped)")

        async def run() -> dict[str, Any]:
            workspace_id = await self._workspace(workspace, create=True)
            return (await import_frame(self._session.db, workspace_id, frame, mapping, source=source.strip(),
                                       dry_run=dry_run)).to_dict()

        return self._session.call(run)

    def sync(self, workspace: Workspace, ohlcv: PathLike | Iterable[PathLike] | None = None,
             imports: PathLike | Iterable[PathLike] | None = None, batch_size: int = 1000) -> SyncResult:
        """`kb sync`: import the files, compute regimes for every symbol with a price file
        (directories are searched), run the candidacy gate and ingest. Incremental."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BadInput(f"batch_size is a positive integer, got {batch_size!r}")
        opts = SyncOptions(workspace=workspace, ohlcv=_inputs.paths(ohlcv, "ohlcv"),
                           imports=_inputs.paths(imports, "imports"), batch_size=batch_size)
        return self._session.call(lambda: sync_workspace(self._session.db, opts))

    def recommend(self, strategy: str, workspace: Workspace, ohlcv: pd.DataFrame | PathLike | None = None,
                  symbol: str | None = None, timeframe: str | None = None,
                  tags: str | Iterable[str] | None = None, pool: bool = False,
                  as_of: datetime | str | None = None, method: str = "expected", top_k: int = 20,
                  min_sharpe: float | None = None, min_trades: int | None = None,
                  max_drawdown: float | None = None) -> Recommendation:
        """Parameters for `strategy` in the current regime, given as prices (`ohlcv`: a
        DataFrame or a file; their trailing bars) or as regime `tags` (one of them). Scoped
        like `kb recommend`: `symbol`, the bar size of the prices, `pool`, `as_of`."""
        wanted_tags = _inputs.tags(tags)
        if (ohlcv is None) == (not wanted_tags):
            raise BadInput("give the current regime as ohlcv (a DataFrame or a file) or as tags (one of them)")
        name, how, when = _strategy(strategy), _inputs.method(method), _inputs.as_of(as_of)
        snapshot = _inputs.regime(ohlcv, symbol, timeframe) if ohlcv is not None else None
        bar_size = snapshot.timeframe if snapshot is not None else timeframe

        async def run() -> Recommendation:
            query = RecommendQuery(
                workspace_id=await self._workspace(workspace), strategy_name=name, regime=snapshot,
                tags=wanted_tags, symbol=symbol, timeframe=bar_size, top_k=top_k, min_sharpe=min_sharpe,
                min_trades=min_trades, max_drawdown=max_drawdown, method=how, pool=bool(pool), as_of=when)
            return await recommend_params(self._session.db, query, self._session.cache)

        return self._session.call(run)

    def evaluate(self, strategy: str, workspace: Workspace, symbol: str | None = None,
                 timeframe: str | None = None, pool: bool = False) -> Evaluation:
        """`kb evaluate`: the nested walk-forward replay of recommend on the strategy's
        history (one instrument and bar size when given)."""
        name = _strategy(strategy)

        async def run() -> Evaluation:
            workspace_id = await self._workspace(workspace)
            return await evaluate_strategy(self._session.db, workspace_id, name, self._session.cache,
                                  Scope.of(symbol, timeframe, bool(pool)))

        return self._session.call(run)

    def trials(self, workspace: Workspace, strategy: str | None = None) -> pd.DataFrame:
        """The workspace's active KB trials (of one strategy when given), one row each,
        parameters as `param_<name>` columns."""
        name = None if strategy is None else _strategy(strategy)

        async def run() -> pd.DataFrame:
            workspace_id = await self._workspace(workspace)
            return _frames.trials_frame(await trials_frame_rows(self._session.db, workspace_id, name))

        return self._session.call(run)

    def runs(self, workspace: Workspace, strategy: str | None = None, limit: int | None = None) -> pd.DataFrame:
        """The workspace's runs, newest first (at most `limit`): the metrics and dataset
        fields as columns, parameters as `param_<name>`, the OOS regime's tags."""
        name = None if strategy is None else _strategy(strategy)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise BadInput(f"limit is a non-negative integer or None, got {limit!r}")

        async def run() -> pd.DataFrame:
            workspace_id = await self._workspace(workspace)
            return _frames.runs_frame(await runs_frame_rows(self._session.db, workspace_id, name, limit))

        return self._session.call(run)


def _strategy(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise BadInput(f"strategy is a non-empty name, got {name!r}")
    return name.strip()


def connect(url: str | None = None) -> KnowledgeBase:
    """Open the KB. Without `url`: `DATABASE_URL` when set (its schema must be current:
    `kb db upgrade`), else the embedded PostgreSQL under `KB_HOME`, migrated as needed.
    With `url`: that database, never migrated implicitly."""
    if url is not None and (not isinstance(url, str) or not url.strip()):
        raise BadInput("url is a PostgreSQL URL such as postgresql://user:pw@host/db")
    return KnowledgeBase(None if url is None else url.strip())
