-- The run behind each KB row, checked once per written page instead of once per row.
--
-- kb_trials and kb_evidence name their run by (workspace_id, source_run_id), NOT NULL.
-- Their foreign keys ran a trigger per inserted row, with a lookup routed through the
-- partitions of backtest_runs: about a third of the database's time in an ingest. The
-- ingest's upserts now lock each page's runs in one join (FOR KEY SHARE, as the key's
-- check did), so a run deleted meanwhile is not written; and the trigger below removes
-- the KB rows of deleted runs (a deleted workspace's too: its runs cascade here) as the
-- keys' ON DELETE CASCADE did. The workspace keys were implied by the run keys.
-- kb_status_history keeps its keys: deleting a workspace must remove its history before
-- its backfill runs, whose removal would otherwise set a column of that append-only table.
ALTER TABLE kb_trials DROP CONSTRAINT kb_trials_workspace_id_fkey,
                      DROP CONSTRAINT kb_trials_source_run_id_fkey;
ALTER TABLE kb_evidence DROP CONSTRAINT kb_evidence_workspace_id_fkey,
                        DROP CONSTRAINT kb_evidence_source_run_id_fkey;

-- Per row, as the keys' cascade was: a statement trigger's table of deleted rows would
-- hold every column of every run, of a whole workspace when one is deleted.
CREATE FUNCTION kb_rows_of_deleted_run() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM kb_trials WHERE workspace_id = OLD.workspace_id AND source_run_id = OLD.id;
    DELETE FROM kb_evidence WHERE workspace_id = OLD.workspace_id AND source_run_id = OLD.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER backtest_runs_deleted AFTER DELETE ON backtest_runs
    FOR EACH ROW EXECUTE FUNCTION kb_rows_of_deleted_run();

-- TRUNCATE of every run (with CASCADE: kb_status_history still references them) empties
-- the KB tables too.
CREATE FUNCTION kb_rows_of_truncated_runs() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE kb_trials, kb_evidence;
    RETURN NULL;
END;
$$;

CREATE TRIGGER backtest_runs_truncated AFTER TRUNCATE ON backtest_runs
    FOR EACH STATEMENT EXECUTE FUNCTION kb_rows_of_truncated_runs();
