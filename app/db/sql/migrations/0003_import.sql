-- Where an imported run came from: re-importing the same source row adds nothing.
ALTER TABLE backtest_runs ADD COLUMN import_source text;
ALTER TABLE backtest_runs ADD COLUMN import_source_id text;

CREATE UNIQUE INDEX backtest_runs_import_key
    ON backtest_runs (workspace_id, import_source, import_source_id)
    WHERE import_source IS NOT NULL;
