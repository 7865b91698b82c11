-- name: ping
SELECT 1

-- name: migrations_table_exists
SELECT to_regclass('schema_migrations') IS NOT NULL

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- name: applied_migrations
SELECT version, name, checksum, applied_at FROM schema_migrations

-- name: record_migration
INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)

-- name: take_migration_lock
-- Any fixed key works; it only has to differ from the backfill locks. Held until the
-- upgrade's transaction ends.
SELECT pg_advisory_xact_lock(7302118001)

-- name: dump_columns
SELECT c.relname AS table_name, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS default_expr,
       (a.attidentity <> '') AS is_identity
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND a.attnum > 0
  AND NOT a.attisdropped
ORDER BY c.relname, a.attnum

-- name: dump_partitioning
-- Partitioned tables: how they are split, and into how many partitions.
SELECT c.relname AS table_name, pg_get_partkeydef(c.oid) AS key,
       (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) AS partitions
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'p'
ORDER BY c.relname

-- name: dump_constraints
SELECT c.relname AS table_name, con.conname, pg_get_constraintdef(con.oid) AS def
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT c.relispartition AND con.conparentid = 0
ORDER BY c.relname, con.conname

-- name: dump_indexes
SELECT i.tablename, i.indexname, i.indexdef FROM pg_indexes i
JOIN pg_class c ON c.relname = i.tablename AND c.relnamespace = 'public'::regnamespace
WHERE i.schemaname = 'public' AND NOT c.relispartition ORDER BY i.tablename, i.indexname

-- name: dump_triggers
SELECT c.relname AS table_name, t.tgname, pg_get_triggerdef(t.oid) AS def
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT t.tgisinternal AND NOT c.relispartition
ORDER BY c.relname, t.tgname

-- name: primary_wal_position
-- On the primary: how far its WAL goes now (everything committed is before it).
SELECT pg_current_wal_lsn()::text

-- name: replayed_past
-- On a replica: whether it has replayed the primary's WAL up to $1 (true on a primary).
SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() >= $1::text::pg_lsn ELSE true END

-- name: embedded_settings
-- The embedded server's settings for KB sizes, once per data directory (app.db.embedded
-- fills in the values; shared_buffers takes effect at the server's next start).
ALTER SYSTEM SET shared_buffers = '{shared_buffers}';
ALTER SYSTEM SET max_wal_size = '{max_wal_size}';
ALTER SYSTEM SET checkpoint_timeout = '{checkpoint_timeout}';
ALTER SYSTEM SET work_mem = '{work_mem}';
ALTER SYSTEM SET maintenance_work_mem = '{maintenance_work_mem}';
SELECT pg_reload_conf();
