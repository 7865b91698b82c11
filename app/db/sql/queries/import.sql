-- name: import_lock_source
-- Imports of one source into one workspace take turns (until commit), so the ids read
-- by `import_present_ids` stay the ids stored until the import's COPY has run.
SELECT pg_advisory_xact_lock(hashtext('trading-kb:import:' || $1::text), hashtext($2::text))

-- name: import_source_present
-- Whether the workspace holds any run from this source (if not, no id needs looking up).
SELECT EXISTS (
    SELECT 1 FROM backtest_runs WHERE workspace_id = $1 AND import_source = $2
)

-- name: import_present_ids
-- Of the ids $3, those already imported into the workspace from the source.
SELECT coalesce(array_agg(r.import_source_id), '{}')
FROM backtest_runs r
WHERE r.workspace_id = $1 AND r.import_source = $2 AND r.import_source_id = ANY($3::text[])
