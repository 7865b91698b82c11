"""Matrices kept on disk between processes (`persist.MatrixStore`), against PostgreSQL: a
new cache starts from the file and appends what was written since, answers exactly as a
fresh load does, and never trusts a file whose rows the database no longer holds."""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from app.errors import BadInput
from app.services.kb.ingest import ingest
from app.services.kb.recommend import RecommendQuery, TrialCache, recommend
from app.services.kb.recommend.persist import MatrixStore
from tests.factories import run_row, trend_snapshot

ROOT = Path(__file__).resolve().parents[2]


def _runs(ws: uuid.UUID, first: int, count: int, strategy: str = "s") -> list[dict]:
    return [run_row(ws, i, strategy_name=strategy, kb_status="candidate", regime_oos=trend_snapshot(1, 0.002, i),
                    params={"fast": i % 7, "slow": 20}) for i in range(first, first + count)]


def _shown(answer: object) -> tuple:
    d = answer.to_dict()  # type: ignore[attr-defined]
    return (d["status"], d["params"], d["considered"], d["expected_sharpe"],
            [t["trial_id"] for t in d["supporting_trials"]])


def _files(root: Path) -> dict[str, Path]:
    return {p.name.split("-")[0]: p for p in root.glob("*.pickle")}


async def _answer(db, ws: uuid.UUID, store: MatrixStore | None) -> tuple[tuple, dict[str, int]]:
    cache = TrialCache(store=store)
    answer = await recommend(db, RecommendQuery(ws, "s", tags=("uptrend",), top_k=5), cache)
    disk = cache.describe_all()["disk"]
    return _shown(answer), {k: disk[k] for k in ("loads", "stale", "saves")}


async def test_a_new_cache_starts_from_the_files_and_appends_what_was_written_since(db, make_workspace, insert_runs,
                                                                                   tmp_path):
    store = MatrixStore(tmp_path / "m")
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 30))
    await ingest(db, ws)
    first, disk = await _answer(db, ws, store)
    assert disk == {"loads": 0, "stale": 0, "saves": 2}  # built from the database, both kept
    assert set(_files(store.root)) == {"trials", "evidence"}
    assert os.stat(store.root).st_mode & 0o777 == 0o700

    again, disk = await _answer(db, ws, store)
    assert disk == {"loads": 2, "stale": 0, "saves": 0}
    assert again == first

    await insert_runs(_runs(ws, 100, 6))
    await ingest(db, ws)
    appended, disk = await _answer(db, ws, store)
    assert disk == {"loads": 2, "stale": 0, "saves": 2}  # the files, six rows appended: grown a fifth, kept
    assert appended[2] == first[2] + 6
    assert appended == (await _answer(db, ws, None))[0]  # as a load from the database answers

    await insert_runs(_runs(ws, 200, 1))
    await ingest(db, ws)
    one_more, disk = await _answer(db, ws, store)
    assert disk == {"loads": 2, "stale": 0, "saves": 0}  # grown by less than a tenth: the files stay
    assert one_more == (await _answer(db, ws, None))[0]


async def test_a_file_whose_rows_changed_or_left_is_not_trusted(db, make_workspace, insert_runs, tmp_path):
    store = MatrixStore(tmp_path / "m")
    ws = await make_workspace()
    runs = _runs(ws, 0, 20)
    await insert_runs(runs)
    await ingest(db, ws)
    await _answer(db, ws, store)
    await db.execute("UPDATE backtest_runs SET kb_status = 'rejected' WHERE id = $1", runs[0]["id"])
    await ingest(db, ws)  # the trial is archived: rows the files hold left
    shown, disk = await _answer(db, ws, store)
    assert disk["loads"] == 0 and disk["stale"] == 2  # the strategy was reset: both built again, kept
    assert shown == (await _answer(db, ws, None))[0]
    assert shown[2] == 19


async def test_a_file_whose_rows_differ_only_in_content_is_not_trusted(db, make_workspace, insert_runs, tmp_path):
    """Same rows by count, ids and revisions; one trial's content changed behind the KB's
    back: only the digest can tell, and it does."""
    store = MatrixStore(tmp_path / "m")
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 12))
    await ingest(db, ws)
    await _answer(db, ws, store)
    await db.execute("UPDATE kb_trials SET content_hash = 'changed' WHERE id = "
                     "(SELECT id FROM kb_trials WHERE workspace_id = $1 LIMIT 1)", ws)
    _, disk = await _answer(db, ws, store)
    assert disk == {"loads": 1, "stale": 1, "saves": 1}  # the evidence file holds; the trials one is built again


async def test_a_workspace_made_again_under_its_id_never_extends_an_older_matrix(db, make_workspace, insert_runs,
                                                                                tmp_path):
    """`kb demo` deletes its workspace and makes it again with the same id: a server's
    matrix of the deleted rows (and a file of them) is rebuilt, not appended to."""
    store = MatrixStore(tmp_path / "m")
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 12))
    await ingest(db, ws)
    cache = TrialCache()
    query = RecommendQuery(ws, "s", tags=("uptrend",), top_k=5)
    assert (await recommend(db, query, cache)).considered == 12
    assert (await _answer(db, ws, store))[1]["saves"] == 2
    name = await db.fetchval("SELECT name FROM workspaces WHERE id = $1", ws)
    await db.execute("DELETE FROM workspaces WHERE id = $1", ws)
    await db.execute("INSERT INTO workspaces (id, name) VALUES ($1, $2)", ws, name)
    await insert_runs(_runs(ws, 500, 5))
    await ingest(db, ws)
    assert (await recommend(db, query, cache)).considered == 5  # in memory: rebuilt
    shown, disk = await _answer(db, ws, store)
    assert shown[2] == 5 and disk["loads"] == 0 and disk["stale"] == 2  # the files of the deleted rows


async def test_a_file_of_another_database_with_the_same_revision_is_not_trusted(db, make_workspace, insert_runs,
                                                                               tmp_path):
    """Same workspace, strategy and revision, other rows (a database dropped and made
    again under the same name): the digest of the rows tells them apart."""
    store = MatrixStore(tmp_path / "m")
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 12))
    await ingest(db, ws)
    await _answer(db, ws, store)
    await db.execute("DELETE FROM backtest_runs WHERE workspace_id = $1", ws)
    await db.execute("UPDATE kb_strategy_revisions SET revision = 0, reset_revision = 0 WHERE workspace_id = $1", ws)
    await insert_runs(_runs(ws, 500, 12))
    await ingest(db, ws)
    shown, disk = await _answer(db, ws, store)
    assert disk["stale"] == 2 and disk["loads"] == 0
    assert shown == (await _answer(db, ws, None))[0]


async def test_a_damaged_or_foreign_file_is_a_miss_never_an_error(db, make_workspace, insert_runs, tmp_path):
    store = MatrixStore(tmp_path / "m")
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 12))
    await ingest(db, ws)
    expected, _ = await _answer(db, ws, store)
    files = _files(store.root)
    files["trials"].write_bytes(b"not a pickle")
    files["evidence"].write_bytes(pickle.dumps((999, {}, None)))  # another format
    shown, disk = await _answer(db, ws, store)
    assert shown == expected and disk == {"loads": 0, "stale": 0, "saves": 2}
    os.chmod(store.root, 0o777)  # others may write there: nothing in it is read
    try:
        shown, disk = await _answer(db, ws, store)
    finally:
        os.chmod(store.root, 0o700)
    assert shown == expected and disk["loads"] == 0


async def test_a_store_that_cannot_be_written_still_answers(db, make_workspace, insert_runs, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the directory would be")
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 12))
    await ingest(db, ws)
    shown, disk = await _answer(db, ws, MatrixStore(blocked / "m"))
    assert disk["saves"] == 0
    assert shown == (await _answer(db, ws, None))[0]


def test_the_store_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KB_MATRIX_CACHE", "off")
    assert MatrixStore.from_env() is None
    monkeypatch.setenv("KB_MATRIX_CACHE", str(tmp_path / "x"))
    assert MatrixStore.from_env() == MatrixStore(tmp_path / "x")
    monkeypatch.delenv("KB_MATRIX_CACHE")
    monkeypatch.setenv("KB_HOME", str(tmp_path / "home"))
    assert MatrixStore.from_env() == MatrixStore(tmp_path / "home" / "matrices")


async def _kb_recommend(db_url: str, ws: uuid.UUID, cache_dir: Path) -> dict:
    env = {**os.environ, "DATABASE_URL": db_url, "KB_MATRIX_CACHE": str(cache_dir), "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.services.kb.cli", "recommend", "--workspace-id", str(ws), "--strategy", "s",
        "--tags", "uptrend", "--json", env=env, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, err.decode()[-2000:]
    return orjson.loads(out)


async def test_a_second_kb_recommend_process_reads_the_files_the_first_wrote(db, db_url, make_workspace,
                                                                             insert_runs, tmp_path):
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 30))
    await ingest(db, ws)
    first = await _kb_recommend(db_url, ws, tmp_path / "m")
    files = _files(tmp_path / "m")
    written = {kind: p.stat().st_ino for kind, p in files.items()}
    assert set(written) == {"trials", "evidence"}
    second = await _kb_recommend(db_url, ws, tmp_path / "m")
    # Started from the files: a load from the database would have replaced them (a new inode).
    assert {kind: p.stat().st_ino for kind, p in _files(tmp_path / "m").items()} == written
    assert second == first


async def test_a_look_at_the_past_keeps_no_file(db, make_workspace, insert_runs, tmp_path):
    """`--as-of` answers (a backtest of the KB, one scope per decision) stay in memory."""
    store = MatrixStore(tmp_path / "m")
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 12))
    await ingest(db, ws)
    cache = TrialCache(store=store)
    as_of = datetime(2030, 1, 1, tzinfo=UTC)
    await recommend(db, RecommendQuery(ws, "s", tags=("uptrend",), top_k=5, as_of=as_of), cache)
    assert set(_files(store.root)) == {"trials"}  # the trials matrix has no scope; the as-of evidence is not kept


def test_the_directory_is_trimmed_to_its_limit_least_recently_used_first(tmp_path):
    store = MatrixStore(tmp_path / "m", max_bytes=2_500)
    store.root.mkdir(mode=0o700)
    for i, name in enumerate(("old", "used", "new")):
        p = store.root / f"trials-{name}.pickle"
        p.write_bytes(b"x" * 1_000)
        os.utime(p, (1_000 + i, 1_000 + i))
    os.utime(store.root / "trials-used.pickle", (5_000, 5_000))  # read since: kept before "new"
    assert store.trim(keep=store.root / "trials-new.pickle") == 1
    assert sorted(p.name for p in store.root.iterdir()) == ["trials-new.pickle", "trials-used.pickle"]


async def test_a_file_read_counts_as_used(db, make_workspace, insert_runs, tmp_path):
    store = MatrixStore(tmp_path / "m")
    ws = await make_workspace()
    await insert_runs(_runs(ws, 0, 12))
    await ingest(db, ws)
    await _answer(db, ws, store)
    for p in _files(store.root).values():
        os.utime(p, (1_000, 1_000))
    await _answer(db, ws, store)
    assert all(p.stat().st_mtime > 1_000 for p in _files(store.root).values())


def test_the_limit_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KB_MATRIX_CACHE", str(tmp_path / "x"))
    monkeypatch.setenv("KB_MATRIX_CACHE_MB", "1.5")
    assert MatrixStore.from_env() == MatrixStore(tmp_path / "x", max_bytes=int(1.5 * 2**20))
    monkeypatch.setenv("KB_MATRIX_CACHE_MB", "lots")
    with pytest.raises(BadInput, match="KB_MATRIX_CACHE_MB must be a number of megabytes"):
        MatrixStore.from_env()


async def test_a_new_process_lends_the_kept_decisions_to_its_check(db, make_workspace, insert_runs, tmp_path):
    """A check's decisions are kept beside the evidence file; a later process that appends
    to that file replays only the decisions the new rows can change, and reports what a
    replay from scratch reports."""
    from app.services.kb.recommend.evaluate import evaluate_matrix
    from app.services.kb.regime.snapshot import RegimeSnapshot
    from tests.factories import SWEEP_UP, sweep_windows

    store = MatrixStore(tmp_path / "m")
    ws = await make_workspace()
    rows = sweep_windows(ws, 60, lambda name, up, w: (1.5 if (name == "A") == up else -1.0) + 0.01 * (w % 7))
    await insert_runs(rows[:100])  # 50 windows
    await ingest(db, ws)
    query = RecommendQuery(ws, "s", regime=RegimeSnapshot.from_dict(SWEEP_UP), top_k=5)
    await recommend(db, query, TrialCache(store=store))  # builds, keeps both matrices and the decisions
    assert set(_files(store.root)) == {"trials", "evidence", "decisions"}
    await insert_runs(rows[100:])  # 10 later windows
    await ingest(db, ws)
    later = TrialCache(store=store)  # a new process
    await recommend(db, query, later)
    matrix = await later.evidence.get(db, ws, "s", scope=query.scope)
    check = matrix.memo["check"].result()
    assert later.describe_all()["disk"]["loads"] == 2 and matrix.n_windows == 60
    assert 20 <= check.reused < len(check.outcomes)
    fresh = evaluate_matrix(await TrialCache().evidence.get(db, ws, "s", scope=query.scope))
    assert fresh.reused == 0 and fresh.model.to_json() == check.model.to_json()

    # Decisions kept for another write of the file (other codes, maybe) are never lent.
    decisions = _files(store.root)["decisions"]
    fmt, header, outcomes = pickle.loads(decisions.read_bytes())
    decisions.write_bytes(pickle.dumps((fmt, {**header, "kept_as": (0, "", "")}, outcomes)))
    await insert_runs(sweep_windows(ws, 62, lambda *_: 0.5)[120:])
    await ingest(db, ws)
    other = TrialCache(store=store)
    await recommend(db, query, other)
    again = (await other.evidence.get(db, ws, "s", scope=query.scope)).memo["check"].result()
    assert again.reused == 0 and again.outcomes
