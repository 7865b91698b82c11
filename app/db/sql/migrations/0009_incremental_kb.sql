-- Incremental KB: what changed since the last ingest, and what changed since a cached matrix.

-- Every insert or update of a run stamps it with its transaction's 64-bit id. An ingest
-- keeps the snapshot it read under; the next one reads only the runs whose transaction
-- that snapshot did not see (committed later), so a run written while an ingest ran is
-- never skipped. Rows from before this migration have no stamp: a workspace's first
-- ingest after it reads everything.
ALTER TABLE backtest_runs ADD COLUMN kb_xid xid8;
ALTER TABLE backtest_runs ALTER COLUMN kb_xid SET DEFAULT pg_current_xact_id();

CREATE FUNCTION backtest_runs_stamp_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.kb_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;

CREATE TRIGGER backtest_runs_changed BEFORE UPDATE ON backtest_runs
    FOR EACH ROW EXECUTE FUNCTION backtest_runs_stamp_xid();

CREATE INDEX backtest_runs_changed_idx ON backtest_runs (workspace_id, kb_xid, id);

CREATE TABLE kb_ingest_state (
    workspace_id  uuid PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    snapshot      pg_snapshot NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now()
);

-- A revision per (workspace, strategy). Rows written by one KB transaction carry its
-- revision (`change_revision`); writers of a workspace are serialised on its
-- kb_trial_revisions row, so revisions follow commit order and a cache at revision R
-- adds exactly the rows in (R, now]. `reset_revision` is the last revision that changed
-- or removed rows already there: a cache older than it is rebuilt, not appended to.
CREATE TABLE kb_strategy_revisions (
    workspace_id    uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    strategy_name   text NOT NULL,
    revision        bigint NOT NULL,
    reset_revision  bigint NOT NULL,
    PRIMARY KEY (workspace_id, strategy_name)
);

ALTER TABLE kb_trials ADD COLUMN change_revision bigint NOT NULL DEFAULT 0;
ALTER TABLE kb_evidence ADD COLUMN change_revision bigint NOT NULL DEFAULT 0;

-- The delta loads; the evidence one also serves full loads (it starts with the old index's columns).
CREATE INDEX kb_trials_change_idx ON kb_trials (workspace_id, strategy_name, change_revision)
    WHERE archived_at IS NULL;
CREATE INDEX kb_evidence_change_idx ON kb_evidence (workspace_id, strategy_name, change_revision);
-- The evidence of one window (the DSR of the trials an ingest touched); it also serves the
-- full loads that the old strategy index served.
CREATE INDEX kb_evidence_window_idx ON kb_evidence (workspace_id, strategy_name, oos_start, oos_end, symbol, timeframe);
DROP INDEX kb_evidence_strategy_idx;
-- The trials whose DSR was never computed (an ingest finishes them): normally none.
CREATE INDEX kb_trials_awaiting_dsr_idx ON kb_trials (workspace_id) WHERE archived_at IS NULL AND dsr_inputs IS NULL;

INSERT INTO kb_strategy_revisions (workspace_id, strategy_name, revision, reset_revision)
SELECT s.workspace_id, s.strategy_name, r.revision, r.revision
FROM (SELECT workspace_id, strategy_name FROM kb_trials
      UNION SELECT workspace_id, strategy_name FROM kb_evidence) s
JOIN kb_trial_revisions r USING (workspace_id);

-- Deleting trials or evidence (directly, or by deleting their runs) resets their
-- strategies, after taking the workspace's writer lock like an ingest does.
CREATE OR REPLACE FUNCTION kb_bump_revision_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rev bigint;
BEGIN
    PERFORM 1 FROM kb_trial_revisions r
    WHERE r.workspace_id IN (SELECT DISTINCT workspace_id FROM gone)
    ORDER BY r.workspace_id FOR UPDATE;
    rev := nextval('kb_revision_seq');
    INSERT INTO kb_trial_revisions (workspace_id, revision, updated_at)
    SELECT g.workspace_id, rev, now()
    FROM (SELECT DISTINCT workspace_id FROM gone) g
    WHERE EXISTS (SELECT 1 FROM workspaces w WHERE w.id = g.workspace_id)
    ON CONFLICT (workspace_id) DO UPDATE SET revision = EXCLUDED.revision, updated_at = now();
    INSERT INTO kb_strategy_revisions (workspace_id, strategy_name, revision, reset_revision)
    SELECT g.workspace_id, g.strategy_name, rev, rev
    FROM (SELECT DISTINCT workspace_id, strategy_name FROM gone) g
    WHERE EXISTS (SELECT 1 FROM workspaces w WHERE w.id = g.workspace_id)
    ON CONFLICT (workspace_id, strategy_name) DO UPDATE SET revision = rev, reset_revision = rev;
    RETURN NULL;
END
$$;
