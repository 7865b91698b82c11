from __future__ import annotations

import itertools
import json
import math
from statistics import NormalDist

import pytest

from app.services.kb.runs.deflated import DeflatedSharpe, deflated_sharpe, periods_per_year

PHI = NormalDist()
EULER_GAMMA = 0.5772156649


def test_hand_computed_normal_daily() -> None:
    # Annual Sharpe 2.0 over 252 daily bars, best of 100 trials whose annual Sharpe variance is 0.5; normal returns.
    sr = 2.0 / math.sqrt(252)  # 0.1259882 per bar
    v = 0.5 / 252  # 0.0019841 per bar
    z_n = PHI.inv_cdf(1 - 1 / 100)  # 2.3263479
    z_ne = PHI.inv_cdf(1 - 1 / (100 * math.e))  # 2.6802104
    sr0 = math.sqrt(v) * ((1 - EULER_GAMMA) * z_n + EULER_GAMMA * z_ne)  # 0.1127220 (1.7894 annualised)
    den = math.sqrt(1 - 0 * sr + (3 - 1) / 4 * sr**2)  # 1.0039604
    dsr = PHI.cdf((sr - sr0) * math.sqrt(252 - 1) / den)  # Phi(0.2093462)
    psr0 = PHI.cdf(sr * math.sqrt(252 - 1) / den)

    got = deflated_sharpe(2.0, 252, 252, 100, 0.5)
    assert got is not None
    assert got.sharpe_per_bar == pytest.approx(sr, rel=1e-12)
    assert got.expected_max_sharpe_per_bar == pytest.approx(sr0, rel=1e-12)
    assert got.dsr == pytest.approx(dsr, rel=1e-12)
    assert got.psr_zero == pytest.approx(psr0, rel=1e-12)
    # Pinned figures, so a change in the steps above cannot pass silently.
    assert z_n == pytest.approx(2.3263479, abs=1e-7)
    assert z_ne == pytest.approx(2.6802104, abs=1e-7)
    assert got.expected_max_sharpe_per_bar == pytest.approx(0.1127220, abs=1e-7)
    assert got.dsr == pytest.approx(0.5829110, abs=1e-7)
    assert got.psr_zero == pytest.approx(0.9766027, abs=1e-7)


def test_hand_computed_skew_and_fat_tails() -> None:
    # Same run with skew -0.5 and (non-excess) kurtosis 5: a wider standard error, so both figures fall.
    sr = 2.0 / math.sqrt(252)
    z_n, z_ne = PHI.inv_cdf(1 - 1 / 100), PHI.inv_cdf(1 - 1 / (100 * math.e))
    sr0 = math.sqrt(0.5 / 252) * ((1 - EULER_GAMMA) * z_n + EULER_GAMMA * z_ne)
    den = math.sqrt(1 - (-0.5) * sr + (5 - 1) / 4 * sr**2)  # sqrt(1 + 0.0629941 + 0.0158730) = 1.0386853
    dsr = PHI.cdf((sr - sr0) * math.sqrt(251) / den)  # Phi(0.2023474)
    psr0 = PHI.cdf(sr * math.sqrt(251) / den)

    got = deflated_sharpe(2.0, 252, 252, 100, 0.5, skew=-0.5, kurtosis=5)
    assert got is not None
    assert den == pytest.approx(1.0386853, abs=1e-7)
    assert got.dsr == pytest.approx(dsr, rel=1e-12)
    assert got.psr_zero == pytest.approx(psr0, rel=1e-12)
    assert got.dsr == pytest.approx(0.5801774, abs=1e-7)
    assert got.psr_zero == pytest.approx(0.9726774, abs=1e-7)
    normal = deflated_sharpe(2.0, 252, 252, 100, 0.5)
    assert normal is not None
    assert got.dsr < normal.dsr
    assert got.psr_zero < normal.psr_zero


def test_paper_style_inputs() -> None:
    # Inputs of the paper's worked example as we recall them (annual SR 2.5, 1250 daily observations at 250 a year,
    # N = 100, annual variance 0.5, skew -3, kurtosis 10). Checked against the formula only, not the printed page.
    sr = 2.5 / math.sqrt(250)  # 0.1581139
    z_n, z_ne = PHI.inv_cdf(1 - 1 / 100), PHI.inv_cdf(1 - 1 / (100 * math.e))
    sr0 = math.sqrt(0.5 / 250) * ((1 - EULER_GAMMA) * z_n + EULER_GAMMA * z_ne)
    den = math.sqrt(1 - (-3) * sr + (10 - 1) / 4 * sr**2)  # 1.2371708
    dsr = PHI.cdf((sr - sr0) * math.sqrt(1250 - 1) / den)  # Phi(1.2838160)

    got = deflated_sharpe(2.5, 1250, 250, 100, 0.5, skew=-3, kurtosis=10)
    assert got is not None
    assert got.expected_max_sharpe_per_bar == pytest.approx(sr0, rel=1e-12)
    assert got.dsr == pytest.approx(dsr, rel=1e-12)
    assert got.expected_max_sharpe_per_bar == pytest.approx(0.1131720, abs=1e-7)
    assert got.dsr == pytest.approx(0.9003968, abs=1e-7)


def test_dsr_falls_as_trials_grow() -> None:
    dsrs = []
    for n in (1, 2, 5, 10, 100, 1_000, 10_000):
        got = deflated_sharpe(2.0, 504, 252, n, 0.5)
        assert got is not None
        dsrs.append(got.dsr)
    assert all(a > b for a, b in itertools.pairwise(dsrs))


def test_single_trial_is_psr_against_zero() -> None:
    got = deflated_sharpe(1.2, 300, 252, 1, 0.7, skew=0.3, kurtosis=4)
    assert got is not None
    assert got.expected_max_sharpe_per_bar == 0.0
    assert got.dsr == got.psr_zero


def test_zero_variance_across_trials_means_no_selection() -> None:
    got = deflated_sharpe(1.2, 300, 252, 50, 0.0)
    assert got is not None
    assert got.expected_max_sharpe_per_bar == 0.0
    assert got.dsr == got.psr_zero


def test_more_bars_raise_dsr_for_positive_sharpe() -> None:
    dsrs = []
    for bars in (100, 252, 504, 1_260, 2_520):
        got = deflated_sharpe(2.5, bars, 252, 20, 0.5)
        assert got is not None
        dsrs.append(got.dsr)
    assert all(a < b for a, b in itertools.pairwise(dsrs))


@pytest.mark.parametrize(
    "args",
    [
        (math.nan, 252, 252, 10, 0.5),
        (math.inf, 252, 252, 10, 0.5),
        (1.0, 252, math.nan, 10, 0.5),
        (1.0, 252, 252, 10, math.nan),
        (1.0, 1, 252, 10, 0.5),
        (1.0, 0, 252, 10, 0.5),
        (1.0, 252, 0, 10, 0.5),
        (1.0, 252, -252, 10, 0.5),
        (1.0, 252, 252, 0, 0.5),
        (1.0, 252, 252, 10, -0.1),
        (None, 252, 252, 10, 0.5),
        ("2.0", 252, 252, 10, 0.5),
        (True, 252, 252, 10, 0.5),
        (1.0, 252, 252, 1e300, 0.5),  # 1 - 1/N rounds to 1: no finite quantile
        (1.0, 252, 1e-320, 10, 0.5),  # per-bar variance overflows
    ],
)
def test_bad_inputs_give_none(args: tuple) -> None:
    assert deflated_sharpe(*args) is None


def test_bad_moments_give_none() -> None:
    # 1 - skew*SR + (kurt-1)/4*SR^2 <= 0: 1 - 5*5 + 0.5*25 = -11.5, and 1 - 2*1 + 0 = -1.
    assert deflated_sharpe(5.0, 252, 1, 10, 0.5, skew=5.0, kurtosis=3.0) is None
    assert deflated_sharpe(1.0, 252, 1, 10, 0.5, skew=2.0, kurtosis=1.0) is None
    assert deflated_sharpe(1.0, 252, 252, 10, 0.5, skew=math.nan) is None
    assert deflated_sharpe(1.0, 252, 252, 10, 0.5, kurtosis=math.inf) is None


def test_none_moments_mean_normal() -> None:
    assert deflated_sharpe(1.5, 400, 252, 30, 0.4) == deflated_sharpe(1.5, 400, 252, 30, 0.4, skew=0, kurtosis=3)
    got = deflated_sharpe(1.5, 400, 252, 30, 0.4, skew=None, kurtosis=None)
    assert got is not None
    assert (got.skew, got.kurtosis) == (0.0, 3.0)


def test_negative_sharpe_is_a_low_probability() -> None:
    got = deflated_sharpe(-1.0, 504, 252, 10, 0.5)
    assert got is not None
    assert 0.0 <= got.dsr < got.psr_zero < 0.5


def test_to_dict_is_json_friendly_and_rounded() -> None:
    got = deflated_sharpe(2.0, 252, 252, 100, 0.5)
    assert isinstance(got, DeflatedSharpe)
    d = got.to_dict()
    assert set(d) == {
        "dsr",
        "psr_zero",
        "sharpe_per_bar",
        "expected_max_sharpe_per_bar",
        "n_bars",
        "n_trials",
        "trials_sharpe_var",
        "skew",
        "kurtosis",
    }
    assert d["dsr"] == 0.582911
    assert d["sharpe_per_bar"] == 0.125988
    assert d["n_bars"] == 252
    assert d["n_trials"] == 100
    assert d["trials_sharpe_var"] == 0.5
    assert json.loads(json.dumps(d)) == d
    with pytest.raises(AttributeError):
        got.dsr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("timeframe", "expected"),
    [
        ("1m", 252 * 24 * 60),
        ("5m", 252 * 24 * 12),
        ("15m", 252 * 24 * 4),
        ("30m", 252 * 24 * 2),
        ("1h", 6048),
        ("1H", 6048),
        ("4h", 1512),
        ("1d", 252),
        ("d", 252),
        ("D", 252),
        ("1w", 52),
        ("w", 52),
        ("1M", 12),
        ("M", 12),
        ("3M", 4),
        (" 1d ", 252),
    ],
)
def test_periods_per_year(timeframe: str, expected: float) -> None:
    assert periods_per_year(timeframe) == pytest.approx(expected)


@pytest.mark.parametrize("timeframe", ["", "0d", "1y", "1s", "1min", "hourly", "1.5h", "-1d", "1 d", "h1"])
def test_periods_per_year_unknown(timeframe: str) -> None:
    assert periods_per_year(timeframe) is None
