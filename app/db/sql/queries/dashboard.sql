-- name: dashboard_workspaces
SELECT w.id, w.name, w.created_at,
       (SELECT count(*) FROM backtest_runs r WHERE r.workspace_id = w.id) AS runs,
       (SELECT count(*) FROM kb_trials t WHERE t.workspace_id = w.id AND t.archived_at IS NULL) AS trials
FROM workspaces w
ORDER BY w.created_at DESC, w.id
LIMIT $1

-- name: dashboard_coverage
-- Active trials per (regime tag, strategy): a trial counts under each of its tags.
SELECT t.strategy_name AS strategy, tag, count(*) AS trials,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY t.sharpe) AS median_sharpe
FROM kb_trials t,
     unnest(CASE WHEN cardinality(t.regime_tags) = 0 THEN ARRAY['untagged'] ELSE t.regime_tags END) AS tag
WHERE t.workspace_id = $1 AND t.archived_at IS NULL
GROUP BY t.strategy_name, tag

-- name: dashboard_strategies
SELECT strategy_name AS strategy, count(*) AS trials
FROM kb_trials
WHERE workspace_id = $1 AND archived_at IS NULL
GROUP BY strategy_name
ORDER BY strategy_name

-- name: dashboard_strategy_points
-- At most $3 trials of one strategy; ids are random, so the first $3 by id are a fair sample.
SELECT params::text AS params, sharpe, regime_tags, source_run_id, dsr
FROM kb_trials
WHERE workspace_id = $1 AND strategy_name = $2 AND archived_at IS NULL AND sharpe IS NOT NULL
ORDER BY id
LIMIT $3

-- name: dashboard_latest_candidacy
SELECT id, kind, dry_run, status, config::text AS config, counts::text AS counts,
       cursor_created_at, started_at, heartbeat_at, finished_at, invocations, error
FROM kb_backfill_runs
WHERE workspace_id = $1 AND kind = 'candidacy'
ORDER BY dry_run, started_at DESC
LIMIT 1

-- name: dashboard_run_funnel
SELECT count(*) AS runs,
       count(*) FILTER (WHERE run_kind = 'test_variant') AS test_variants,
       count(*) FILTER (WHERE run_kind = 'test_variant' AND status IN ('completed', 'success')) AS completed,
       count(*) FILTER (WHERE kb_status IN ('candidate', 'promoted')) AS eligible
FROM backtest_runs
WHERE workspace_id = $1
