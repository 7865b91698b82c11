-- KB revisions come from one sequence, so a revision number is never reused: not after
-- a workspace is deleted and made again, nor by two workspaces. Deleting trials or
-- evidence (directly, or by deleting their runs) moves the revision too, so a running
-- server never answers from trials that are gone.
CREATE SEQUENCE kb_revision_seq;
SELECT setval('kb_revision_seq', greatest(1, coalesce((SELECT max(revision) FROM kb_trial_revisions), 0) + 1), false);

CREATE FUNCTION kb_bump_revision_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kb_trial_revisions (workspace_id, revision, updated_at)
    SELECT g.workspace_id, nextval('kb_revision_seq'), now()
    FROM (SELECT DISTINCT workspace_id FROM gone) g
    WHERE EXISTS (SELECT 1 FROM workspaces w WHERE w.id = g.workspace_id)
    ON CONFLICT (workspace_id) DO UPDATE SET revision = EXCLUDED.revision, updated_at = now();
    RETURN NULL;
END
$$;

CREATE TRIGGER kb_trials_deleted AFTER DELETE ON kb_trials
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION kb_bump_revision_after_delete();
CREATE TRIGGER kb_evidence_deleted AFTER DELETE ON kb_evidence
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION kb_bump_revision_after_delete();
