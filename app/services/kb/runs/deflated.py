"""Deflated and probabilistic Sharpe ratios (Bailey & López de Prado, 2014) of a run, from its annualised figures."""

from __future__ import annotations

import functools
import math
import numbers
import re
from dataclasses import astuple, dataclass, fields
from statistics import NormalDist

EULER_GAMMA = 0.5772156649
_STD_NORMAL = NormalDist()

# 252 trading days a year for daily bars and up. Intraday bars assume a 24 h day: the KB does not know the
# session length of a market, so for a 6.5 h equity session this overstates bars per year (6048 vs ~1638 an
# hour). That understates the years a window spans and so errs towards a lower, more conservative DSR; a
# caller that knows the session should pass its own periods_per_year to `deflated_sharpe`.
_TRADING_DAYS = 252
_BARS_PER_YEAR_BY_UNIT: dict[str, float] = {
    "m": _TRADING_DAYS * 24 * 60,
    "h": _TRADING_DAYS * 24,
    "d": _TRADING_DAYS,
    "w": 52,
    "M": 12,
}
_TIMEFRAME = re.compile(r"(\d*)([a-zA-Z])")


@dataclass(frozen=True)
class DeflatedSharpe:
    """Sharpe figures are per bar; `trials_sharpe_var` is the caller's annualised variance, as given."""

    dsr: float
    psr_zero: float
    sharpe_per_bar: float
    expected_max_sharpe_per_bar: float
    n_bars: int
    n_trials: int
    trials_sharpe_var: float
    skew: float
    kurtosis: float

    def to_dict(self) -> dict[str, float | int]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in zip(_FIELDS, astuple(self), strict=True)}


@functools.lru_cache(maxsize=256)
def periods_per_year(timeframe: str) -> float | None:
    """Bars per year for "1m", "4h", "1d", "d", "1w", "1M"...; None for anything else."""
    if not isinstance(timeframe, str):
        return None
    match = _TIMEFRAME.fullmatch(timeframe.strip())
    if match is None:
        return None
    count_text, unit = match.groups()
    # 'm' is minutes and 'M' is months, so only the other units may be written in either case.
    if unit not in ("m", "M"):
        unit = unit.lower()
    per_unit = _BARS_PER_YEAR_BY_UNIT.get(unit)
    count = int(count_text) if count_text else 1
    if per_unit is None or count <= 0:
        return None
    return per_unit / count


@functools.lru_cache(maxsize=65536)  # one value per window: its trials share it
def expected_max_sharpe(n_trials: float, variance: float) -> float:
    """Expected maximum Sharpe of `n_trials` independent zero-skill trials whose Sharpe has `variance` (same units)."""
    if n_trials <= 1 or variance == 0:
        # One trial involves no selection, and identical trials leave nothing to select among.
        return 0.0
    quantile = (1 - EULER_GAMMA) * _STD_NORMAL.inv_cdf(1 - 1 / n_trials)
    quantile += EULER_GAMMA * _STD_NORMAL.inv_cdf(1 - 1 / (n_trials * math.e))
    return math.sqrt(variance) * quantile


def probabilistic_sharpe(sharpe: float, benchmark: float, n_bars: float, skew: float, kurtosis: float) -> float | None:
    """P(true Sharpe > benchmark), all Sharpe figures per bar; None when the moments give no standard error."""
    under_root = 1 - skew * sharpe + (kurtosis - 1) / 4 * (sharpe * sharpe)
    if not 0 < under_root < math.inf:
        return None
    return _normal_cdf((sharpe - benchmark) * math.sqrt(n_bars - 1) / math.sqrt(under_root))


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _finite_real(x: object) -> bool:
    if type(x) is float or type(x) is int:  # the common case, without the slower ABC check
        return math.isfinite(x)
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def deflated_sharpe(
    sharpe: float,
    n_bars: int,
    periods_per_year: float,
    n_trials: int,
    trials_sharpe_var: float,
    skew: float | None = None,
    kurtosis: float | None = None,
) -> DeflatedSharpe | None:
    """DSR of the best of `n_trials` runs from its annualised Sharpe; None when the inputs give no figure."""
    skew = 0.0 if skew is None else skew
    kurtosis = 3.0 if kurtosis is None else kurtosis
    raw = (sharpe, n_bars, periods_per_year, n_trials, trials_sharpe_var, skew, kurtosis)
    # Stored metrics can be missing or junk; a figure is optional, a crash in a report is not.
    if not all(_finite_real(x) for x in raw):
        return None
    # Plain floats from here, so numpy scalars neither leak into the result nor compute in float32.
    sr_ann, bars, per_year, trials, var_ann, g3, g4 = (float(x) for x in raw)
    if bars < 2 or per_year <= 0 or trials < 1 or var_ann < 0:
        return None
    # The paper's statistics are in the units of one observation, i.e. one bar; the KB stores annualised ones.
    sharpe_per_bar = sr_ann / math.sqrt(per_year)
    try:
        sr0 = expected_max_sharpe(trials, var_ann / per_year)
    except ValueError:
        return None  # so many trials that 1 - 1/N rounds to 1 and the normal quantile is infinite
    if not (math.isfinite(sharpe_per_bar) and math.isfinite(sr0)):
        return None  # a vanishing periods_per_year overflows the per-bar figures
    dsr = probabilistic_sharpe(sharpe_per_bar, sr0, bars, g3, g4)
    psr_zero = probabilistic_sharpe(sharpe_per_bar, 0.0, bars, g3, g4)
    if dsr is None or psr_zero is None:
        return None
    return DeflatedSharpe(
        dsr=dsr,
        psr_zero=psr_zero,
        sharpe_per_bar=sharpe_per_bar,
        expected_max_sharpe_per_bar=sr0,
        n_bars=int(bars),
        n_trials=int(trials),
        trials_sharpe_var=var_ann,
        skew=g3,
        kurtosis=g4,
    )


_FIELDS = tuple(f.name for f in fields(DeflatedSharpe))


def window_dsr(sharpe: float | None, n_bars: object, timeframe: str | None, n_sets: int,
               sharpe_var: float) -> DeflatedSharpe | None:
    """The DSR of one run from what the KB stores: its annualised Sharpe, the bars of its
    OOS window (its OOS snapshot's count), its bar size, and the sets tried on that window
    with the variance of their Sharpe (normal returns: the KB keeps no skew or kurtosis)."""
    per_year = periods_per_year(timeframe) if timeframe else None
    try:
        bars = int(str(n_bars)) if n_bars is not None else None
    except ValueError:
        bars = None
    if sharpe is None or per_year is None or bars is None:
        return None
    return deflated_sharpe(sharpe, bars, per_year, max(int(n_sets), 1), sharpe_var)
