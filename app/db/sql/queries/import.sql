-- name: import_staging_create
-- One chunk of checked rows, already in the shape `backtest_runs` keeps (dropped at commit).
CREATE TEMP TABLE kb_import_staging (
    source_id        text NOT NULL,
    created_at       bigint,          -- microseconds since the epoch; null means the import time
    run_kind         text NOT NULL,
    status           text NOT NULL,
    strategy_name    text NOT NULL,
    experiment_type  text,
    params           jsonb NOT NULL,
    dataset_meta     jsonb NOT NULL,  -- symbol, timeframe, oos_start, oos_end
    summary          jsonb NOT NULL,  -- the metrics, percent where the key says pct
    trade_count      integer
) ON COMMIT DROP

-- name: import_insert
-- $1 workspace, $2 source, $3 import time (the default created_at). Rows already
-- imported from the same source (same id, or same content) are skipped.
WITH written AS (
    INSERT INTO backtest_runs (workspace_id, created_at, run_kind, status, strategy_name, experiment_type,
                               params, dataset_meta, summary, trade_count, import_source, import_source_id)
    SELECT $1, coalesce(timestamptz 'epoch' + s.created_at * interval '1 microsecond', $3), s.run_kind,
           s.status, s.strategy_name, s.experiment_type, s.params, s.dataset_meta, s.summary, s.trade_count,
           $2, s.source_id
    FROM kb_import_staging s
    ON CONFLICT (workspace_id, import_source, import_source_id) WHERE import_source IS NOT NULL DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM written

-- name: import_count_new
-- What `import_insert` would write: distinct keys not yet in the workspace.
SELECT count(DISTINCT s.source_id)
FROM kb_import_staging s
WHERE NOT EXISTS (
    SELECT 1 FROM backtest_runs r
    WHERE r.workspace_id = $1 AND r.import_source = $2 AND r.import_source_id = s.source_id
)

-- name: import_staging_clear
TRUNCATE kb_import_staging
