"""The rows ingest writes, built without a database: content hashes stay those already
stored (a changed formula would rewrite every trial once), array literals print each
float as `repr` does, and the row tuples follow the SQL's unnest columns."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.db.trials import EVIDENCE_COLUMNS, TRIAL_COLUMNS
from app.services.kb.ingest_rows import EvidenceRow, TrialRow, evidence_row, trial_from_row
from app.services.kb.regime.snapshot import FEATURE_NAMES
from app.services.kb.runs.fields import feature_array, feature_values, float_literal, parse_run
from app.services.kb.runs.summary import decode_summary
from app.services.kb.runs.windows import BadTimestamp, parse_timestamp, timestamp

FEATURES = {"atr_pct": 0.0123, "rsi": 55, "bb_width_pct": 0.05, "std_pct": 1e-05, "range_pct": 0.2, "zscore": -1.25,
            "trend_strength": 0.5, "trend_dir": 1, "efficiency_ratio": 0.3333333333333333, "return_pct": 12345678.9}


def _run(**changes: Any) -> dict[str, Any]:
    row = {"id": uuid.UUID(int=7), "created_at": datetime(2025, 1, 1, tzinfo=UTC), "run_kind": "test_variant",
           "status": "completed", "strategy_name": "trend", "experiment_type": "sweep", "kb_status": "candidate",
           "trade_count": None, "params": orjson.dumps({"fast": 5, "slow": 50, "symbol": "SPY"}).decode(),
           "dataset_meta": orjson.dumps({"symbol": " spy ", "timeframe": "1h", "oos_start": "2024-01-01T00:00:00",
                                         "oos_end": 1704844800}).decode(),
           "summary": orjson.dumps({"sharpe": 1.5, "trades": 12, "max_drawdown_pct": -7.5, "return_pct": 3.25,
                                    "win_rate": 55, "profit_factor": 1.4}).decode(),
           "regime_oos": orjson.dumps({**FEATURES, "regime_tags": ["uptrend", 'we"ird', "high_vol"],
                                       "ts_end": "2024-01-09T08:00:00Z"}).decode(),
           "regime_pre": orjson.dumps({**FEATURES, "rsi": 44.5, "regime_tags": ["flat"]}).decode()}
    return {**row, **changes}


# Hashes the ingest stored before its rows were built faster (same inputs, same values).
@pytest.mark.parametrize(("row", "trial_hash", "evidence_hash"), [
    (_run(), "c4785c0f8c9805efdaddde799a20db9a", "7e495e473efcfa169143b962ab9c2615"),
    (_run(regime_pre=None, kb_status="excluded", summary='{"sharpe": null, "trades": 0}'),
     "e5d285854b6df7ce1761f1346ec27a96", "36a9d9f257367079170a11143aba808a"),
])
def test_content_hashes_are_those_already_stored(row: dict[str, Any], trial_hash: str, evidence_hash: str) -> None:
    run = parse_run(row)
    trial, reason = trial_from_row(row, run)
    assert trial is not None and reason is None
    assert trial.content_hash == trial_hash
    assert evidence_row(row, run).content_hash == evidence_hash
    assert run.tags_literal == '{"high_vol","uptrend","we\\"ird"}'


def test_dsr_inputs_are_written_but_not_hashed() -> None:
    row = _run()
    run = parse_run(row)
    plain, _ = trial_from_row(row, run)
    settled, _ = trial_from_row(row, run, '{"unavailable": "x"}')
    assert plain is not None and settled is not None
    assert plain.dsr_inputs is None and settled.dsr_inputs == '{"unavailable": "x"}'
    assert plain.content_hash == settled.content_hash


def test_rows_follow_the_sql_unnest_columns() -> None:
    assert TrialRow._fields == TRIAL_COLUMNS
    assert EvidenceRow._fields == EVIDENCE_COLUMNS
    row = _run()
    run = parse_run(row)
    evidence = evidence_row(row, run)
    assert dict(zip(EVIDENCE_COLUMNS, evidence.row(), strict=True))["oos_start"] == datetime(2024, 1, 1, tzinfo=UTC)


finite = st.floats(allow_nan=False, allow_infinity=False)


@given(st.lists(finite | st.sampled_from([1e-05, 0.0001, 1e16, 1e15, -0.0, 5e-324, 10.00001]), max_size=12))
def test_float_literal_prints_each_float_as_repr(values: list[float]) -> None:
    assert float_literal(values) == "{" + ",".join(repr(v) for v in values) + "}"


@pytest.mark.parametrize("bad", [True, math.nan, math.inf, "1.0", None, 10**400, [1.0]])
def test_features_need_every_value_a_finite_number(bad: Any) -> None:
    assert feature_values({**FEATURES, "rsi": bad}) is None
    assert feature_array({**FEATURES, "rsi": bad}) is None


def test_integer_features_are_floats() -> None:
    values = feature_values(FEATURES)
    assert values is not None and len(values) == len(FEATURE_NAMES)
    assert all(type(v) is float for v in values) and values[FEATURE_NAMES.index("rsi")] == 55.0


@pytest.mark.parametrize("value", ["2024-01-01T00:00:00", "2024-01-01", 1704067200, 1704067200.5, 1704067200000])
def test_remembered_timestamps_are_parsed_alike(value: Any) -> None:
    assert timestamp(value) == parse_timestamp(value)
    assert timestamp(value) == parse_timestamp(value)  # the second time from the cache


def test_a_boolean_is_no_timestamp_even_after_one() -> None:
    timestamp(1)
    with pytest.raises(BadTimestamp):
        timestamp(True)
    with pytest.raises(BadTimestamp):
        timestamp("not a time")
    with pytest.raises(BadTimestamp):
        timestamp("not a time")  # failures are not remembered as values


@pytest.mark.parametrize(("raw", "expected"), [
    ('{"a": 1}', {"a": 1}),
    ('"{\\"a\\": 1}"', {"a": 1}),  # double-encoded
    ("[1, 2]", None),
    ("not json", None),
])
def test_summaries_decode_as_before(raw: str, expected: dict[str, Any] | None) -> None:
    assert decode_summary(raw) == expected


def test_python_nan_literals_still_decode() -> None:
    found = decode_summary('{"a": NaN}')
    assert found is not None and math.isnan(found["a"])
