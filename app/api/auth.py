"""Who may call the API.

With `KB_API_TOKEN` set, every data route needs the token: as `Authorization: Bearer`
or as the session cookie the dashboard gets from `POST /kb/session` (a value derived
from the token, HttpOnly and SameSite=Strict, so neither page scripts nor other sites
can read or send it). Without a token the server only answers requests addressed to a
loopback host name, which defeats DNS rebinding from a web page.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import send_json_error

SESSION_COOKIE = "kb_session"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "testserver"})


def api_token() -> str | None:
    return os.environ.get("KB_API_TOKEN") or None


def session_value(token: str) -> str:
    """The cookie value for a token: proves knowledge of the token without holding it."""
    return hmac.new(token.encode(), b"trading-kb session v1", hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def _header_bytes(value: str) -> bytes:
    """HTTP headers arrive decoded as latin-1; their bytes again (a UTF-8 token is sent as UTF-8)."""
    return value.encode("latin-1", errors="replace")


def authorised(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(_header_bytes(given.strip()), token.encode()):
        return True
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(token).encode())


async def require_token(request: Request) -> None:
    token = api_token()
    if token is not None and not authorised(request, token):
        raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


def is_loopback_host(host_header: str) -> bool:
    """`localhost`, `127.0.0.1:8000`, `[::1]:8000` and the like."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackHostOnly:
    """ASGI middleware: with no token configured, refuse (421) any request whose Host is
    not a loopback name, so a page on another origin cannot reach the API through DNS
    rebinding. With a token the check is off: the token protects the routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or api_token() is not None:
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
        if is_loopback_host(host):
            await self.app(scope, receive, send)
            return
        await send_json_error(send, 421, "this server answers only to localhost without KB_API_TOKEN")
