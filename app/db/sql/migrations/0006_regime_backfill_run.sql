-- Which regime backfill wrote a run's snapshots, so `kb backfill-undo` can clear exactly those.
ALTER TABLE backtest_runs ADD COLUMN regime_backfill_run_id uuid;
