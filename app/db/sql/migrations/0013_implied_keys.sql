-- Foreign keys that another key already implies, dropped: every row of kb_trials and
-- kb_evidence names its run by (workspace_id, source_run_id), NOT NULL, and that key
-- references backtest_runs, whose own key references workspaces. So the workspace
-- exists whenever the run does, and deleting a workspace still removes these rows
-- (through its runs, ON DELETE CASCADE). Each dropped key cost a trigger call per row
-- written: about a tenth of an ingest page's time. kb_status_history keeps its own:
-- deleting a workspace must remove its history before its backfill runs, whose removal
-- would otherwise set a column of that append-only table.
ALTER TABLE kb_trials DROP CONSTRAINT kb_trials_workspace_id_fkey;
ALTER TABLE kb_evidence DROP CONSTRAINT kb_evidence_workspace_id_fkey;
