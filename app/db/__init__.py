"""Database access: the connector, the embedded server, migrations and named queries."""

from app.db.connector import Database, redact_dsn, with_database

__all__ = ["Database", "redact_dsn", "with_database"]
