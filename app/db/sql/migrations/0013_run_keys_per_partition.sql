-- The run keys of kb_trials and kb_evidence, checked partition to partition.
--
-- Both tables name their run by (workspace_id, source_run_id), NOT NULL. A foreign key to
-- the partitioned backtest_runs ran its check on every inserted row through the parent,
-- routed to a partition each time: about 20 us a row, a quarter of the database's time in
-- an ingest. The three tables are partitioned alike (hash of workspace_id, migration
-- 0011), so partition i of kb_trials and of kb_evidence holds runs of partition i of
-- backtest_runs only: each partition now references its run partition directly, with
-- the same ON DELETE CASCADE (about 11 us a row). The workspace keys go: the run keys
-- imply them (the run references its workspace, which cascades to the runs).
ALTER TABLE kb_trials DROP CONSTRAINT kb_trials_workspace_id_fkey,
                      DROP CONSTRAINT kb_trials_source_run_id_fkey;
ALTER TABLE kb_evidence DROP CONSTRAINT kb_evidence_workspace_id_fkey,
                        DROP CONSTRAINT kb_evidence_source_run_id_fkey;

DO $$
DECLARE
    pair record;
    made integer := 0;
BEGIN
    FOR pair IN
        SELECT kb.relname AS kb_partition, runs.relname AS run_partition
        FROM pg_inherits kb_link
        JOIN pg_class kb ON kb.oid = kb_link.inhrelid
        JOIN pg_inherits run_link ON run_link.inhparent = 'backtest_runs'::regclass
        JOIN pg_class runs ON runs.oid = run_link.inhrelid
        WHERE kb_link.inhparent IN ('kb_trials'::regclass, 'kb_evidence'::regclass)
          AND pg_get_expr(kb.relpartbound, kb.oid) = pg_get_expr(runs.relpartbound, runs.oid)
    LOOP
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I FOREIGN KEY (workspace_id, source_run_id) '
                       'REFERENCES %I (workspace_id, id) ON DELETE CASCADE',
                       pair.kb_partition, pair.kb_partition || '_run_fkey', pair.run_partition);
        -- A cascade deletes from the partition itself, which the parent's statement
        -- trigger does not see: the partition moves the revisions (migration 0009) too.
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS gone '
                       'FOR EACH STATEMENT EXECUTE FUNCTION kb_bump_revision_after_delete()',
                       pair.kb_partition || '_deleted', pair.kb_partition);
        made := made + 1;
    END LOOP;
    IF made <> (SELECT count(*) FROM pg_inherits
                WHERE inhparent IN ('kb_trials'::regclass, 'kb_evidence'::regclass)) THEN
        RAISE EXCEPTION 'a partition of kb_trials or kb_evidence has no backtest_runs partition of the same bounds';
    END IF;
END;
$$;
