-- name: trials_frame_rows
-- A workspace's active KB trials (of one strategy when $2 is not NULL), for a DataFrame.
SELECT id, source_run_id, strategy_name, symbol, timeframe, experiment_type, kb_status,
       params::text AS params, sharpe, return_frac, max_dd_frac, win_rate, profit_factor, n_trades, dsr,
       regime_tags, regime_pre_tags, regime_ts_end, ingested_at, updated_at
FROM kb_trials
WHERE workspace_id = $1 AND ($2::text IS NULL OR strategy_name = $2) AND archived_at IS NULL
ORDER BY strategy_name, ingested_at, id

-- name: runs_frame_rows
-- A workspace's runs (of one strategy when $2 is not NULL), newest first, at most $3 (NULL: all),
-- for a DataFrame. regime_tags is NULL for a run without an OOS regime snapshot.
SELECT id, created_at, run_kind, status, strategy_name, experiment_type, kb_status, import_source,
       params::text AS params, dataset_meta::text AS dataset_meta, summary::text AS summary, trade_count,
       CASE WHEN jsonb_typeof(regime_oos -> 'regime_tags') = 'array'
            THEN ARRAY(SELECT jsonb_array_elements_text(regime_oos -> 'regime_tags')) END AS regime_tags
FROM backtest_runs
WHERE workspace_id = $1 AND ($2::text IS NULL OR strategy_name = $2)
ORDER BY created_at DESC, id
LIMIT $3::bigint
