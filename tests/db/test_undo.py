"""`kb backfill-undo` run twice: the second says the runs were undone already."""

from __future__ import annotations

import orjson

from tests.factories import run_row


async def test_second_undo_reports_already_undone_not_changed_since(cli, db, make_workspace, insert_runs) -> None:
    ws = await make_workspace()
    await insert_runs([run_row(ws, i) for i in range(20)])
    code, out, err = await cli("backfill-candidacy", "--workspace-id", ws, "--json")
    assert code == 0, err
    run_id = orjson.loads(out)["backfill_run_id"]
    code, out, err = await cli("backfill-undo", run_id)
    assert code == 0 and "reverted 20; already undone 0; left alone 0" in out, out + err
    code, out, err = await cli("backfill-undo", run_id)
    assert code == 0 and "reverted 0; already undone 20; left alone 0" in out, out + err
    assert await db.fetchval("SELECT count(*) FROM backtest_runs WHERE kb_status = 'excluded'") == 20
