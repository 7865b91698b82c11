from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import BadInput
from app.services.kb.regime.ohlcv import load_ohlcv, timeframe_seconds
from app.services.kb.runs.windows import extract_windows, parse_since, parse_timestamp

D = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731


@pytest.mark.parametrize(
    ("meta", "params", "oos", "is_"),
    [
        ({"oos_start": "2024-02-01", "oos_end": "2024-03-01"}, None, (D(2024, 2, 1), D(2024, 3, 1)), None),
        ({"oos_start": "2024-02-01", "oos_end": "2024-03-01", "is_start": "2024-01-01", "is_end": "2024-01-31"},
         None, (D(2024, 2, 1), D(2024, 3, 1)), (D(2024, 1, 1), D(2024, 1, 31))),
        ({}, {"oos_start": 1706745600, "oos_end": 1709251200000}, (D(2024, 2, 1), D(2024, 3, 1)), None),
        ({"date_min": "2024-01-01", "date_max": "2024-01-11", "oos_ratio": 0.3}, None,
         (D(2024, 1, 8), D(2024, 1, 11)), "some"),
        ({"start": "2024-01-01T00:00:00+02:00", "end": "2024-01-03", "oos_split": "2024-01-02"}, None,
         (D(2024, 1, 2), D(2024, 1, 3)), "some"),
        ({"date_min": "2024-01-01", "date_max": "2024-01-05"}, None, (D(2024, 1, 1), D(2024, 1, 5)), None),
        ({"symbol": "X"}, {"date_min": "2024-01-01", "date_max": "2024-01-05"}, (D(2024, 1, 1), D(2024, 1, 5)), None),
    ],
)
def test_window_forms(meta, params, oos, is_) -> None:
    w = extract_windows(meta, params)
    assert w.reason is None
    assert (w.oos.start, w.oos.end) == oos
    assert (w.is_ is None) == (is_ is None)
    if isinstance(is_, tuple):
        assert (w.is_.start, w.is_.end) == is_


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({}, "missing_date_range"),
        (None, "missing_date_range"),
        ({"date_min": "2024-01-01"}, "missing_date_range"),
        ({"oos_start": "2024-03-01", "oos_end": "2024-02-01"}, "invalid_date_range"),
        ({"date_min": "2024-03-01", "date_max": "2024-02-01"}, "invalid_date_range"),
        ({"date_min": "2024-01-01", "date_max": "2024-02-01", "oos_ratio": 1.5}, "invalid_date_range"),
        ({"date_min": "2024-01-01", "date_max": "2024-02-01", "oos_split": "2025-01-01"}, "invalid_date_range"),
        ({"oos_start": "garbage", "oos_end": "2024-02-01"}, "invalid_date_range"),
        ({"oos_start": float("nan"), "oos_end": 1e308}, "invalid_date_range"),
        ({"oos_start": True, "oos_end": "2024-02-01"}, "invalid_date_range"),
    ],
)
def test_window_reasons(meta, reason) -> None:
    assert extract_windows(meta, {}).reason == reason


@given(st.dictionaries(st.sampled_from(["oos_start", "oos_end", "date_min", "date_max", "start", "end",
                                        "oos_split", "oos_ratio"]),
                       st.none() | st.text(max_size=30) | st.integers() | st.floats() | st.booleans()
                       | st.lists(st.integers(), max_size=2)))
def test_window_extractor_never_raises(meta) -> None:
    w = extract_windows(meta, meta)
    assert w.reason in (None, "missing_date_range", "invalid_date_range")
    if w.reason is None:
        assert w.oos.start <= w.oos.end


def test_since_parsing() -> None:
    assert parse_since("2025-01-01") == D(2025, 1, 1)
    assert parse_since("2025-01-01T09:30:00") == D(2025, 1, 1, 9, 30)
    assert parse_since("2025-01-01T09:30:00+01:00") == D(2025, 1, 1, 8, 30)
    assert parse_timestamp(1735689600) == D(2025, 1, 1)
    assert parse_timestamp(1735689600000) == D(2025, 1, 1)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_csv_with_aliases_epoch_ms_dupes_nan_and_bad_prices(tmp_path) -> None:
    p = write(tmp_path, "a.csv", "TS,O,H,L,C,V\n"
              "1704070800000,1,2,0.5,1.5,10\n"
              "1704067200000,1,2,0.5,1.4,10\n"
              "1704067200000,1,2,0.5,1.45,10\n"
              "1704074400000,1,2,0.5,,10\n"
              "1704078000000,1,0.4,0.5,1.5,10\n"
              "1704081600000,-1,2,0.5,1.5,10\n")
    data = load_ohlcv(p, symbol="AAPL")
    s = data.series["AAPL"]
    assert len(s) == 2 and data.rows == 2
    assert list(s.close) == [1.45, 1.5]  # sorted; the later duplicate wins
    assert data.dropped == {"nan_rows": 1, "bad_prices": 2, "duplicates": 1}
    assert data.date_range() == "2024-01-01 to 2024-01-01"


def test_json_records_data_wrapper_and_parquet(tmp_path) -> None:
    rows = [{"Date": f"2024-01-0{i}T00:00:00Z", "Open": 1, "High": 2, "Low": 1, "Close": 1.5} for i in range(1, 4)]
    import orjson

    assert len(load_ohlcv(write(tmp_path, "a.json", orjson.dumps(rows))).series[None]) == 3
    assert len(load_ohlcv(write(tmp_path, "b.json", orjson.dumps({"data": rows}))).series[None]) == 3
    df = pd.DataFrame(rows)
    df["symbol"] = ["aapl", "msft", "aapl"]
    df.to_parquet(tmp_path / "c.parquet")
    data = load_ohlcv(tmp_path / "c.parquet")
    assert data.has_symbol_column and sorted(data.series) == ["AAPL", "MSFT"]
    assert len(load_ohlcv(tmp_path / "c.parquet", symbol="msft").series) == 1


def test_parquet_native_timestamps(tmp_path) -> None:
    ts = pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC").as_unit("us")
    pd.DataFrame({"timestamp": ts, "high": [2.0] * 3, "low": [1.0] * 3, "close": [1.5] * 3}).to_parquet(
        tmp_path / "t.parquet")
    s = load_ohlcv(tmp_path / "t.parquet").series[None]
    assert list(s.ts) == [1704067200 * 10**9 + h * 3600 * 10**9 for h in range(3)]


def test_mixed_time_zones_become_utc(tmp_path) -> None:
    p = write(tmp_path, "tz.csv",
              "time,high,low,close\n2024-01-01T02:00:00+02:00,2,1,1.5\n2024-01-01T01:00:00Z,2,1,1.5\n")
    s = load_ohlcv(p).series[None]
    # 02:00+02:00 is 00:00Z, so it sorts before 01:00Z
    assert list(s.ts) == [1704067200 * 10**9, 1704070800 * 10**9]


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.csv", "", "is empty"),
        ("header.csv", "timestamp,open,high,low,close\n", "no rows"),
        ("nocol.csv", "timestamp,open,high\n2024-01-01,1,2\n", "lacks column(s) low, close"),
        ("notime.csv", "open,high,low,close\n1,2,1,1\n", "lacks column(s) timestamp"),
        ("badtime.csv", "timestamp,high,low,close\nnope,2,1,1\nnever,2,1,1\n", "no parseable times"),
        ("garbage.parquet", b"\x00\x01\x02garbage", "cannot read OHLCV file"),
        ("garbage.json", b"{not json", "not valid JSON"),
        ("list.json", b"[1, 2, 3]", "expected a list of records"),
        ("allnan.csv", "timestamp,high,low,close\n2024-01-01,,,\n", "no usable rows"),
        ("neg.csv", "timestamp,high,low,close\n2024-01-01,-2,-3,-2\n", "no usable rows"),
        ("semi.csv", "timestamp;high;low;close\n2024-01-01;2;1;1.5\n2024-01-02;2;1;1.5\n", None),
    ],
)
def test_malformed_files(tmp_path, name, content, needle) -> None:
    p = write(tmp_path, name, content)
    if needle is None:
        assert len(load_ohlcv(p).series[None]) == 2  # the delimiter is sniffed
        return
    with pytest.raises(BadInput) as err:
        load_ohlcv(p)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        load_ohlcv(tmp_path / "nope.csv")
    with pytest.raises(BadInput, match="not a file"):
        load_ohlcv(tmp_path)


def test_timeframes() -> None:
    assert timeframe_seconds("1h") == 3600 and timeframe_seconds("15m") == 900 and timeframe_seconds("1d") == 86400
    for bad in ("", "h", "0h", "1y", "fast"):
        with pytest.raises(BadInput):
            timeframe_seconds(bad)


@given(st.binary(max_size=300))
def test_loader_never_raises_anything_but_bad_input(tmp_path_factory, blob) -> None:
    p = tmp_path_factory.mktemp("fuzz") / "f.csv"
    p.write_bytes(blob)
    try:
        data = load_ohlcv(p, symbol="X")
    except BadInput as exc:
        assert "\n" not in str(exc)
    else:
        for s in data.series.values():
            assert np.all(np.diff(s.ts) > 0)
