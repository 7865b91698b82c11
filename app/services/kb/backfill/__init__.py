"""The backfill commands and the batch/ledger engine they share."""
