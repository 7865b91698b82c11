"""The dashboard: its page and assets, the JSON routes it reads, the session cookie,
and Swagger UI served from the vendored files."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.auth import SESSION_COOKIE, api_token, require_token, session_value, token_matches
from app.api.deps import ReadDB, StrategyName
from app.services.kb import dashboard
from app.services.kb.workspaces import list_workspaces
from app.web import CONTENT_TYPES, asset, dashboard_page

NO_STORE = {"cache-control": "no-store"}


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=4096)


def register(app: FastAPI) -> None:
    pages = APIRouter(include_in_schema=False)

    @pages.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(dashboard_page(), headers={**NO_STORE, "x-frame-options": "DENY",
                                                       "content-security-policy": _CSP})

    @pages.get("/static/{name:path}")
    async def static(name: str) -> Response:
        try:
            body = asset(name)
        except KeyError:
            raise HTTPException(status_code=404, detail="no such asset") from None
        kind = CONTENT_TYPES["." + name.rsplit(".", 1)[-1]]
        return Response(body, media_type=kind, headers={"cache-control": "public, max-age=3600"})

    @pages.get("/docs", dependencies=[Depends(require_token)])
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="trading-kb API",
                                   swagger_js_url="/static/vendor/swagger-ui-bundle.js",
                                   swagger_css_url="/static/vendor/swagger-ui.css", swagger_favicon_url="data:,")

    @pages.post("/kb/session", status_code=204)
    async def open_session(body: SessionRequest) -> Response:
        token = api_token()
        if token is None:
            return Response(status_code=204)
        if not token_matches(body.token, token):
            raise HTTPException(status_code=401, detail="wrong token")
        response = Response(status_code=204)
        response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="strict", path="/")
        return response

    @pages.delete("/kb/session", status_code=204)
    async def close_session() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    app.include_router(pages)
    app.include_router(_data_routes())


def _data_routes() -> APIRouter:
    """The dashboard's JSON views (token or session cookie required)."""
    data = APIRouter(dependencies=[Depends(require_token)], tags=["dashboard"])

    @data.get("/kb/workspaces")
    async def workspaces_route(db: ReadDB) -> list[dict[str, Any]]:
        """Workspaces, newest first, with their run and trial counts (the dashboard's chooser)."""
        return await list_workspaces(db, 200)

    @data.get("/kb/dashboard/overview")
    async def overview_route(workspace_id: uuid.UUID, db: ReadDB) -> JSONResponse:
        """Runs by kb_status, trials per strategy and the backfill ledger (running ones included)."""
        return JSONResponse(await dashboard.overview(db, workspace_id), headers=NO_STORE)

    @data.get("/kb/dashboard/coverage")
    async def coverage_route(workspace_id: uuid.UUID, db: ReadDB) -> dict[str, Any]:
        """One cell per (regime tag, strategy): trials, median OOS Sharpe, and blind or thin spots."""
        return await dashboard.coverage(db, workspace_id)

    @data.get("/kb/dashboard/strategy")
    async def strategy_route(workspace_id: uuid.UUID, strategy_name: StrategyName, db: ReadDB) -> dict[str, Any]:
        """OOS Sharpe and parameters of a strategy's trials (a sample beyond 4,000), with each window's trend."""
        return await dashboard.strategy_points(db, workspace_id, strategy_name)

    @data.get("/kb/dashboard/gate")
    async def gate_route(workspace_id: uuid.UUID, db: ReadDB) -> dict[str, Any]:
        """The funnel from runs to KB trials and the latest candidacy backfill's rejection reasons."""
        return await dashboard.gate(db, workspace_id)

    return data


# The page loads only its own scripts and styles and talks only to its own origin.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
