-- The process invocation that owns a running backfill row: every ledger write is
-- guarded by it, so a process that lost its lock never writes the row again.
ALTER TABLE kb_backfill_runs ADD COLUMN owner uuid;

-- Ex-ante regime: the trailing bars that end just before the OOS window starts.
ALTER TABLE backtest_runs ADD COLUMN regime_pre jsonb;

-- Evidence for recommend(): every completed test variant with a regime, whatever its
-- kb_status, so a parameter set's failures count as much as its successes.
CREATE TABLE kb_evidence (
    workspace_id     uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    source_run_id    uuid NOT NULL REFERENCES backtest_runs (id) ON DELETE CASCADE,
    strategy_name    text NOT NULL,
    symbol           text,
    timeframe        text,
    params           jsonb NOT NULL,
    sharpe           double precision,
    n_trades         bigint,
    oos_start        timestamptz,
    oos_end          timestamptz,
    pre_features     double precision[],
    oos_features     double precision[],
    pre_tags         text[] NOT NULL DEFAULT '{}',
    oos_tags         text[] NOT NULL DEFAULT '{}',
    eligible         boolean NOT NULL,
    content_hash     text NOT NULL,
    CONSTRAINT kb_evidence_pkey PRIMARY KEY (workspace_id, source_run_id)
);

CREATE INDEX kb_evidence_strategy_idx ON kb_evidence (workspace_id, strategy_name);

-- Trials keep the ex-ante snapshot beside the OOS one.
ALTER TABLE kb_trials ADD COLUMN regime_pre_features double precision[];
ALTER TABLE kb_trials ADD COLUMN regime_pre_tags text[] NOT NULL DEFAULT '{}';
-- Trade counts beyond 32 bits are refused per row by ingest; the column holds what the gate accepts.
ALTER TABLE kb_trials ALTER COLUMN n_trades TYPE bigint;

-- Serves ingest's one pass over trials and evidence, keyset on (created_at, id).
CREATE INDEX backtest_runs_ingest_scan_idx
    ON backtest_runs (workspace_id, created_at, id)
    WHERE status IN ('completed', 'success')
      AND (kb_status IN ('candidate', 'promoted') OR (run_kind = 'test_variant' AND regime_oos IS NOT NULL));
