"""What every route module shares: the database and cache from the app's state, the
strategy-name constraint, and a bare JSON refusal for ASGI middlewares."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Depends, Query, Request
from starlette.types import Send

from app.db import Database
from app.db.replica import Replica
from app.services.kb.recommend import TrialCache

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL characters


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_replica(request: Request) -> Replica | None:
    replica: Replica | None = getattr(request.app.state, "replica", None)
    return replica


async def get_read_db(request: Request) -> Database:
    """Where a read-only view reads: the replica (KB_READ_DATABASE_URL) once it has
    replayed everything committed before this request, else the primary."""
    replica = get_replica(request)
    return get_db(request) if replica is None else await replica.reader()


def get_cache(request: Request) -> TrialCache:
    cache: TrialCache = request.app.state.cache
    return cache


DB = Annotated[Database, Depends(get_db)]
ReadDB = Annotated[Database, Depends(get_read_db)]
ReplicaDep = Annotated[Replica | None, Depends(get_replica)]
Cache = Annotated[TrialCache, Depends(get_cache)]
StrategyName = Annotated[str, Query(min_length=1, max_length=200, pattern=NO_NUL)]


async def send_json_error(send: Send, status: int, detail: str) -> None:
    """Answer `status` with `{"detail": ...}` from a middleware, before any app response."""
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
