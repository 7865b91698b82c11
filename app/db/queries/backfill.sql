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
WHERE id = $1

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
  AND ($5::text IS NULL OR dataset_meta ->> 'symbol' = $5)
  AND (created_at, id) > ($2::timestamptz, $3::uuid)
ORDER BY created_at, id
LIMIT $4

-- name: update_regime_batch
-- Guarded: a run that gained a regime meanwhile keeps it.
UPDATE backtest_runs AS r
SET regime_oos = u.regime_oos::jsonb,
    regime_is = COALESCE(u.regime_is::jsonb, r.regime_is),
    regime_schema_version = 'regime_v1'
FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, regime_oos, regime_is)
WHERE r.id = u.id
  AND r.workspace_id = $4
  AND r.regime_oos IS NULL

-- name: try_backfill_lock
SELECT pg_try_advisory_lock(hashtext('trading-kb:backfill:' || $1::text), hashtext($2::text))

-- name: backfill_lock_holder
SELECT pid FROM kb_backfill_runs
WHERE workspace_id = $1 AND kind = $2 AND status = 'running'
ORDER BY started_at DESC LIMIT 1

-- name: mark_dead_runs_interrupted
-- Called while holding the lock: any run still marked running has no live process.
UPDATE kb_backfill_runs
SET status = 'interrupted',
    error = COALESCE(error, 'process stopped without finishing (no heartbeat)'),
    finished_at = heartbeat_at
WHERE workspace_id = $1 AND kind = $2 AND status = 'running'
RETURNING id

-- name: insert_backfill_run
INSERT INTO kb_backfill_runs (workspace_id, kind, config, config_key, dry_run, status,
                              cursor_created_at, cursor_id, counts, pid)
VALUES ($1, $2, $3::jsonb, $4, $5, 'running', $6, $7, '{}'::jsonb, $8)
RETURNING id

-- name: find_resumable_run
SELECT id, cursor_created_at, cursor_id, counts::text AS counts, status
FROM kb_backfill_runs
WHERE workspace_id = $1 AND kind = $2 AND config_key = $3 AND dry_run = $4
ORDER BY started_at DESC
LIMIT 1

-- name: reopen_backfill_run
UPDATE kb_backfill_runs
SET status = 'running', heartbeat_at = now(), finished_at = NULL, error = NULL,
    invocations = invocations + 1, pid = $2
WHERE id = $1

-- name: checkpoint_backfill_run
UPDATE kb_backfill_runs
SET cursor_created_at = $2, cursor_id = $3, counts = $4::jsonb, heartbeat_at = now()
WHERE id = $1

-- name: close_backfill_run
-- Only a run still marked running: never overwrite what another process recorded
-- (a run taken over after its lock was lost).
UPDATE kb_backfill_runs
SET status = $2, finished_at = now(), heartbeat_at = now(), error = $3
WHERE id = $1 AND status = 'running'

-- name: mark_backfill_run_undone
UPDATE kb_backfill_runs
SET status = 'undone', finished_at = now(), heartbeat_at = now(), error = NULL
WHERE id = $1

-- name: heartbeat_backfill_run
UPDATE kb_backfill_runs SET heartbeat_at = now() WHERE id = $1

-- name: list_backfill_runs
SELECT id, kind, dry_run, status, config::text AS config, counts::text AS counts,
       cursor_created_at, started_at, heartbeat_at, finished_at, invocations, error
FROM kb_backfill_runs
WHERE workspace_id = $1
ORDER BY started_at DESC
LIMIT $2

-- name: get_backfill_run
SELECT id, workspace_id, kind, dry_run, status, config::text AS config, counts::text AS counts
FROM kb_backfill_runs
WHERE id = $1

-- name: workspace_exists
SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1)
