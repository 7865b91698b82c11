-- name: workspace_exists
SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1)

-- name: ensure_workspace
INSERT INTO workspaces (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING

-- name: delete_workspace
DELETE FROM workspaces WHERE id = $1

-- name: count_workspace_runs
SELECT count(*) FROM backtest_runs WHERE workspace_id = $1

-- name: lock_workspace_xact
-- Serializes whole-workspace rewrites (two `kb demo` at once) until the transaction ends.
SELECT pg_advisory_xact_lock(hashtext('trading-kb:workspace'), hashtext($1::text))

-- name: try_lock_workspace_job
-- Held by a whole-workspace job (`kb demo`) for its whole run, by an open transaction
-- on a connection of its own (app.db.locks).
SELECT pg_try_advisory_xact_lock(hashtext('trading-kb:workspace-job'), hashtext($1::text))

-- name: lock_workspace_job
SELECT pg_advisory_xact_lock(hashtext('trading-kb:workspace-job'), hashtext($1::text))

-- name: workspaces_named
SELECT id, name, created_at FROM workspaces WHERE name = $1 ORDER BY created_at, id

-- name: lock_workspace_name_xact
-- Serializes creating a workspace by name, so two commands naming a new one create it once.
SELECT pg_advisory_xact_lock(hashtext('trading-kb:workspace-name'), hashtext($1::text))
