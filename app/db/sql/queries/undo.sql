-- name: undo_backfill_changes
-- Revert the runs a backfill changed, unless they changed again since: the guard is
-- that the run's latest history row is still the one this backfill wrote.
WITH mine AS (
    SELECT h.run_id, h.from_status, h.to_status, h.id AS history_id
    FROM kb_status_history h
    WHERE h.workspace_id = $3 AND h.backfill_run_id = $1
),
latest AS (
    SELECT DISTINCT ON (h.run_id) h.run_id, h.id
    FROM kb_status_history h
    JOIN mine m ON m.run_id = h.run_id
    WHERE h.workspace_id = $3
    ORDER BY h.run_id, h.id DESC
),
reverted AS (
    UPDATE backtest_runs r
    SET kb_status = m.from_status,
        kb_status_changed_at = now(),
        kb_status_changed_by = 'backfill-undo',
        kb_status_reason = 'undo of backfill ' || $1::text,
        auto_candidate_gate = NULL
    FROM mine m
    JOIN latest l ON l.run_id = m.run_id AND l.id = m.history_id
    WHERE r.workspace_id = $3 AND r.id = m.run_id AND r.kb_status = m.to_status
    RETURNING r.id, r.workspace_id, m.to_status AS from_status, m.from_status AS to_status
),
logged AS (
    INSERT INTO kb_status_history (run_id, workspace_id, from_status, to_status, actor, reason, backfill_run_id)
    SELECT id, workspace_id, from_status, to_status, 'backfill-undo', 'undo of backfill ' || $1::text, $2
    FROM reverted
    RETURNING run_id
)
SELECT (SELECT count(*) FROM logged) AS reverted,
       (SELECT count(*) FROM mine) AS changed_by_backfill

-- name: undo_skipped_examples
-- Runs the backfill changed that have changed again since (left alone by undo).
SELECT m.run_id, r.kb_status
FROM kb_status_history m
JOIN backtest_runs r ON r.workspace_id = m.workspace_id AND r.id = m.run_id
WHERE m.workspace_id = $3 AND m.backfill_run_id = $1
  AND EXISTS (SELECT 1 FROM kb_status_history later
              WHERE later.workspace_id = $3 AND later.run_id = m.run_id AND later.id > m.id)
  AND NOT EXISTS (SELECT 1 FROM kb_status_history u WHERE u.workspace_id = $3 AND u.run_id = m.run_id AND u.id > m.id
                  AND (u.backfill_run_id = $2 OR (u.actor = 'backfill-undo'
                       AND u.reason = 'undo of backfill ' || $1::text)))
ORDER BY m.run_id
LIMIT 20

-- name: undo_already_undone
-- Runs of this backfill that an earlier undo of it has reverted already.
SELECT count(DISTINCT m.run_id)
FROM kb_status_history m
WHERE m.workspace_id = $3 AND m.backfill_run_id = $1
  AND EXISTS (SELECT 1 FROM kb_status_history u
              WHERE u.workspace_id = $3 AND u.run_id = m.run_id AND u.id > m.id AND u.actor = 'backfill-undo'
                AND u.reason = 'undo of backfill ' || $1::text AND u.backfill_run_id IS DISTINCT FROM $2)

-- name: undo_regime_changes
-- Clear the snapshots one regime backfill wrote; runs whose snapshots were written again
-- since (by another backfill) no longer carry its id and are left alone.
WITH cleared AS (
    UPDATE backtest_runs
    SET regime_oos = NULL, regime_is = NULL, regime_pre = NULL, regime_schema_version = NULL,
        regime_backfill_run_id = NULL
    WHERE workspace_id = $2 AND regime_backfill_run_id = $1
    RETURNING 1
)
SELECT count(*) FROM cleared
