"""`kb serve`'s uvicorn settings: an idle keep-alive connection is closed by the client
first (a client that reuses a connection the server has just closed gets a bare read error)."""

from __future__ import annotations

import httpx

from app.api.serve import KEEP_ALIVE_S, server_config
from app.db import Database


def test_idle_connections_stay_open_longer_than_clients_and_proxies_keep_them() -> None:
    config = server_config(Database("postgresql://kb@127.0.0.1:1/kb"), "127.0.0.1", 8000)
    assert config.timeout_keep_alive == KEEP_ALIVE_S
    httpx_expiry = httpx.Limits().keepalive_expiry or 0.0
    assert max(httpx_expiry, 60.0) < KEEP_ALIVE_S  # httpx's own, and a proxy's 60 s upstream idle timeout
