"""`kb serve`: run the API and dashboard with uvicorn on the database the CLI opened,
refusing open binds without a token and a port that is taken, each with one line."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn

from app.api.app import create_app
from app.api.auth import api_token, is_loopback_host
from app.db import Database
from app.errors import BadInput, KBError


def check_bind(host: str, port: int) -> None:
    """Before the database is opened: the address may be used and is free."""
    if not is_loopback_host(host) and api_token() is None:
        raise BadInput(f"refusing to listen on {host} without KB_API_TOKEN: set a token or bind to 127.0.0.1")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise BadInput(f"--host {host}: no such address") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise KBError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                          "stop what uses it or choose another --port") from None


class _Server(uvicorn.Server):
    """Stops on SIGINT or SIGTERM as uvicorn does (requests in flight finish), then returns
    instead of raising the signal again, so the process ends normally: the pool closes and
    an embedded PostgreSQL started for it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


# How long an idle keep-alive connection stays open. Above the idle expiry of common clients
# and proxies (httpx 5 s, nginx upstreams 60 s): the client closes an idle connection first.
# At uvicorn's 5 s, a client reusing a connection just as the server closed it got a bare
# read error (2 of 1,000 requests in rounds of 200 at 10M runs).
KEEP_ALIVE_S = 75


def server_config(db: Database, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(create_app(db), host=host, port=port, log_level="info", timeout_keep_alive=KEEP_ALIVE_S)


async def serve(host: str, port: int, db: Database) -> int:
    """Serve until SIGINT or SIGTERM, then return."""
    server = _Server(server_config(db, host, port))
    await server.serve()
    return 0 if server.started else 1
