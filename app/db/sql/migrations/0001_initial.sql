-- Run store, status history, backfill ledger and KB trials.

CREATE TABLE workspaces (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE backtest_runs (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id          uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    created_at            timestamptz NOT NULL DEFAULT now(),
    started_at            timestamptz,
    completed_at          timestamptz,
    run_kind              text NOT NULL,
    status                text NOT NULL DEFAULT 'pending',
    strategy_name         text,
    experiment_type       text,
    params                jsonb NOT NULL DEFAULT '{}'::jsonb,
    dataset_meta          jsonb NOT NULL DEFAULT '{}'::jsonb,
    summary               jsonb,
    trade_count           integer,
    kb_status             text NOT NULL DEFAULT 'excluded',
    kb_status_changed_at  timestamptz,
    kb_status_changed_by  text,
    kb_status_reason      text,
    auto_candidate_gate   text,
    regime_is             jsonb,
    regime_oos            jsonb,
    regime_schema_version text,
    CONSTRAINT backtest_runs_run_kind_check
        CHECK (run_kind IN ('backtest', 'tune_variant', 'test_variant')),
    -- 'success' is the legacy spelling of 'completed' still found in old rows.
    CONSTRAINT backtest_runs_status_check
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'skipped', 'success')),
    CONSTRAINT backtest_runs_kb_status_check
        CHECK (kb_status IN ('excluded', 'candidate', 'promoted', 'rejected')),
    CONSTRAINT backtest_runs_trade_count_check CHECK (trade_count IS NULL OR trade_count >= 0)
);

CREATE INDEX backtest_runs_workspace_created_idx
    ON backtest_runs (workspace_id, created_at, id);

-- Serves the backfill-candidacy scan: keyset on (created_at, id) over the plan's selection.
CREATE INDEX backtest_runs_candidacy_scan_idx
    ON backtest_runs (workspace_id, created_at, id)
    WHERE run_kind = 'test_variant' AND status IN ('completed', 'success') AND kb_status = 'excluded';

-- Serves the backfill-regime scan, with and without the symbol filter.
CREATE INDEX backtest_runs_regime_scan_idx
    ON backtest_runs (workspace_id, created_at, id)
    WHERE run_kind = 'test_variant' AND status IN ('completed', 'success') AND regime_oos IS NULL;

CREATE INDEX backtest_runs_regime_symbol_scan_idx
    ON backtest_runs (workspace_id, (dataset_meta ->> 'symbol'), created_at, id)
    WHERE run_kind = 'test_variant' AND status IN ('completed', 'success') AND regime_oos IS NULL;

-- Serves ingest: the KB-eligible runs of a workspace.
CREATE INDEX backtest_runs_kb_eligible_idx
    ON backtest_runs (workspace_id, created_at, id)
    WHERE kb_status IN ('candidate', 'promoted');

CREATE TABLE kb_backfill_runs (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id   uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    kind           text NOT NULL,
    config         jsonb NOT NULL,
    config_key     text NOT NULL,
    dry_run        boolean NOT NULL,
    status         text NOT NULL DEFAULT 'running',
    cursor_created_at timestamptz,
    cursor_id      uuid,
    counts         jsonb NOT NULL DEFAULT '{}'::jsonb,
    started_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    invocations    integer NOT NULL DEFAULT 1,
    pid            integer,
    error          text,
    CONSTRAINT kb_backfill_runs_kind_check CHECK (kind IN ('candidacy', 'regime', 'undo')),
    CONSTRAINT kb_backfill_runs_status_check
        CHECK (status IN ('running', 'completed', 'limit_reached', 'interrupted', 'failed', 'undone'))
);

CREATE INDEX kb_backfill_runs_lookup_idx
    ON kb_backfill_runs (workspace_id, kind, config_key, dry_run, started_at DESC);

CREATE TABLE kb_status_history (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           uuid NOT NULL REFERENCES backtest_runs (id) ON DELETE CASCADE,
    workspace_id     uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    from_status      text,
    to_status        text NOT NULL,
    actor            text NOT NULL,
    reason           text,
    backfill_run_id  uuid REFERENCES kb_backfill_runs (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT kb_status_history_to_status_check
        CHECK (to_status IN ('excluded', 'candidate', 'promoted', 'rejected')),
    CONSTRAINT kb_status_history_from_status_check
        CHECK (from_status IS NULL OR from_status IN ('excluded', 'candidate', 'promoted', 'rejected'))
);

CREATE INDEX kb_status_history_run_idx ON kb_status_history (run_id, id);
CREATE INDEX kb_status_history_backfill_idx ON kb_status_history (backfill_run_id) WHERE backfill_run_id IS NOT NULL;

-- History is append-only: corrections are new rows, never edits.
CREATE FUNCTION kb_status_history_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'kb_status_history is append-only';
END;
$$;

CREATE TRIGGER kb_status_history_no_update
    BEFORE UPDATE ON kb_status_history
    FOR EACH ROW EXECUTE FUNCTION kb_status_history_append_only();

CREATE TABLE kb_trials (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id     uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    source_run_id    uuid NOT NULL REFERENCES backtest_runs (id) ON DELETE CASCADE,
    strategy_name    text NOT NULL,
    symbol           text,
    timeframe        text,
    experiment_type  text,
    params           jsonb NOT NULL,
    sharpe           double precision,
    return_frac      double precision,
    max_dd_frac      double precision,
    win_rate         double precision,
    profit_factor    double precision,
    n_trades         integer,
    regime_features  double precision[],
    regime_tags      text[] NOT NULL DEFAULT '{}',
    regime_ts_end    timestamptz,
    kb_status        text NOT NULL,
    content_hash     text NOT NULL,
    ingested_at      timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    archived_at      timestamptz,
    CONSTRAINT kb_trials_kb_status_check CHECK (kb_status IN ('candidate', 'promoted')),
    CONSTRAINT kb_trials_source_run_key UNIQUE (workspace_id, source_run_id)
);

CREATE INDEX kb_trials_active_strategy_idx
    ON kb_trials (workspace_id, strategy_name) WHERE archived_at IS NULL;

-- Bumped by every ingest that changes a workspace's trials; recommend() caches per revision.
CREATE TABLE kb_trial_revisions (
    workspace_id  uuid PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    revision      bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
