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
        _configure(server, data_dir)
    return str(server.get_uri())


SETTINGS_MARK = "trading_kb_settings"  # in the data directory: the settings below were applied


def embedded_settings() -> dict[str, str]:
    """What the embedded server runs with instead of PostgreSQL's defaults, which are sized
    for a small shared machine: a buffer cache of an eighth of the memory (at most 2 GB;
    the btree pages of a ten-million-run table do not fit in the default 128 MB), fewer
    checkpoints under bulk writes, and sorts of the KB's window statistics in memory."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    shared_mb = max(128, min(memory // 8 // 2**20, 2048))
    return {"shared_buffers": f"{shared_mb}MB", "max_wal_size": "4GB", "checkpoint_timeout": "15min",
            "work_mem": "16MB", "maintenance_work_mem": "256MB"}


def _configure(server: Any, data_dir: Path) -> None:
    """Apply `embedded_settings()` once per data directory (ALTER SYSTEM, then a reload:
    the buffer cache's size takes effect when the server next starts)."""
    if (data_dir / SETTINGS_MARK).exists():
        return
    from app.db.sql import q  # noqa: PLC0415  (only when a server is first set up)

    try:
        server.psql(q("embedded_settings").format(**embedded_settings()))
        (data_dir / SETTINGS_MARK).write_text("\n".join(f"{k} = {v}" for k, v in embedded_settings().items()) + "\n")
    except Exception as exc:  # the server runs with PostgreSQL's defaults: slower at scale, still right
        logging.getLogger(__name__).warning("could not apply the embedded server's settings: %s", exc)


def is_embedded() -> bool:
    """True when no DATABASE_URL is set: the database is the embedded server, ours to migrate."""
    return not os.environ.get("DATABASE_URL", "").strip()


def database_url() -> str:
    """`DATABASE_URL` when set, else the embedded server's DSN."""
    url = os.environ.get("DATABASE_URL", "").strip()
    return url or embedded_dsn()
