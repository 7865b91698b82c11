-- The tables that grow with runs are hash-partitioned by workspace_id (16 partitions):
-- a workspace's rows live in one partition, so every query (each filters on its
-- workspace) reads one partition. Every unique key includes workspace_id, which is the
-- rule a distributed PostgreSQL (Citus) applies to its distribution column, and rows
-- refer to runs by (workspace_id, run id). Migrated in place: new tables are made, the
-- rows copied, the old tables dropped and the new ones take their names.

CREATE TABLE backtest_runs_p (LIKE backtest_runs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY HASH (workspace_id);
CREATE TABLE kb_status_history_p (LIKE kb_status_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY HASH (workspace_id);
ALTER TABLE kb_status_history_p ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
CREATE TABLE kb_trials_p (LIKE kb_trials INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY HASH (workspace_id);
CREATE TABLE kb_evidence_p (LIKE kb_evidence INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY HASH (workspace_id);

DO $$
DECLARE
    t text;
    i int;
BEGIN
    FOREACH t IN ARRAY ARRAY['backtest_runs', 'kb_status_history', 'kb_trials', 'kb_evidence'] LOOP
        FOR i IN 0..15 LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
                           t || '_' || lpad(i::text, 2, '0'), t || '_p', i);
        END LOOP;
    END LOOP;
END
$$;

INSERT INTO backtest_runs_p SELECT * FROM backtest_runs;
INSERT INTO kb_status_history_p OVERRIDING SYSTEM VALUE SELECT * FROM kb_status_history;
INSERT INTO kb_trials_p SELECT * FROM kb_trials;
INSERT INTO kb_evidence_p SELECT * FROM kb_evidence;
SELECT setval(pg_get_serial_sequence('kb_status_history_p', 'id'),
              greatest(1, coalesce((SELECT max(id) FROM kb_status_history), 0)), (SELECT count(*) > 0 FROM kb_status_history));

DROP TABLE kb_status_history, kb_trials, kb_evidence, backtest_runs;
ALTER TABLE backtest_runs_p RENAME TO backtest_runs;
ALTER TABLE kb_status_history_p RENAME TO kb_status_history;
ALTER TABLE kb_trials_p RENAME TO kb_trials;
ALTER TABLE kb_evidence_p RENAME TO kb_evidence;
ALTER SEQUENCE kb_status_history_p_id_seq RENAME TO kb_status_history_id_seq;

-- Keys: each includes the partition key.
ALTER TABLE backtest_runs ADD CONSTRAINT backtest_runs_pkey PRIMARY KEY (workspace_id, id);
ALTER TABLE kb_status_history ADD CONSTRAINT kb_status_history_pkey PRIMARY KEY (workspace_id, id);
ALTER TABLE kb_trials ADD CONSTRAINT kb_trials_pkey PRIMARY KEY (workspace_id, id);
ALTER TABLE kb_trials ADD CONSTRAINT kb_trials_source_run_key UNIQUE (workspace_id, source_run_id);
ALTER TABLE kb_evidence ADD CONSTRAINT kb_evidence_pkey PRIMARY KEY (workspace_id, source_run_id);

ALTER TABLE backtest_runs ADD CONSTRAINT backtest_runs_workspace_id_fkey
    FOREIGN KEY (workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE;
ALTER TABLE kb_status_history ADD CONSTRAINT kb_status_history_workspace_id_fkey
    FOREIGN KEY (workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE;
ALTER TABLE kb_status_history ADD CONSTRAINT kb_status_history_run_id_fkey
    FOREIGN KEY (workspace_id, run_id) REFERENCES backtest_runs (workspace_id, id) ON DELETE CASCADE;
ALTER TABLE kb_status_history ADD CONSTRAINT kb_status_history_backfill_run_id_fkey
    FOREIGN KEY (backfill_run_id) REFERENCES kb_backfill_runs (id) ON DELETE SET NULL;
ALTER TABLE kb_trials ADD CONSTRAINT kb_trials_workspace_id_fkey
    FOREIGN KEY (workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE;
ALTER TABLE kb_trials ADD CONSTRAINT kb_trials_source_run_id_fkey
    FOREIGN KEY (workspace_id, source_run_id) REFERENCES backtest_runs (workspace_id, id) ON DELETE CASCADE;
ALTER TABLE kb_evidence ADD CONSTRAINT kb_evidence_workspace_id_fkey
    FOREIGN KEY (workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE;
ALTER TABLE kb_evidence ADD CONSTRAINT kb_evidence_source_run_id_fkey
    FOREIGN KEY (workspace_id, source_run_id) REFERENCES backtest_runs (workspace_id, id) ON DELETE CASCADE;

-- The indexes as before (each now one per partition).
CREATE INDEX backtest_runs_workspace_created_idx ON backtest_runs (workspace_id, created_at, id);
CREATE INDEX backtest_runs_candidacy_scan_idx ON backtest_runs (workspace_id, created_at, id)
    WHERE run_kind = 'test_variant' AND status IN ('completed', 'success') AND kb_status = 'excluded';
CREATE INDEX backtest_runs_regime_scan_idx ON backtest_runs (workspace_id, created_at, id)
    WHERE run_kind = 'test_variant' AND status IN ('completed', 'success') AND regime_oos IS NULL;
CREATE INDEX backtest_runs_regime_symbol_scan_idx
    ON backtest_runs (workspace_id, (upper(btrim(dataset_meta ->> 'symbol'))), created_at, id)
    WHERE run_kind = 'test_variant' AND status IN ('completed', 'success') AND regime_oos IS NULL;
CREATE INDEX backtest_runs_kb_eligible_idx ON backtest_runs (workspace_id, created_at, id)
    WHERE kb_status IN ('candidate', 'promoted');
CREATE INDEX backtest_runs_ingest_scan_idx ON backtest_runs (workspace_id, created_at, id)
    WHERE status IN ('completed', 'success')
      AND (kb_status IN ('candidate', 'promoted') OR (run_kind = 'test_variant' AND regime_oos IS NOT NULL));
CREATE UNIQUE INDEX backtest_runs_import_key ON backtest_runs (workspace_id, import_source, import_source_id)
    WHERE import_source IS NOT NULL;
CREATE INDEX backtest_runs_changed_idx ON backtest_runs (workspace_id, kb_xid, id);

CREATE INDEX kb_status_history_run_idx ON kb_status_history (workspace_id, run_id, id);
CREATE INDEX kb_status_history_backfill_idx ON kb_status_history (workspace_id, backfill_run_id)
    WHERE backfill_run_id IS NOT NULL;

CREATE INDEX kb_trials_active_strategy_idx ON kb_trials (workspace_id, strategy_name) WHERE archived_at IS NULL;
CREATE INDEX kb_trials_change_idx ON kb_trials (workspace_id, strategy_name, change_revision)
    WHERE archived_at IS NULL;
CREATE INDEX kb_trials_awaiting_dsr_idx ON kb_trials (workspace_id) WHERE archived_at IS NULL AND dsr_inputs IS NULL;

CREATE INDEX kb_evidence_change_idx ON kb_evidence (workspace_id, strategy_name, change_revision);
CREATE INDEX kb_evidence_window_idx ON kb_evidence (workspace_id, strategy_name, oos_start, oos_end, symbol, timeframe);

-- The triggers as before.
CREATE TRIGGER backtest_runs_changed BEFORE UPDATE ON backtest_runs
    FOR EACH ROW EXECUTE FUNCTION backtest_runs_stamp_xid();
CREATE TRIGGER kb_status_history_no_update BEFORE UPDATE ON kb_status_history
    FOR EACH ROW EXECUTE FUNCTION kb_status_history_append_only();
CREATE TRIGGER kb_trials_deleted AFTER DELETE ON kb_trials
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION kb_bump_revision_after_delete();
CREATE TRIGGER kb_evidence_deleted AFTER DELETE ON kb_evidence
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION kb_bump_revision_after_delete();

ANALYZE backtest_runs, kb_status_history, kb_trials, kb_evidence;
