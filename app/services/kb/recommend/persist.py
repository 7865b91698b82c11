"""Matrices kept on disk between processes, so a new `kb serve`, `kb recommend` or notebook
does not read a strategy's every trial and evidence row again: it reads the file of the
last matrix built, checks it against the database, and appends what was written since.

A file is trusted only when the database still holds exactly the rows it was built from:
the strategy's rows up to the file's revision are counted and digested (a hash of each
row's id and revision, summed) and must match the file's, and no row up to that revision
may have changed or left since (the strategy's reset revision). Any mismatch, an
unreadable file, or a file of another format is a cache miss: the matrix is built from
the database as if there were no file, and the file is replaced.

Where: `KB_MATRIX_CACHE` (a directory, or `off`), else `matrices/` under `KB_HOME`; at
most `KB_MATRIX_CACHE_MB` megabytes (default 8 GiB), the files used least recently
removed first.
The files are pickles written by this process's user into a directory only they can
read; one file per (database, workspace, strategy, scope, kind), replaced atomically."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import pickle
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.db.embedded import kb_home
from app.errors import BadInput

log = logging.getLogger(__name__)


def _format(decided: bool = False) -> str:
    """The version of the files: a digest of the modules whose classes they hold (and, for
    kept walk-forward decisions, of the rules that made them), so a file written by any
    other version of them is ignored (and replaced), never half-understood."""
    from app.services.kb.recommend import decisions, evidence, scaling, trial_matrix, walkforward  # noqa: PLC0415

    digest = hashlib.sha256()
    for module in (trial_matrix, evidence, scaling, *((decisions, walkforward) if decided else ())):
        try:
            digest.update(Path(str(module.__file__)).read_bytes())
        except OSError:  # no source beside the code (a frozen install): this process's own format
            digest.update(f"{os.getpid()}:{time.time_ns()}".encode())
    return digest.hexdigest()[:16]


FORMAT = _format()
DECISIONS_FORMAT = _format(decided=True)
ENV = "KB_MATRIX_CACHE"
LIMIT_ENV = "KB_MATRIX_CACHE_MB"
_OFF = {"off", "0", "false", "no", "none"}


@dataclass(frozen=True)
class Fingerprint:
    """What the database holds of a strategy up to one revision."""

    rows: int
    digest: str
    reset: int  # the strategy's reset revision: rows up to `revision` changed or left when above it


@dataclass(frozen=True)
class Saved:
    """A matrix read back from its file, with what it was built from."""

    matrix: Any
    revision: int
    rows: int  # rows in the database at that revision
    digest: str
    token: str = ""  # names this write of the file (two builds of the same rows may differ in codes)

    def matches(self, found: Fingerprint) -> bool:
        """The database still holds exactly the rows this matrix was built from."""
        return found.reset <= self.revision and found.rows == self.rows and found.digest == self.digest


@dataclass(frozen=True)
class MatrixStore:
    root: Path
    growth: float = 0.10  # an appended matrix is saved again once it has grown by this share
    max_bytes: int = 8 * 2**30  # beyond this, the files used least recently are removed

    @classmethod
    def from_env(cls) -> MatrixStore | None:
        configured = os.environ.get(ENV, "").strip()
        if configured.lower() in _OFF:
            return None
        limit = os.environ.get(LIMIT_ENV, "").strip()
        try:
            megabytes = float(limit) if limit else 8 * 2**10
        except ValueError:
            megabytes = math.nan
        if not 0 <= megabytes < 2**40:
            raise BadInput(f"{LIMIT_ENV} must be a number of megabytes, got {limit!r}")
        max_bytes = int(megabytes * 2**20)
        return cls(Path(configured).expanduser() if configured else kb_home() / "matrices", max_bytes=max_bytes)

    def path(self, dsn: str, kind: str, workspace_id: uuid.UUID, strategy: str, scope: str) -> Path:
        """The file of one matrix; the connection string (never stored) keeps databases apart."""
        name = hashlib.sha256(repr((dsn, kind, str(workspace_id), strategy, scope)).encode()).hexdigest()[:40]
        return self.root / f"{kind}-{name}.pickle"

    def read(self, path: Path, identity: dict[str, str]) -> Saved | None:
        """The matrix in `path` when it is of this format and identity; None otherwise."""
        found = self.get(path, identity)
        if found is None:
            return None
        header, matrix = found
        return Saved(matrix, int(header["revision"]), int(header["rows"]), str(header["digest"]),
                     str(header.get("token", "")))

    def write(self, path: Path, identity: dict[str, str], matrix: Any, revision: int, found: Fingerprint,
              token: str = "") -> bool:
        """Write the matrix (atomically: a reader sees the old file or the new one). False
        when it could not be written (disk full, no permission): the cache is an aid only."""
        return self.put(path, {"identity": identity, "revision": revision, "rows": found.rows,
                               "digest": found.digest, "token": token}, matrix)

    def get(self, path: Path, identity: dict[str, str], fmt: str = FORMAT) -> tuple[dict[str, Any], Any] | None:
        """The header and object in `path` when it is of format `fmt` and this identity."""
        try:
            with path.open("rb") as f:
                if not _own(path, f.fileno()):
                    log.warning("ignoring the cached matrix %s: not written by this user alone", path)
                    return None
                found, header, obj = pickle.load(f)  # noqa: S301  (this user's own file: see _own)
        except FileNotFoundError:
            return None
        except Exception as exc:  # a damaged or foreign file is a miss, never a failure
            log.warning("ignoring the cached matrix %s: %s", path, exc)
            return None
        if found != fmt or not isinstance(header, dict) or header.get("identity") != identity:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: the last to go when the directory is trimmed
        return header, obj

    def put(self, path: Path, header: dict[str, Any], obj: Any, fmt: str = FORMAT) -> bool:
        """Write `obj` with its header (atomically: a reader sees the old file or the new
        one); False when it could not be written (disk full, no permission)."""
        tmp: Path | None = None
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _own_dir(self.root):  # files there would never be read back
                log.warning("not keeping matrices in %s: others may write there", self.root)
                return False
            fd, name = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=self.root)  # 0600, new
            tmp = Path(name)
            with os.fdopen(fd, "wb") as f:
                pickle.dump((fmt, header, obj), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except Exception as exc:  # disk full, no permission: answer anyway
            log.warning("could not keep the matrix in %s: %s", path, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
            return False
        with contextlib.suppress(OSError):
            self.trim(keep=path)
        return True


    def trim(self, keep: Path | None = None) -> int:
        """Remove the files used least recently until the directory holds at most
        `max_bytes` (never `keep`, the file just written); returns how many went."""
        files = []
        for p in self.root.glob("*.tmp"):  # left by a process stopped while writing
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < time.time() - 86_400:
                    p.unlink()
        for p in self.root.glob("*.pickle"):
            with contextlib.suppress(OSError):
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        total, removed = sum(size for _, size, _ in files), 0
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            if p != keep:
                with contextlib.suppress(OSError):
                    p.unlink()
                    total -= size
                    removed += 1
        return removed


def _own(path: Path, fd: int) -> bool:
    """The file and its directory belong to this user and no one else may write them: a
    pickle runs code when read, so only files this user wrote are read."""
    return _mine(os.fstat(fd)) and _own_dir(path.parent)


def _own_dir(folder: Path) -> bool:
    return _mine(folder.stat())


def _mine(st: os.stat_result) -> bool:
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
