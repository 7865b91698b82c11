-- `backfill-regime --symbol` matches runs whatever the case and surrounding spaces of their
-- stored symbol (`spy`, ` SPY`), as the symbol-column path does; the index follows the match.
DROP INDEX backtest_runs_regime_symbol_scan_idx;
CREATE INDEX backtest_runs_regime_symbol_scan_idx
    ON backtest_runs (workspace_id, (upper(btrim(dataset_meta ->> 'symbol'))), created_at, id)
    WHERE run_kind = 'test_variant' AND status IN ('completed', 'success') AND regime_oos IS NULL;
