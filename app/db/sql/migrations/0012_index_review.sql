-- Indexes no query needs any more (reviewed against the named queries and their plans):
-- ingest reads through backtest_runs_ingest_scan_idx, whose predicate (completed, and
-- eligible or a test variant with a regime) is implied by every filter the eligible-runs
-- index served; the trial loads and per-strategy counts use kb_trials_change_idx, which
-- starts with the same columns under the same predicate as the active-strategy index.
DROP INDEX backtest_runs_kb_eligible_idx;
DROP INDEX kb_trials_active_strategy_idx;
