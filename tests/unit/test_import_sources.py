"""Import files read a chunk at a time (`app.services.kb.importing.sources`): chunks of
CHUNK_ROWS rows in every format, read as a whole-file read would read them, and every
problem a whole read would meet found before a row is written (no database here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from app.errors import BadInput
from app.services.kb.importing import sources
from app.services.kb.importing.rows import prepare
from app.services.kb.importing.service import CHUNK_ROWS, load_file, open_file
from tests.factories import chunked_sweep_export

ROWS = 2 * CHUNK_ROWS + 5_000


def _export(path: Path) -> Path:
    return chunked_sweep_export(path, ROWS, CHUNK_ROWS)


def _records(chunks: list[pd.DataFrame], path: Path) -> list[object]:
    mapping = open_file(path, None, {}, {})[1]
    out: list[object] = []
    first = 1
    for chunk in chunks:
        prepared = prepare(chunk, mapping, first_row=first)
        out += prepared.records + prepared.errors
        first += len(chunk)
    return out


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_chunks_give_the_rows_a_whole_file_read_gives(tmp_path, suffix) -> None:
    path = _export(tmp_path / f"runs{suffix}")
    table, _ = open_file(path, None, {}, {})
    chunks = list(table.chunks())
    assert [len(c) for c, _ in chunks] == [CHUNK_ROWS, CHUNK_ROWS, ROWS - 2 * CHUNK_ROWS]
    assert chunks[-1][1] == table.progress_total
    whole, _ = load_file(path, None, {}, {})
    slices = [whole.iloc[s : s + CHUNK_ROWS] for s in range(0, ROWS, CHUNK_ROWS)]
    assert _records([c for c, _ in chunks], path) == _records(slices, path)


@pytest.mark.parametrize("suffix, planned", [
    (".csv", {"param_b": str, "param_c": "float64"}),  # a word makes the column text; a gap, floats
    (".jsonl", {"param_a": "float", "param_b": "object", "param_c": "float", "symbol": "float"}),  # a: ints, fractions
    (".parquet", {"param_c": "float", "symbol": "float"}),
])
def test_a_scan_before_reading_finds_the_whole_file_types(tmp_path, suffix, planned) -> None:
    table, _ = open_file(_export(tmp_path / f"runs{suffix}"), None, {}, {})
    found = {c: t for c, t in table.dtypes.items() if c.startswith("param")} if suffix == ".csv" else table.plan
    assert found == planned
    first = next(table.chunks())[0]
    if suffix == ".csv":
        assert first["param_b"].tolist()[:3] == ["0", "1", "2"]  # the spelling, as the whole file reads it
    else:
        assert first["symbol"].dtype == np.float64  # ints as floats, as in the whole file


def test_json_lines_cut_anywhere_read_as_one_text(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sources, "_BLOCK", 7)  # blocks end inside lines and between CR and LF
    rows = [{"strategy_name": f"s{i}", "sharpe": i} for i in range(6)]
    lines = [orjson.dumps(r) for r in rows]
    path = tmp_path / "runs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + lines[0] + b"\r\n" + lines[1] + b"\r" + lines[2] + b"\n\r\n  \n"
                     + b"\r\n".join(lines[3:]))
    table, _ = open_file(path, None, {}, {})
    frame = pd.concat([c for c, _ in table.chunks()])
    assert frame.to_dict("records") == rows
    path.write_bytes(lines[0] + b"\r\n" + lines[1] + b"\r" + b"\r\n" + b'{"strategy_name": }\n')
    with pytest.raises(BadInput, match="line 4 is not valid JSON"):
        open_file(path, None, {}, {})


def test_a_json_key_first_seen_late_is_a_column_from_the_start(tmp_path) -> None:
    path = tmp_path / "runs.jsonl"
    rows = [{"strategy_name": "s", "sharpe": 1.0} for _ in range(CHUNK_ROWS + 10)]
    rows[-1]["Sharpe Ratio"] = 2.0
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    with pytest.raises(BadInput, match="both give sharpe"):  # as the whole file, before any row is written
        open_file(path, None, {}, {})
    table, mapping = open_file(path, None, {"sharpe": "Sharpe Ratio"}, {})
    first = next(table.chunks())[0]
    assert mapping.columns["sharpe"] == "Sharpe Ratio" and first["Sharpe Ratio"].isna().all()
    with pytest.raises(BadInput, match="no column 'sharp'"):
        open_file(path, None, {"sharpe": "sharp"}, {})


def test_more_rows_than_the_limit_are_found_before_reading_where_the_file_says(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sources, "MAX_ROWS", 2 * CHUNK_ROWS)
    for suffix in (".parquet", ".jsonl", ".csv"):  # a CSV with param columns is scanned first
        with pytest.raises(BadInput, match=f"{ROWS:,} rows is more than {2 * CHUNK_ROWS:,}"):
            open_file(_export(tmp_path / f"runs{suffix}"), None, {}, {})
