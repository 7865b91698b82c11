"""Knowledge-base domain: candidacy gate, regime engine, backfills, ingest and recommend."""
