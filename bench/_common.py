"""Shared set-up for the bench scripts: a fresh, migrated database, and daily bars for seeded runs."""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.db import Database, with_database
from app.db.embedded import database_url
from app.db.migrate import upgrade


async def fresh_database(name: str) -> Database:
    server = database_url()
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    db = await Database(with_database(server, name), max_size=6).open()
    async with db.acquire() as conn:
        await upgrade(conn)
    return db


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a bench on the event loop the `kb` command uses (uvloop when installed)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def write_daily_ohlcv(folder: Path) -> Path:
    """Daily bars of the seeded symbols SYM0..SYM2 (`kb seed`, bench_regime), from 400 days
    before the first OOS window (2025-01-01) to well past the last."""
    import numpy as np  # noqa: PLC0415  (only the benches that price runs need these)
    import pandas as pd  # noqa: PLC0415

    from app.services.kb.synthetic.seed import SEED_EPOCH  # noqa: PLC0415

    rng = np.random.default_rng(3)
    days = pd.date_range(pd.Timestamp(SEED_EPOCH) - pd.Timedelta(days=400), periods=1000, freq="D")
    frames = []
    for k in range(3):
        close = 100 * np.exp(np.cumsum(rng.normal(0.0003 * (k - 1), 0.015, len(days))))
        frames.append(pd.DataFrame({"symbol": f"SYM{k}", "timestamp": days, "open": close,
                                    "high": close * 1.01, "low": close * 0.99, "close": close}))
    path = folder / "daily.parquet"
    pd.concat(frames).to_parquet(path)
    return path
