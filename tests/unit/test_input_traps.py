"""Inputs that used to change what gets written or answered: environment twins, flat
prices, snapshots in the original system's format, too few bars. No database needed:
each is refused or read before any database work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.cli.main import amain
from app.services.kb.regime.features import MIN_EFFECTIVE_BARS, compute_regime_snapshot, current_regime
from app.services.kb.regime.ohlcv import Series
from app.services.kb.regime.snapshot import parse_regime_snapshot

WS = "00000000-0000-0000-0000-0000000000aa"


@pytest.mark.parametrize("word", ["y", "maybe", "2", "tru"])
async def test_unknown_boolean_twins_are_refused(word, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KB_DRY_RUN", word)
    assert await amain(["backfill-candidacy", "--workspace-id", WS]) == 2
    err = capsys.readouterr().err
    assert "KB_DRY_RUN" in err and "yes/no" in err and len(err.strip().splitlines()) == 1


async def test_a_twin_is_checked_only_by_the_command_it_applies_to(monkeypatch, capsys) -> None:
    # 20,000 is a valid --limit for backfills and out of range for backfill-runs (10,000).
    monkeypatch.setenv("KB_LIMIT", "20000")
    monkeypatch.setenv("KB_PORT", "99999999")
    assert await amain(["--help"]) == 0
    assert await amain(["backfill-candidacy", "--help"]) == 0
    capsys.readouterr()
    assert await amain(["backfill-runs", "--workspace-id", WS]) == 2
    assert "KB_LIMIT" in capsys.readouterr().err
    assert await amain(["serve"]) == 2
    assert "KB_PORT" in capsys.readouterr().err


def test_flat_prices_have_no_spread() -> None:
    close = np.full(120, 101.37)
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=120, freq="h", tz="UTC"),
                          "high": close, "low": close, "close": close})
    snap = compute_regime_snapshot(frame).to_dict()
    assert snap["zscore"] == 0.0 and "zero_variance" in snap["warnings"]


def test_snapshots_in_the_original_format_are_read() -> None:
    snap = parse_regime_snapshot({"atr_pct": 0.01, "regime_tags": "uptrend, high_vol",
                                  "tag_evidence": [{"tag": "uptrend", "metric": "trend_strength", "value": 0.8,
                                                    "op": ">=", "threshold": 0.6, "margin": 0.2}]})
    assert snap is not None
    assert snap.regime_tags == ("high_vol", "uptrend")
    assert snap.tag_evidence["uptrend"][0].metric == "trend_strength"


def test_the_current_regime_needs_enough_bars() -> None:
    n = MIN_EFFECTIVE_BARS - 1
    close = np.linspace(100, 110, n)
    series = Series("SPY", np.arange(n, dtype=np.int64) * 3_600_000_000_000, close, close + 1, close - 1, close)
    with pytest.raises(Exception, match=f"at least {MIN_EFFECTIVE_BARS} bars"):
        current_regime(series, timeframe="1h", source="test")


async def test_recommend_refuses_an_ohlcv_file_with_too_few_bars(tmp_path, capsys) -> None:
    path = tmp_path / "three.csv"
    path.write_text("timestamp,open,high,low,close\n2024-01-01T00:00:00Z,1,2,0.5,1.5\n"
                    "2024-01-01T01:00:00Z,1,2,0.5,1.5\n2024-01-01T02:00:00Z,1,2,0.5,1.6\n")
    code = await amain(["recommend", "--workspace-id", WS, "--strategy", "s", "--ohlcv-file", str(path)])
    assert code == 2 and "at least 50 bars" in capsys.readouterr().err


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:p/w?x@host:5432/db", "postgresql://u:***@host:5432/db"),
    ("postgresql://u:a:b@h/db?password=x", "postgresql://u:***@h/db?password=***"),
    ("postgresql://user@h/db", "postgresql://user@h/db"),
    ("host=h password=secret user=u", "host=h password=*** user=u"),
])
def test_passwords_never_printed(url, shown) -> None:
    from app.urls import redact_url

    assert redact_url(url) == shown
