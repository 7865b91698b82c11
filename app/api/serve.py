"""`kb serve`: run the API with uvicorn, refusing open binds without a token."""

from __future__ import annotations

import ipaddress
import os

import uvicorn

from app.api.app import create_app
from app.errors import BadInput


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(host: str, port: int) -> int:
    if not _is_loopback(host) and not os.environ.get("KB_API_TOKEN"):
        raise BadInput(f"refusing to listen on {host} without KB_API_TOKEN: set a token or bind to 127.0.0.1")
    config = uvicorn.Config(create_app(), host=host, port=port, log_level="info")
    await uvicorn.Server(config).serve()
    return 0
