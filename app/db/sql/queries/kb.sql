-- name: select_ingest_page
-- One pass for trials (candidate and promoted runs) and performance evidence (every
-- completed test variant with a regime, whatever its kb_status).
SELECT id, created_at, run_kind, status, strategy_name, experiment_type, kb_status, trade_count,
       params::text AS params, dataset_meta::text AS dataset_meta, summary::text AS summary,
       regime_oos::text AS regime_oos, regime_pre::text AS regime_pre
FROM backtest_runs
WHERE workspace_id = $1
  AND status IN ('completed', 'success')
  AND (kb_status IN ('candidate', 'promoted') OR (run_kind = 'test_variant' AND regime_oos IS NOT NULL))
  AND (created_at, id) > ($2::timestamptz, $3::uuid)
ORDER BY created_at, id
LIMIT $4

-- name: select_changed_runs_page
-- The runs written by transactions the snapshot $2 did not see (committed after the last
-- ingest read under it), whatever their status: a run that left the KB is among them.
-- Ordered by the column, not by the text of it the select list shows (text order differs
-- from transaction order: '10000' < '9999'), and the keyset starts at the snapshot's xmin.
SELECT id, created_at, run_kind, status, strategy_name, experiment_type, kb_status, trade_count,
       params::text AS params, dataset_meta::text AS dataset_meta, summary::text AS summary,
       regime_oos::text AS regime_oos, regime_pre::text AS regime_pre, kb_xid::text AS kb_xid
FROM backtest_runs
WHERE workspace_id = $1
  AND kb_xid >= pg_snapshot_xmin($2::text::pg_snapshot)
  AND NOT pg_visible_in_snapshot(kb_xid, $2::text::pg_snapshot)
  AND (kb_xid, id) > ($3::text::xid8, $4::uuid)
ORDER BY backtest_runs.kb_xid, backtest_runs.id
LIMIT $5

-- name: current_snapshot
SELECT pg_current_snapshot()::text

-- name: ingest_snapshot
SELECT snapshot::text FROM kb_ingest_state WHERE workspace_id = $1

-- name: save_ingest_snapshot
INSERT INTO kb_ingest_state (workspace_id, snapshot, ingested_at) VALUES ($1, $2::text::pg_snapshot, now())
ON CONFLICT (workspace_id) DO UPDATE SET snapshot = EXCLUDED.snapshot, ingested_at = now()

-- name: runs_still_there
-- Which of these runs ($2) the workspace still holds (an ingest's page read before a delete).
SELECT id FROM backtest_runs WHERE workspace_id = $1 AND id = ANY($2::uuid[])

-- name: existing_trial_hashes
SELECT source_run_id, content_hash, archived_at IS NOT NULL AS archived
FROM kb_trials
WHERE workspace_id = $1 AND source_run_id = ANY($2::uuid[])

-- name: upsert_trials
-- Inserts new trials, updates changed (or archived) ones; unchanged rows are skipped
-- by the WHERE on the conflict branch and so are not returned. Each returned row says
-- whether it was new and which strategy it belonged to before ($22: the write's revision).
-- dsr_inputs is written by an insert only (a trial without an evidence window is stored
-- evaluated); a changed trial's DSR is recomputed after the pass.
WITH before AS (
    -- One key lookup per run (LATERAL): a bulk load into a fresh table is planned on stale
    -- statistics, and a scan of the workspace's rows per page would grow with the table
    -- (LIMIT 1 of a unique key: keeps the subquery a lookup the planner cannot flatten).
    SELECT b.source_run_id, k.strategy_name
    FROM unnest($2::uuid[]) AS b(source_run_id)
    CROSS JOIN LATERAL (SELECT strategy_name FROM kb_trials
                        WHERE workspace_id = $1 AND source_run_id = b.source_run_id LIMIT 1) k
), written AS (
    INSERT INTO kb_trials AS t (workspace_id, source_run_id, strategy_name, symbol, timeframe, experiment_type,
                                params, sharpe, return_frac, max_dd_frac, win_rate, profit_factor, n_trades,
                                regime_features, regime_tags, regime_ts_end, kb_status, content_hash,
                                regime_pre_features, regime_pre_tags, dsr_inputs, change_revision)
    SELECT $1, u.run_id, u.strategy, u.symbol, u.timeframe, u.experiment_type, u.params::jsonb, u.sharpe,
           u.return_frac, u.max_dd_frac, u.win_rate, u.profit_factor, u.n_trades,
           u.features::float8[], u.tags::text[], u.ts_end, u.kb_status, u.content_hash,
           u.pre_features::float8[], u.pre_tags::text[], u.dsr_inputs::jsonb, $22::bigint
    FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::float8[], $9::float8[],
                $10::float8[], $11::float8[], $12::float8[], $13::bigint[], $14::text[], $15::text[], $16::timestamptz[],
                $17::text[], $18::text[], $19::text[], $20::text[], $21::text[])
         AS u(run_id, strategy, symbol, timeframe, experiment_type, params, sharpe, return_frac, max_dd_frac,
              win_rate, profit_factor, n_trades, features, tags, ts_end, kb_status, content_hash, pre_features,
              pre_tags, dsr_inputs)
    ON CONFLICT (workspace_id, source_run_id) DO UPDATE
    SET strategy_name = EXCLUDED.strategy_name, symbol = EXCLUDED.symbol, timeframe = EXCLUDED.timeframe,
        experiment_type = EXCLUDED.experiment_type, params = EXCLUDED.params, sharpe = EXCLUDED.sharpe,
        return_frac = EXCLUDED.return_frac, max_dd_frac = EXCLUDED.max_dd_frac, win_rate = EXCLUDED.win_rate,
        profit_factor = EXCLUDED.profit_factor, n_trades = EXCLUDED.n_trades,
        regime_features = EXCLUDED.regime_features, regime_tags = EXCLUDED.regime_tags,
        regime_ts_end = EXCLUDED.regime_ts_end, kb_status = EXCLUDED.kb_status,
        regime_pre_features = EXCLUDED.regime_pre_features, regime_pre_tags = EXCLUDED.regime_pre_tags,
        content_hash = EXCLUDED.content_hash, updated_at = now(), archived_at = NULL,
        change_revision = EXCLUDED.change_revision
    WHERE t.content_hash IS DISTINCT FROM EXCLUDED.content_hash OR t.archived_at IS NOT NULL
    RETURNING source_run_id, strategy_name, dsr_inputs IS NOT NULL AS evaluated
)
-- New: not there before (writers of a workspace take turns: see begin_kb_write).
SELECT b.source_run_id IS NULL AS inserted, w.strategy_name, b.strategy_name AS old_strategy, w.evaluated
FROM written w LEFT JOIN before b USING (source_run_id)

-- name: archive_stale_trials
-- Trials whose run left the KB (rejected, undone, no longer completed); $2: only these
-- runs (NULL: every run of the workspace). Returns the strategy of each archived trial.
UPDATE kb_trials t
SET archived_at = now(), updated_at = now()
FROM backtest_runs r
WHERE t.workspace_id = $1
  AND t.archived_at IS NULL
  AND ($2::uuid[] IS NULL OR t.source_run_id = ANY($2::uuid[]))
  AND r.workspace_id = $1 AND r.id = t.source_run_id
  AND (r.kb_status NOT IN ('candidate', 'promoted') OR r.status NOT IN ('completed', 'success'))
RETURNING t.strategy_name

-- name: count_stale_trials
SELECT count(*)
FROM kb_trials t JOIN backtest_runs r ON r.workspace_id = t.workspace_id AND r.id = t.source_run_id
WHERE t.workspace_id = $1 AND t.archived_at IS NULL
  AND (r.kb_status NOT IN ('candidate', 'promoted') OR r.status NOT IN ('completed', 'success'))

-- name: begin_kb_write
-- Serialises a workspace's KB writers (the row lock lasts until commit) and returns the
-- revision this write stamps on its rows: revisions follow commit order.
INSERT INTO kb_trial_revisions AS r (workspace_id, revision, updated_at) VALUES ($1, 0, now())
ON CONFLICT (workspace_id) DO UPDATE SET revision = r.revision
RETURNING nextval('kb_revision_seq') AS revision

-- name: bump_trial_revision
-- $2: the write's revision (from begin_kb_write).
UPDATE kb_trial_revisions SET revision = greatest(revision, $2::bigint), updated_at = now() WHERE workspace_id = $1

-- name: bump_strategy_revisions
-- The strategies a write changed move to its revision; those in $4 (rows already there
-- changed or left) also reset: a cached matrix older than that is rebuilt. A strategy with
-- no row yet (new, or its workspace deleted and made again) starts reset: a matrix cached
-- before is of rows that are gone.
INSERT INTO kb_strategy_revisions AS s (workspace_id, strategy_name, revision, reset_revision)
SELECT $1, u.strategy, $2::bigint, $2::bigint
FROM unnest($3::text[]) AS u(strategy)
ON CONFLICT (workspace_id, strategy_name) DO UPDATE
SET revision = greatest(s.revision, EXCLUDED.revision),
    reset_revision = CASE WHEN s.strategy_name = ANY($4::text[]) THEN EXCLUDED.revision ELSE s.reset_revision END

-- name: strategy_revision
SELECT revision, reset_revision FROM kb_strategy_revisions WHERE workspace_id = $1 AND strategy_name = $2

-- name: load_trials
-- Active trials of a strategy written after revision $3 (-1: all of them).
SELECT id, source_run_id, symbol, timeframe, regime_features, regime_tags, sharpe, return_frac, max_dd_frac,
       n_trades, kb_status, params::text AS params
FROM kb_trials
WHERE workspace_id = $1 AND strategy_name = $2 AND archived_at IS NULL AND change_revision > $3

-- name: trial_details
-- What an answer shows of its supporting trials beyond the cached matrix: the DSR, which
-- every ingest may recompute.
SELECT id, dsr FROM kb_trials WHERE workspace_id = $1 AND id = ANY($2::uuid[])

-- name: status_runs_by_kb_status
SELECT kb_status, count(*) AS n, count(*) FILTER (WHERE regime_oos IS NOT NULL) AS with_regime
FROM backtest_runs WHERE workspace_id = $1 GROUP BY kb_status

-- name: status_eligible_by_strategy
SELECT COALESCE(strategy_name, '(none)') AS strategy, count(*) AS n
FROM backtest_runs
WHERE workspace_id = $1 AND kb_status IN ('candidate', 'promoted') AND status IN ('completed', 'success')
GROUP BY 1 ORDER BY 1

-- name: status_trials_by_strategy
SELECT strategy_name AS strategy, count(*) AS n
FROM kb_trials WHERE workspace_id = $1 AND archived_at IS NULL
GROUP BY 1 ORDER BY 1

-- name: status_archived_trials
SELECT count(*) FROM kb_trials WHERE workspace_id = $1 AND archived_at IS NOT NULL

-- name: upsert_evidence
-- Inserts or updates evidence rows (unchanged ones are skipped); as upsert_trials, each
-- returned row says whether it was new and its strategy before ($17: the write's revision).
WITH before AS (
    -- One key lookup per run (LATERAL): a bulk load into a fresh table is planned on stale
    -- statistics, and a scan of the workspace's rows per page would grow with the table
    -- (LIMIT 1 of a unique key: keeps the subquery a lookup the planner cannot flatten).
    SELECT b.source_run_id, k.strategy_name
    FROM unnest($2::uuid[]) AS b(source_run_id)
    CROSS JOIN LATERAL (SELECT strategy_name FROM kb_evidence
                        WHERE workspace_id = $1 AND source_run_id = b.source_run_id LIMIT 1) k
), written AS (
    INSERT INTO kb_evidence AS e (workspace_id, source_run_id, strategy_name, symbol, timeframe, params, sharpe,
                                  n_trades, oos_start, oos_end, pre_features, oos_features, pre_tags, oos_tags,
                                  eligible, content_hash, change_revision)
    SELECT $1, u.run_id, u.strategy, u.symbol, u.timeframe, u.params::jsonb, u.sharpe, u.n_trades, u.oos_start,
           u.oos_end, u.pre_features::float8[], u.oos_features::float8[], u.pre_tags::text[], u.oos_tags::text[],
           u.eligible, u.content_hash, $17::bigint
    FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::float8[], $8::bigint[],
                $9::timestamptz[], $10::timestamptz[], $11::text[], $12::text[], $13::text[], $14::text[],
                $15::bool[], $16::text[])
         AS u(run_id, strategy, symbol, timeframe, params, sharpe, n_trades, oos_start, oos_end, pre_features,
              oos_features, pre_tags, oos_tags, eligible, content_hash)
    ON CONFLICT (workspace_id, source_run_id) DO UPDATE
    SET strategy_name = EXCLUDED.strategy_name, symbol = EXCLUDED.symbol, timeframe = EXCLUDED.timeframe,
        params = EXCLUDED.params, sharpe = EXCLUDED.sharpe, n_trades = EXCLUDED.n_trades,
        oos_start = EXCLUDED.oos_start, oos_end = EXCLUDED.oos_end, pre_features = EXCLUDED.pre_features,
        oos_features = EXCLUDED.oos_features, pre_tags = EXCLUDED.pre_tags, oos_tags = EXCLUDED.oos_tags,
        eligible = EXCLUDED.eligible, content_hash = EXCLUDED.content_hash,
        change_revision = EXCLUDED.change_revision
    WHERE e.content_hash IS DISTINCT FROM EXCLUDED.content_hash
    RETURNING source_run_id, strategy_name
)
SELECT b.source_run_id IS NULL AS inserted, w.strategy_name, b.strategy_name AS old_strategy
FROM written w LEFT JOIN before b USING (source_run_id)

-- name: delete_stale_evidence
-- Evidence whose run no longer qualifies (not completed, or its regime was removed).
-- $2: only these runs (NULL: every run of the workspace).
DELETE FROM kb_evidence e
USING backtest_runs r
WHERE e.workspace_id = $1
  AND ($2::uuid[] IS NULL OR e.source_run_id = ANY($2::uuid[]))
  AND r.workspace_id = $1 AND r.id = e.source_run_id
  AND (r.status NOT IN ('completed', 'success') OR r.regime_oos IS NULL)

-- name: load_evidence
SELECT source_run_id, symbol, timeframe, params::text AS params, sharpe, oos_start, oos_end,
       pre_features, oos_features, pre_tags, oos_tags, eligible
FROM kb_evidence
WHERE workspace_id = $1 AND strategy_name = $2 AND sharpe IS NOT NULL AND change_revision > $3

-- name: trial_window_stats
-- Per active trial: its Sharpe, bar size, bars in its OOS window (from the OOS snapshot),
-- and over every completed run of its strategy on the same window (same symbol, bar size,
-- OOS start and end): how many parameter sets were tried and the variance of their Sharpe.
-- Window functions over one scan of the evidence, then key lookups: no join whose plan
-- depends on statistics a fresh bulk load has not gathered yet.
WITH ranked AS (
    SELECT source_run_id, sharpe, strategy_name, symbol, timeframe, oos_start, oos_end,
           dense_rank() OVER (PARTITION BY strategy_name, symbol, timeframe, oos_start, oos_end
                              ORDER BY params) AS set_rank
    FROM kb_evidence
    WHERE workspace_id = $1 AND oos_start IS NOT NULL
), stats AS (
    SELECT source_run_id, max(set_rank) OVER w AS n_sets, coalesce(var_samp(sharpe) OVER w, 0) AS sharpe_var
    FROM ranked
    WINDOW w AS (PARTITION BY strategy_name, symbol, timeframe, oos_start, oos_end)
)
SELECT t.id, t.sharpe, t.timeframe, t.dsr, t.dsr_inputs IS NOT NULL AS evaluated,
       (r.regime_oos ->> 'n_bars') AS n_bars, s.n_sets, s.sharpe_var
FROM stats s
JOIN kb_trials t ON t.workspace_id = $1 AND t.source_run_id = s.source_run_id AND t.archived_at IS NULL
JOIN backtest_runs r ON r.workspace_id = $1 AND r.id = t.source_run_id

-- name: trial_window_stats_of_runs
-- As trial_window_stats, over the windows of the runs $2 only: each window's evidence
-- found by its key (the window index), so an ingest of a few runs reads a few windows.
WITH touched AS (
    SELECT DISTINCT strategy_name, symbol, timeframe, oos_start, oos_end
    FROM kb_evidence
    WHERE workspace_id = $1 AND source_run_id = ANY($2::uuid[]) AND oos_start IS NOT NULL
), ranked AS (
    SELECT e.source_run_id, e.sharpe, e.strategy_name, e.symbol, e.timeframe, e.oos_start, e.oos_end,
           dense_rank() OVER (PARTITION BY e.strategy_name, e.symbol, e.timeframe, e.oos_start, e.oos_end
                              ORDER BY e.params) AS set_rank
    FROM touched w
    JOIN kb_evidence e ON e.workspace_id = $1 AND e.strategy_name = w.strategy_name
                      AND e.oos_start = w.oos_start AND e.oos_end = w.oos_end
                      AND e.symbol IS NOT DISTINCT FROM w.symbol AND e.timeframe IS NOT DISTINCT FROM w.timeframe
), stats AS (
    SELECT source_run_id, max(set_rank) OVER w AS n_sets, coalesce(var_samp(sharpe) OVER w, 0) AS sharpe_var
    FROM ranked
    WINDOW w AS (PARTITION BY strategy_name, symbol, timeframe, oos_start, oos_end)
)
SELECT t.id, t.sharpe, t.timeframe, t.dsr, t.dsr_inputs IS NOT NULL AS evaluated,
       (r.regime_oos ->> 'n_bars') AS n_bars, s.n_sets, s.sharpe_var
FROM stats s
JOIN kb_trials t ON t.workspace_id = $1 AND t.source_run_id = s.source_run_id AND t.archived_at IS NULL
JOIN backtest_runs r ON r.id = t.source_run_id AND r.workspace_id = $1

-- name: mark_trials_without_dsr
-- Active trials the DSR pass found no window for (no evidence: no regime), of these runs
-- ($3; NULL: all): evaluated, with the reason ($2) as their inputs.
UPDATE kb_trials SET dsr = NULL, dsr_inputs = $2::jsonb
WHERE workspace_id = $1 AND archived_at IS NULL AND dsr_inputs IS NULL
  AND ($3::uuid[] IS NULL OR source_run_id = ANY($3::uuid[]))

-- name: trials_awaiting_dsr
SELECT EXISTS (SELECT 1 FROM kb_trials
               WHERE workspace_id = $1 AND archived_at IS NULL AND dsr_inputs IS NULL)

-- name: update_trial_dsr
UPDATE kb_trials t
SET dsr = u.dsr, dsr_inputs = u.inputs::jsonb
FROM unnest($2::uuid[], $3::float8[], $4::text[]) AS u(id, dsr, inputs)
WHERE t.workspace_id = $1 AND t.id = u.id

-- name: load_walkforward
SELECT revision, model::text AS model, summary::text AS summary
FROM kb_walkforward
WHERE workspace_id = $1 AND strategy_name = $2 AND scope_key = $3

-- name: save_walkforward
-- Keeps the newest revision's check (a slower writer of an older revision does not overwrite it).
INSERT INTO kb_walkforward AS w (workspace_id, strategy_name, scope_key, revision, model, summary)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)
ON CONFLICT (workspace_id, strategy_name, scope_key) DO UPDATE
SET revision = EXCLUDED.revision, model = EXCLUDED.model, summary = EXCLUDED.summary, computed_at = now()
WHERE w.revision <= EXCLUDED.revision

-- name: kb_estimated_rows
-- The planner's row estimate of the evidence table (-1 before it was ever analysed).
SELECT reltuples::bigint FROM pg_class WHERE oid = 'kb_evidence'::regclass

-- name: analyze_kb_tables
-- Fresh statistics after a large ingest, so the queries that follow it plan on real sizes:
-- table sizes, and the columns queries filter, join or group on. Statistics of the array
-- and JSON columns (most of ANALYZE's time) are left to autovacuum.
ANALYZE kb_evidence (workspace_id, source_run_id, strategy_name, symbol, timeframe, oos_start, oos_end, sharpe,
                     eligible, change_revision),
        kb_trials (id, workspace_id, source_run_id, strategy_name, symbol, timeframe, sharpe, kb_status, archived_at,
                   dsr_inputs, change_revision)

-- name: rows_fingerprint
-- A strategy's rows up to revision $3 that a matrix of kind $4 is built from (`trials`: the
-- active trials `load_trials` reads; `evidence`: the rows `load_evidence` reads): how many,
-- a digest (the database's oid, and the sum of a hash of each row's id, revision and
-- content), and the strategy's reset revision (above $3: rows up to $3 changed or left).
WITH source AS (
    SELECT id AS row_id, change_revision, content_hash FROM kb_trials
    WHERE $4::text = 'trials' AND workspace_id = $1 AND strategy_name = $2 AND archived_at IS NULL
      AND change_revision <= $3
    UNION ALL
    SELECT source_run_id, change_revision, content_hash FROM kb_evidence
    WHERE $4::text = 'evidence' AND workspace_id = $1 AND strategy_name = $2 AND sharpe IS NOT NULL
      AND change_revision <= $3
)
SELECT count(*) AS n,
       (SELECT oid FROM pg_database WHERE datname = current_database())::text || ':'
         || coalesce(sum(uuid_hash_extended(row_id, change_revision) # hashtextextended(content_hash, 0)), 0)::text
         AS digest,
       coalesce((SELECT reset_revision FROM kb_strategy_revisions
                 WHERE workspace_id = $1 AND strategy_name = $2), 0) AS reset
FROM source
