-- The backfill ledger and its per-workspace advisory lock. The lock key is built here only:
-- hashtext('trading-kb:backfill:' || kind), hashtext(workspace_id). The lock is held by a
-- transaction left open on a connection of its own (it holds through a pooler in
-- transaction mode); ending that transaction releases it.

-- name: begin_lock_transaction
BEGIN

-- name: end_lock_transaction
COMMIT

-- name: abort_lock_transaction
ROLLBACK

-- name: try_backfill_lock
SELECT pg_try_advisory_xact_lock(hashtext('trading-kb:backfill:' || $1::text), hashtext($2::text))

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
                              cursor_created_at, cursor_id, counts, pid, owner)
VALUES ($1, $2, $3::jsonb, $4, $5, 'running', $6, $7, '{}'::jsonb, $8, $9)
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
    invocations = invocations + 1, pid = $2, owner = $3
WHERE id = $1 AND workspace_id = $4

-- name: checkpoint_backfill_run
UPDATE kb_backfill_runs
SET cursor_created_at = $2, cursor_id = $3, counts = $4::jsonb, heartbeat_at = now()
WHERE id = $1 AND owner = $5 AND status = 'running' AND workspace_id = $6

-- name: close_backfill_run
-- Only a run still marked running by this owner: never overwrite what another process
-- recorded (a run taken over after its lock was lost).
UPDATE kb_backfill_runs
SET status = $2, finished_at = now(), heartbeat_at = now(), error = $3
WHERE id = $1 AND status = 'running' AND owner IS NOT DISTINCT FROM $4 AND workspace_id = $5

-- name: mark_backfill_run_undone
UPDATE kb_backfill_runs
SET status = 'undone', finished_at = now(), heartbeat_at = now(), error = NULL
WHERE id = $1 AND workspace_id = $2

-- name: heartbeat_backfill_run
UPDATE kb_backfill_runs SET heartbeat_at = now()
WHERE id = $1 AND owner = $2 AND status = 'running' AND workspace_id = $3

-- name: list_backfill_runs
SELECT id, kind, dry_run, status, config::text AS config, counts::text AS counts,
       cursor_created_at, started_at, heartbeat_at, finished_at, invocations, error
FROM kb_backfill_runs
WHERE workspace_id = $1
ORDER BY started_at DESC
LIMIT $2

-- name: get_backfill_run
-- all workspaces: `kb backfill-undo` is given a run id alone and finds its workspace here.
SELECT id, workspace_id, kind, dry_run, status, config::text AS config, counts::text AS counts
FROM kb_backfill_runs
WHERE id = $1

-- name: backfill_cursor_is
-- After a lost COMMIT acknowledgement: true when the batch ending at this cursor committed.
SELECT cursor_created_at = $2 AND cursor_id = $3 FROM kb_backfill_runs WHERE id = $1 AND workspace_id = $4

-- name: backfill_run_status
SELECT status, owner FROM kb_backfill_runs WHERE id = $1 AND workspace_id = $2

-- name: backfill_run_counts
SELECT counts::text AS counts FROM kb_backfill_runs WHERE id = $1 AND workspace_id = $2

-- name: insert_undo_run
INSERT INTO kb_backfill_runs (workspace_id, kind, config, config_key, dry_run, status, pid)
VALUES ($1, 'undo', jsonb_build_object('undo_of', $2::text), 'undo:' || $2::text, false, 'running', pg_backend_pid())
RETURNING id

-- name: complete_undo_run
UPDATE kb_backfill_runs
SET status = 'completed', finished_at = now(), heartbeat_at = now(),
    counts = jsonb_build_object('reverted', $2::int, 'changed_since', $3::int, 'already_undone', $4::int)
WHERE id = $1 AND workspace_id = $5
