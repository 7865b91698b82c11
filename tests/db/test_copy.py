"""A COPY whose connection is lost while the client waits for the server to take more
data fails with the error of a lost connection (asyncpg alone waits there forever)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from app.db.runs import copy_records


async def test_a_copy_paused_by_a_busy_server_fails_when_its_connection_is_lost(db) -> None:
    await db.execute("DROP TABLE IF EXISTS copy_hold")
    await db.execute("CREATE TABLE copy_hold (n bigint, pad text)")
    # The first row waits for a lock the test holds: the server stops reading the COPY.
    await db.execute("CREATE FUNCTION copy_hold_wait() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN PERFORM pg_advisory_lock(7281); PERFORM pg_advisory_unlock(7281); RETURN NEW; END $$")
    await db.execute("CREATE TRIGGER copy_hold_wait BEFORE INSERT ON copy_hold "
                     "FOR EACH ROW EXECUTE FUNCTION copy_hold_wait()")
    try:
        async with db.acquire() as holder, db.acquire() as conn:
            await holder.execute("SELECT pg_advisory_lock(7281)")
            pid = conn.get_server_pid()
            records = [(i, "x" * 200) for i in range(200_000)]  # far more than the socket buffers hold
            copying = asyncio.ensure_future(copy_records(conn, "copy_hold", records, ("n", "pad")))
            protocol = conn._con._protocol  # where asyncpg's COPY waits for the socket
            while protocol.writing_allowed.is_set() and not copying.done():  # noqa: ASYNC110  (no event for it)
                await asyncio.sleep(0.01)
            assert not copying.done()
            await holder.execute("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
                await asyncio.wait_for(copying, 60)
            await holder.execute("SELECT pg_advisory_unlock(7281)")
    finally:
        await db.execute("DROP TABLE copy_hold")
        await db.execute("DROP FUNCTION copy_hold_wait()")
