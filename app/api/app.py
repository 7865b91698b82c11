"""FastAPI app: ingest, recommend, status, backfill runs, health.

The database pool lives in the app's lifespan and reaches routes through `Depends`.
With `KB_API_TOKEN` set every /kb route needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import LoopbackHostOnly, require_token
from app.api.dashboard import register as register_dashboard
from app.api.deps import DB, NO_NUL, Cache, ReadDB, ReplicaDep, StrategyName, send_json_error
from app.api.models import ImportRequest, IngestRequest, RecommendRequest, SyncRequest
from app.db import Database, ledger, open_database
from app.db.lifecycle import DRIVER_ERROR, ping, translate
from app.db.replica import read_replica
from app.errors import BackfillLocked, BadInput, DriverError, KBError, NotFound
from app.services.kb.importing.fields import resolve_mapping
from app.services.kb.importing.service import import_frame
from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, TrialCache, recommend
from app.services.kb.recommend.evaluate import evaluate
from app.services.kb.recommend.query import Scope as EvidenceScope
from app.services.kb.regime.features import MIN_EFFECTIVE_BARS, current_regime
from app.services.kb.regime.ohlcv import frame_series, series_bar_seconds, timeframe_label
from app.services.kb.regime.snapshot import RegimeSnapshot, parse_regime_snapshot
from app.services.kb.status import workspace_status
from app.services.kb.sync import SyncOptions, sync
from app.services.kb.workspaces import resolve_workspace

# 20,000 bars of JSON are about 2.5 MB; anything far beyond that is refused unread.
MAX_BODY_BYTES = 8 * 1024 * 1024
# A body that trickles in slower than this between chunks is cut off (408).
BODY_CHUNK_TIMEOUT_S = 30.0


class BodyLimit:
    """ASGI middleware: answer 413 to a request body over `limit` bytes, whether it
    declares its length or streams it in chunks, without buffering the excess."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen = 0
        started = False
        body_done = False

        async def counted_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body: waiting for a disconnect may take as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), BODY_CHUNK_TIMEOUT_S)
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except (_TooLarge, _TooSlow) as exc:
            if not started:
                await self._refuse(send, exc)

    async def _refuse(self, send: Send, exc: HTTPException | None = None) -> None:
        refusal = exc or _TooLarge(self.limit)
        await send_json_error(send, refusal.status_code, str(refusal.detail))


class _TooSlow(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=408, detail=f"request body stalled for {BODY_CHUNK_TIMEOUT_S:g} s")


class _TooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTPExceptions through its body
    parsing, so the client gets the 413 either way."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body over {limit:,} bytes")


def _regime_from_request(body: RecommendRequest) -> RegimeSnapshot | None:
    if body.regime is not None:
        snap = parse_regime_snapshot(body.regime)
        if snap is None or any(v is None for v in snap.feature_vector()):
            raise HTTPException(status_code=422, detail="regime must be a regime_v1 snapshot with every feature")
        return snap
    if body.ohlcv is not None:
        if len(body.ohlcv) < MIN_EFFECTIVE_BARS:
            raise HTTPException(status_code=422, detail=f"ohlcv needs at least {MIN_EFFECTIVE_BARS} bars")
        frame = pd.DataFrame([b.model_dump() for b in body.ohlcv])
        frame["timestamp"] = [b.timestamp.isoformat() for b in body.ohlcv]
        try:
            series = frame_series(frame, symbol=body.symbol, label="ohlcv rows")
            seconds = series_bar_seconds(series)
            timeframe = body.timeframe or (timeframe_label(seconds) if seconds else None)
            return current_regime(series, timeframe=timeframe, source="api")
        except BadInput as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
    return None


def http_status(exc: KBError) -> int:
    """The HTTP status for each error class."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, BackfillLocked):
        return 409  # another process (this server or another) runs that backfill
    if isinstance(exc, DriverError):
        return 422 if exc.bad_data else 503
    return 422 if exc.exit_code == 2 else 503


def create_app(db: Database | None = None) -> FastAPI:
    """The app; pass `db` to share an open Database (tests, embedding), else one is
    opened from DATABASE_URL (or the embedded server) for the app's lifetime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.cache = TrialCache(store="env")
        if db is not None:
            app.state.db = db
            async with read_replica(db) as app.state.replica:
                yield
            return
        async with open_database(max_size=8) as opened, read_replica(opened) as replica:
            app.state.db, app.state.replica = opened, replica
            yield

    app = FastAPI(title="trading-kb", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(BodyLimit)
    app.add_middleware(LoopbackHostOnly)

    @app.exception_handler(KBError)
    async def kb_error(_: Request, exc: KBError) -> JSONResponse:
        return JSONResponse(status_code=http_status(exc), content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The offending input is left out: it may be NaN or huge, which JSON cannot carry.
        detail = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(DRIVER_ERROR)
    async def driver_error(_: Request, exc: Exception) -> JSONResponse:
        error = translate(exc)  # type: ignore[arg-type]  # registered for the driver's errors only
        return JSONResponse(status_code=http_status(error), content={"detail": str(error)})

    @app.get("/healthz")
    async def healthz(db: DB) -> dict[str, Any]:
        await ping(db)
        return {"status": "ok"}

    auth = [Depends(require_token)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    register_dashboard(app)

    _kb_routes(app, auth)
    _read_routes(app, auth)
    return app


WorkspaceName = Annotated[str | None, Query(min_length=1, max_length=200, pattern=NO_NUL)]


async def _workspace_param(db: Database, workspace_id: uuid.UUID | None, workspace: str | None) -> uuid.UUID:
    if (workspace_id is None) == (workspace is None):
        raise HTTPException(status_code=422, detail="give exactly one of workspace_id or workspace (a name or an id)")
    return await resolve_workspace(db, workspace_id if workspace_id is not None else str(workspace))


def _read_routes(app: FastAPI, auth: list[Any]) -> None:
    """The KB's read-only views: status, evaluate, this server's cache."""
    @app.get("/kb/status", dependencies=auth)
    async def status_route(db: ReadDB, workspace_id: uuid.UUID | None = None,
                           workspace: WorkspaceName = None) -> dict[str, Any]:
        return (await workspace_status(db, await _workspace_param(db, workspace_id, workspace))).to_dict()

    @app.get("/kb/evaluate", dependencies=auth)
    async def evaluate_route(strategy_name: StrategyName, db: DB, cache: Cache, replica: ReplicaDep,
                             workspace_id: uuid.UUID | None = None, workspace: WorkspaceName = None,
                             symbol: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
                             timeframe: Annotated[str | None, Query(max_length=16, pattern=NO_NUL)] = None,
                             pool: bool = False) -> dict[str, Any]:
        """Walk-forward evaluation of recommend for one strategy (see `kb evaluate`), on the
        evidence of one instrument and bar size when given."""
        scope = EvidenceScope.of(symbol, timeframe, pool)
        ws = await _workspace_param(db, workspace_id, workspace)
        reads = None if replica is None else await replica.matrices()
        return (await evaluate(db, ws, strategy_name, cache, scope, reads=reads)).to_dict()

    @app.get("/kb/cache", dependencies=auth)
    async def cache_route(cache: Cache) -> dict[str, Any]:
        """This server's cached matrices: revision, rows and memory of each (trial matrices
        count trials, evidence matrices count cells), and how many were appended to."""
        return cache.describe_all()


def _kb_routes(app: FastAPI, auth: list[Any]) -> None:
    """The KB's JSON routes: ingest, recommend, import, status, evaluate, the ledger."""
    @app.post("/kb/trials/ingest", dependencies=auth)
    async def ingest_route(body: IngestRequest, db: DB) -> dict[str, Any]:
        workspace_id = await resolve_workspace(db, body.ref)
        return (await ingest(db, workspace_id, since=body.since, dry_run=body.dry_run, full=body.full)).to_dict()

    @app.post("/kb/trials/recommend", dependencies=auth)
    async def recommend_route(body: RecommendRequest, db: DB, cache: Cache, replica: ReplicaDep) -> Response:
        if sum(x is not None for x in (body.regime, body.ohlcv, body.tags)) != 1:
            raise HTTPException(status_code=422, detail="give exactly one of regime, ohlcv or tags")
        regime = _regime_from_request(body)
        result = await recommend(db, RecommendQuery(
            workspace_id=await resolve_workspace(db, body.ref), strategy_name=body.strategy_name, regime=regime,
            tags=tuple(body.tags or ()), symbol=body.symbol, timeframe=body.timeframe, top_k=body.top_k,
            min_sharpe=body.min_sharpe, min_trades=body.min_trades, max_drawdown=body.max_drawdown,
            method=body.method, pool=body.pool, as_of=body.as_of), cache, wait_for_check=body.wait_for_check,
            replica=replica)
        return Response(orjson.dumps(result.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    @app.post("/kb/runs", dependencies=auth)
    async def import_route(body: ImportRequest, db: DB) -> dict[str, Any]:
        """Import runs (the fields of `kb import`); bad rows are listed by position (from 1)
        with a reason and the rest are written. Re-sending the same runs adds nothing."""
        frame = pd.DataFrame.from_records(body.runs) if body.runs else pd.DataFrame({"strategy_name": []})
        mapping = resolve_mapping([str(c) for c in frame.columns], {}, {})
        workspace_id = await resolve_workspace(db, body.ref, create=True)
        return (await import_frame(db, workspace_id, frame, mapping, source=body.source,
                                   dry_run=body.dry_run)).to_dict()

    @app.post("/kb/sync", dependencies=auth)
    async def sync_route(body: SyncRequest, db: DB) -> dict[str, Any]:
        """`kb sync`: import the server-side files given, regime backfill per symbol with a
        price file, candidacy, ingest; incremental (a second call changes nothing)."""
        opts = SyncOptions(workspace=body.ref, ohlcv=tuple(Path(p) for p in body.ohlcv),
                           imports=tuple(Path(p) for p in body.imports), batch_size=body.batch_size)
        return (await sync(db, opts)).to_dict()

    @app.get("/kb/backfill-runs", dependencies=auth)
    async def backfill_runs(workspace_id: uuid.UUID, db: DB,
                            limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        async with db.acquire() as conn:
            return await ledger.list_runs(conn, workspace_id, limit)

