"""Start (or join) an embedded PostgreSQL server from the `pgserver` package.

Several `kb` processes may use the same data directory at once: pgserver keeps a
cross-process list of users under a file lock and stops the server when the last
one exits, so each process just asks for the server and lets it be reference-counted.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import platformdirs

from app.errors import DatabaseUnavailable

_servers: dict[Path, Any] = {}


def kb_home() -> Path:
    """The directory that holds local state (`KB_HOME`, else a per-user data dir)."""
    configured = os.environ.get("KB_HOME")
    if configured:
        return Path(configured).expanduser()
    return platformdirs.user_data_path("trading-kb")


def embedded_dsn(pgdata: Path | None = None) -> str:
    """Return a DSN for the embedded server, starting it if this process has not yet."""
    data_dir = (pgdata or kb_home() / "pgdata").expanduser().resolve()
    server = _servers.get(data_dir)
    if server is None:
        try:
            data_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot use {data_dir.parent} for the embedded PostgreSQL: "
                                      f"{exc.strerror or exc}; set KB_HOME to a directory") from None
        # pgserver logs every step at INFO; keep our stderr for our own progress.
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs runtime-dir fallback notice
            try:
                import pgserver  # noqa: PLC0415  (heavy import, only when no DATABASE_URL)

                server = pgserver.get_server(data_dir, cleanup_mode="stop")
            except Exception as exc:
                raise DatabaseUnavailable(
                    f"cannot start the embedded PostgreSQL in {data_dir}: {exc}; "
                    "set DATABASE_URL to use an existing server"
                ) from exc
        _servers[data_dir] = server
    return str(server.get_uri())


def is_embedded() -> bool:
    """True when no DATABASE_URL is set: the database is the embedded server, ours to migrate."""
    return not os.environ.get("DATABASE_URL", "").strip()


def database_url() -> str:
    """`DATABASE_URL` when set, else the embedded server's DSN."""
    url = os.environ.get("DATABASE_URL", "").strip()
    return url or embedded_dsn()
