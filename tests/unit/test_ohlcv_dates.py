"""OHLCV times that used to be silently mangled: each parsed right or refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.errors import BadInput
from app.services.kb.regime.ohlcv import bar_seconds_of, check_timeframe, load_ohlcv

PRICES = "100,101,99,100.5,1000"


def _stamps(path: Path) -> list[pd.Timestamp]:
    data = load_ohlcv(path)
    return [pd.Timestamp(int(t), tz="UTC") for t in next(iter(data.series.values())).ts]


def _write(path: Path, times: list[str], header: str = "timestamp") -> Path:
    path.write_text(f"{header},open,high,low,close\n" + "".join(f"{t},100,101,99,100.5\n" for t in times))
    return path


def test_byte_order_mark_is_not_part_of_the_header(tmp_path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftimestamp,open,high,low,close\n2024-01-01,1,2,0.5,1.5\n2024-01-02,1,2,0.5,1.5\n")
    assert len(_stamps(path)) == 2


def test_metatrader_date_and_time_columns_are_one_timestamp(tmp_path) -> None:
    minutes = pd.date_range("2024-01-02", periods=1440, freq="min")
    lines = "".join(f"{t:%Y.%m.%d},{t:%H:%M},1.1,1.2,1.0,1.15,10\n" for t in minutes)
    path = tmp_path / "mt.csv"
    path.write_text("<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<TICKVOL>\n" + lines)
    data = load_ohlcv(path)
    assert data.rows == 1440 and data.dropped["duplicates"] == 0
    assert _stamps(path)[-1] == pd.Timestamp("2024-01-02 23:59", tz="UTC")


def test_day_first_dates_are_read_day_first_throughout(tmp_path) -> None:
    days = pd.date_range("2024-01-01", periods=40, freq="D")
    for sep in "/.":
        path = _write(tmp_path / f"dmy{ord(sep)}.csv", [f"{d:%d}{sep}{d:%m}{sep}{d:%Y}" for d in days])
        assert _stamps(path) == list(days.tz_localize("UTC"))


def test_month_first_dates_stay_month_first(tmp_path) -> None:
    days = pd.date_range("2024-01-01", periods=40, freq="D")
    path = _write(tmp_path / "mdy.csv", [f"{d:%m/%d/%Y}" for d in days])
    assert _stamps(path) == list(days.tz_localize("UTC"))


def test_ambiguous_day_month_needs_a_choice(tmp_path) -> None:
    path = _write(tmp_path / "amb.csv", ["01/02/2024", "03/04/2024", "05/06/2024"])
    with pytest.raises(BadInput, match="--dayfirst"):
        load_ohlcv(path)
    data = load_ohlcv(path, dayfirst=True)
    first = pd.Timestamp(int(next(iter(data.series.values())).ts[0]), tz="UTC")
    assert first == pd.Timestamp("2024-02-01", tz="UTC")
    data = load_ohlcv(path, date_format="%m/%d/%Y")
    assert pd.Timestamp(int(next(iter(data.series.values())).ts[0]), tz="UTC") == pd.Timestamp("2024-01-02", tz="UTC")


def test_dates_proving_both_orders_are_refused(tmp_path) -> None:
    path = _write(tmp_path / "both.csv", ["13/01/2024", "01/14/2024"])
    with pytest.raises(BadInput, match="mix day-first and month-first"):
        load_ohlcv(path)


def test_yyyymmdd_and_excel_serial_dates(tmp_path) -> None:
    path = _write(tmp_path / "ymd.csv", ["20240102", "20240103", "20240104"])
    assert _stamps(path)[0] == pd.Timestamp("2024-01-02", tz="UTC")
    path = _write(tmp_path / "excel.csv", ["45292", "45293", "45293.5"])
    assert _stamps(path) == [pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-02", tz="UTC"),
                             pd.Timestamp("2024-01-02 12:00", tz="UTC")]


def test_epoch_units_by_magnitude_row_by_row(tmp_path) -> None:
    base = pd.Timestamp("2024-01-01", tz="UTC")
    s = int(base.timestamp())
    path = _write(tmp_path / "mixed.csv", [str(s), str((s + 3600) * 1000), str((s + 7200) * 1_000_000),
                                          str((s + 10800) * 1_000_000_000)])
    assert _stamps(path) == [base + pd.Timedelta(hours=h) for h in range(4)]
    path = _write(tmp_path / "far.csv", ["9999999999", "99999999999"])  # seconds in 2286
    with pytest.raises(BadInput, match="after 2262"):
        load_ohlcv(path)


def test_bar_size_is_detected_and_a_contradicting_timeframe_refused(tmp_path) -> None:
    days = pd.bdate_range("2024-01-01", periods=120)
    data = load_ohlcv(_write(tmp_path / "daily.csv", [f"{d:%Y-%m-%d}" for d in days]))
    assert bar_seconds_of(data) == 86_400
    assert check_timeframe(data, None) == ("1d", 86_400)
    assert check_timeframe(data, "1d") == ("1d", 86_400)
    with pytest.raises(BadInput, match="bars 1d apart but --timeframe is 1h"):
        check_timeframe(data, "1h")
    hours = pd.date_range("2024-01-01", periods=300, freq="h")
    hourly = load_ohlcv(_write(tmp_path / "hourly.csv", [t.isoformat() for t in hours]))
    with pytest.raises(BadInput, match="bars 1h apart"):
        check_timeframe(hourly, "1d")
    assert np.isclose(check_timeframe(hourly, None)[1], 3600)
