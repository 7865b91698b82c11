"""Database access: opening (DATABASE_URL or the embedded server), migrations, named SQL,
the backfill ledger. The only package that talks to the driver."""

from app.db.connector import Database, redact_dsn, with_database
from app.db.lifecycle import check_schema, open_database

__all__ = ["Database", "check_schema", "open_database", "redact_dsn", "with_database"]
