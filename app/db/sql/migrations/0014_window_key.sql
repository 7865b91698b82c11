-- The key of a run's OOS window for the DSR figures (strategy, symbol, timeframe, OOS start,
-- OOS end), as a digest; NULL when the run has no strategy or no OOS window. One definition
-- for the figures of every window and for the runs looked up in them.
CREATE FUNCTION kb_window_key(strategy text, meta jsonb) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN strategy IS NOT NULL AND meta ->> 'oos_start' IS NOT NULL AND meta ->> 'oos_end' IS NOT NULL
                THEN decode(md5(concat_ws(chr(31), strategy, coalesce(meta ->> 'symbol', ''),
                                          coalesce(meta ->> 'timeframe', ''), meta ->> 'oos_start',
                                          meta ->> 'oos_end')), 'hex') END
$$;
