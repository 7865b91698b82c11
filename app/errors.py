"""The exception hierarchy. Every message says what went wrong and what to do next."""

from __future__ import annotations


class KBError(Exception):
    """Base of every error the tool reports to a user as one line."""

    exit_code = 1


class BadInput(KBError):
    """Arguments, files or values the user supplied are unusable (exit code 2)."""

    exit_code = 2


class DatabaseUnavailable(KBError):
    """The database cannot be reached or refused the credentials."""


class DatabaseError(KBError):
    """A database operation failed after the retries the caller allows."""


class BackfillLocked(KBError):
    """Another backfill of the same kind holds the workspace lock."""


class NothingToResume(BadInput):
    """`--resume` found no interrupted run with the same configuration."""


class NotFound(KBError):
    """A run, workspace or backfill id does not exist."""

    exit_code = 2



class DriverError(DatabaseError):
    """The database refused a statement; `sqlstate` says why (class 22: bad data)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @property
    def bad_data(self) -> bool:
        return bool(self.sqlstate) and str(self.sqlstate).startswith("22")
