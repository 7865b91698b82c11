-- name: select_candidacy_page
-- The plan's selection, one keyset page after ($2, $3) in (created_at, id) order.
SELECT id, created_at, experiment_type, trade_count, summary::text AS summary,
       regime_oos IS NOT NULL AS has_regime
FROM backtest_runs
WHERE workspace_id = $1
  AND run_kind = 'test_variant'
  AND status IN ('completed', 'success')
  AND kb_status = 'excluded'
  AND (created_at, id) > ($2::timestamptz, $3::uuid)
ORDER BY created_at, id
LIMIT $4

-- name: select_candidacy_run
SELECT id, workspace_id, created_at, run_kind, status, kb_status, experiment_type, trade_count,
       summary::text AS summary, regime_oos IS NOT NULL AS has_regime
FROM backtest_runs
WHERE id = $1 AND workspace_id = $2

-- name: update_candidacy_batch
-- Guarded: a row whose kb_status changed since it was read is left alone.
WITH changed AS (
    UPDATE backtest_runs
    SET kb_status = 'candidate',
        kb_status_changed_at = now(),
        kb_status_changed_by = 'backfill',
        kb_status_reason = 'backfill-candidacy',
        auto_candidate_gate = 'passed_all_gates'
    WHERE id = ANY($1::uuid[])
      AND workspace_id = $2
      AND kb_status = 'excluded'
    RETURNING id, workspace_id
)
INSERT INTO kb_status_history (run_id, workspace_id, from_status, to_status, actor, reason, backfill_run_id)
SELECT id, workspace_id, 'excluded', 'candidate', 'backfill', 'passed_all_gates', $3
FROM changed

-- name: select_regime_page
SELECT id, created_at, dataset_meta::text AS dataset_meta, params::text AS params
FROM backtest_runs
WHERE workspace_id = $1
  AND run_kind = 'test_variant'
  AND status IN ('completed', 'success')
  AND regime_oos IS NULL
  AND ($5::text IS NULL OR upper(btrim(dataset_meta ->> 'symbol')) = upper(btrim($5::text)))
  AND (created_at, id) > ($2::timestamptz, $3::uuid)
ORDER BY created_at, id
LIMIT $4

-- name: update_regime_batch
-- Guarded: a run that gained a regime meanwhile keeps it.
UPDATE backtest_runs AS r
SET regime_oos = u.regime_oos::jsonb,
    regime_is = COALESCE(u.regime_is::jsonb, r.regime_is),
    regime_pre = COALESCE(u.regime_pre::jsonb, r.regime_pre),
    regime_schema_version = 'regime_v1',
    regime_backfill_run_id = $6
FROM unnest($1::uuid[], $2::text[], $3::text[], $5::text[]) AS u(id, regime_oos, regime_is, regime_pre)
WHERE r.id = u.id
  AND r.workspace_id = $4
  AND r.regime_oos IS NULL

-- name: run_window_stats
-- For one candidacy run (`--explain`): bars in each run's OOS window and, over the
-- completed test variants of its strategy on the same window, the sets tried and their Sharpe variance.
WITH target AS (
    SELECT r.id, r.strategy_name, r.dataset_meta, r.regime_oos ->> 'n_bars' AS n_bars,
           CASE WHEN jsonb_typeof(r.summary -> 'sharpe') = 'number' THEN (r.summary ->> 'sharpe')::float8 END AS sharpe
    FROM backtest_runs r WHERE r.workspace_id = $1 AND r.id = ANY($2::uuid[])
)
SELECT t.id, t.sharpe, t.n_bars, t.dataset_meta ->> 'timeframe' AS timeframe, count(DISTINCT s.params) AS n_sets,
       coalesce(var_samp(CASE WHEN jsonb_typeof(s.summary -> 'sharpe') = 'number'
                              THEN (s.summary ->> 'sharpe')::float8 END), 0) AS sharpe_var
FROM target t
JOIN backtest_runs s ON s.workspace_id = $1 AND s.strategy_name = t.strategy_name
     AND s.run_kind = 'test_variant' AND s.status IN ('completed', 'success')
     AND coalesce(s.dataset_meta ->> 'symbol', '') = coalesce(t.dataset_meta ->> 'symbol', '')
     AND coalesce(s.dataset_meta ->> 'timeframe', '') = coalesce(t.dataset_meta ->> 'timeframe', '')
     AND s.dataset_meta ->> 'oos_start' = t.dataset_meta ->> 'oos_start'
     AND s.dataset_meta ->> 'oos_end' = t.dataset_meta ->> 'oos_end'
GROUP BY t.id, t.sharpe, t.n_bars, t.dataset_meta ->> 'timeframe'

-- name: workspace_window_stats
-- The figures of `run_window_stats` for every window of the workspace at once (one scan,
-- for a whole candidacy backfill), by `kb_window_key`. Windows with one set only are left
-- out: a run there counts one set tried, and with one set its DSR does not depend on the
-- variance (`expected_max_sharpe`), so the caller takes (1 set, variance 0) for them.
SELECT kb_window_key(strategy_name, dataset_meta) AS key, count(DISTINCT params) AS n_sets,
       coalesce(var_samp(CASE WHEN jsonb_typeof(summary -> 'sharpe') = 'number'
                              THEN (summary ->> 'sharpe')::float8 END), 0) AS sharpe_var
FROM backtest_runs
WHERE workspace_id = $1 AND run_kind = 'test_variant' AND status IN ('completed', 'success')
  AND kb_window_key(strategy_name, dataset_meta) IS NOT NULL
GROUP BY 1
HAVING count(DISTINCT params) > 1

-- name: run_window_keys
-- Per run: what `run_window_stats` reads of the run itself, and its window's key in
-- `workspace_window_stats` (NULL: the run has no strategy or no OOS window).
SELECT id, regime_oos ->> 'n_bars' AS n_bars, dataset_meta ->> 'timeframe' AS timeframe,
       CASE WHEN jsonb_typeof(summary -> 'sharpe') = 'number' THEN (summary ->> 'sharpe')::float8 END AS sharpe,
       kb_window_key(strategy_name, dataset_meta) AS key
FROM backtest_runs WHERE workspace_id = $1 AND id = ANY($2::uuid[])

-- name: count_candidacy_after
-- What `select_candidacy_page` would still read after ($2, $3).
SELECT count(*)
FROM backtest_runs
WHERE workspace_id = $1
  AND run_kind = 'test_variant'
  AND status IN ('completed', 'success')
  AND kb_status = 'excluded'
  AND (created_at, id) > ($2::timestamptz, $3::uuid)

-- name: count_regime_after
-- What `select_regime_page` would still read after ($2, $3).
SELECT count(*)
FROM backtest_runs
WHERE workspace_id = $1
  AND run_kind = 'test_variant'
  AND status IN ('completed', 'success')
  AND regime_oos IS NULL
  AND ($4::text IS NULL OR upper(btrim(dataset_meta ->> 'symbol')) = upper(btrim($4::text)))
  AND (created_at, id) > ($2::timestamptz, $3::uuid)

-- name: runs_without_regime_by_symbol
-- What a regime backfill would scan, per symbol: completed test variants with no OOS snapshot.
SELECT upper(btrim(dataset_meta ->> 'symbol')) AS symbol, count(*) AS runs
FROM backtest_runs
WHERE workspace_id = $1
  AND run_kind = 'test_variant'
  AND status IN ('completed', 'success')
  AND regime_oos IS NULL
GROUP BY 1
ORDER BY 1 NULLS LAST
