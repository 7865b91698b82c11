-- The nested walk-forward check of a strategy's evidence, stored per KB revision and evidence
-- scope, so a `kb recommend` process reads it instead of replaying history.
CREATE TABLE kb_walkforward (
    workspace_id   uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    strategy_name  text NOT NULL,
    scope_key      text NOT NULL,
    revision       bigint NOT NULL,
    model          jsonb NOT NULL,
    summary        jsonb NOT NULL,
    computed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, strategy_name, scope_key)
);
