"""Reading import files (CSV, JSON lines, Parquet): checked up front, then read in chunks.

A chunk holds the values a read of the whole file would give its rows. Where a column's
dtype depends on rows in other chunks (a param column with a word a million rows on, an
id column with one gap), a scan before any write finds the dtype of the whole file and
every chunk is read with it. Chunk bounds fall at multiples of CHUNK_ROWS.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from app.errors import BadInput
from app.services.kb.importing.kinds import batch_kinds, kind_of, whole_file_plan
from app.services.kb.regime.ohlcv import check_text_head

FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
# Import is one transaction, and its duplicate check remembers every id: a bound on both.
MAX_ROWS = 50_000_000
CHUNK_ROWS = 10_000
_BLOCK = 1 << 20
_BOM = b"\xef\xbb\xbf"
# From the headers: (CSV columns read as text, columns whose values join a row's content).
Decide = Callable[[list[str]], tuple[list[str], list[str]]]
Chunks = Generator[tuple[pd.DataFrame, int], None, None]


def detect_format(path: Path, given: str | None) -> str:
    if given:
        return given
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise BadInput(f"{path}: cannot tell the format from the name; give --format {'|'.join(FORMATS)}")
    return found


@dataclass(frozen=True)
class Table:
    """An import file, checked, with what its chunks need: CSV read dtypes, the whole-file
    dtype of columns whose chunks would differ (`plan`: "float" or "object"), the row count
    when known before reading, or the rows of a whole-file JSON array."""

    path: Path
    fmt: str
    columns: tuple[str, ...]
    size: int
    rows: int | None = None
    dtypes: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, str] = field(default_factory=dict)
    frame: pd.DataFrame | None = None

    @property
    def progress_unit(self) -> str:
        return "bytes" if self.rows is None else "rows"

    @property
    def progress_total(self) -> int:
        return self.size if self.rows is None else self.rows

    def chunks(self) -> Chunks:
        """The rows, CHUNK_ROWS at a time (the last chunk shorter), each with how far the
        file is read in `progress_unit`. Each call reads the file again from its start."""
        readers = {"csv": self._csv, "jsonl": self._jsonl, "parquet": self._parquet}
        source = _cut(self.frame) if self.frame is not None else readers[self.fmt]()
        rows = 0
        try:
            while True:
                with _reading(self.path, self.fmt, after=rows):
                    got = next(source, None)
                if got is None:
                    return
                frame, position = got
                rows += len(frame)
                if rows > MAX_ROWS:
                    raise BadInput(f"{self.path}: more than {MAX_ROWS:,} rows; split the file")
                frame.columns = list(self.columns)
                yield frame, position
        finally:
            source.close()

    def _csv(self) -> Chunks:
        with self.path.open("rb") as handle, _read_csv(handle, self.path, dtype=self.dtypes,
                                                         chunksize=CHUNK_ROWS) as reader:
            for frame in reader:
                yield frame, handle.tell()

    def _jsonl(self) -> Chunks:
        columns, known, done = list(self.columns), set(self.columns), 0
        for rows in _json_batches(self.path):
            frame = pd.DataFrame.from_records(rows)
            if not known.issuperset(frame.columns):
                raise BadInput(f"{self.path} changed while it was imported; import it again")
            done += len(rows)
            yield _as_whole(frame.reindex(columns=columns), self.plan, rows), done

    def _parquet(self) -> Chunks:
        """Batches cut at row-group ends are joined, so chunks hold CHUNK_ROWS rows. Column
        chunks are read through a buffer, not whole (a row group may hold millions of rows)."""
        with pq.ParquetFile(self.path, pre_buffer=False, buffer_size=_BLOCK) as parquet:
            pending: list[pa.RecordBatch] = []
            count = done = 0
            for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
                pending.append(batch)
                count += batch.num_rows
                while count >= CHUNK_ROWS:
                    joined = pa.Table.from_batches(pending)
                    done += CHUNK_ROWS
                    yield _as_whole(joined.slice(0, CHUNK_ROWS).to_pandas(), self.plan), done
                    rest = joined.slice(CHUNK_ROWS)
                    pending, count = rest.to_batches(), rest.num_rows
            if count:
                yield _as_whole(pa.Table.from_batches(pending).to_pandas(), self.plan), done + count


def _cut(frame: pd.DataFrame) -> Chunks:
    """A table in memory (a whole-file JSON array) in chunks."""
    for start in range(0, len(frame), CHUNK_ROWS):
        chunk = frame.iloc[start : start + CHUNK_ROWS]
        yield chunk, start + len(chunk)


def open_table(path: Path, fmt: str, decide: Decide) -> Table:
    """Check the file and learn, before any row is written, what a read of the whole file
    would decide: its headers (given to `decide`), the dtypes of the columns `decide` names
    as joining a row's content, and (Parquet, JSON lines) its row count. Every problem
    found is bad input."""
    _check_file(path, fmt)
    with _reading(path, fmt):
        if fmt == "csv":
            return _open_csv(path, decide)
        if fmt == "parquet":
            return _open_parquet(path, decide)
        return _open_json(path, decide)


def _open_csv(path: Path, decide: Decide) -> Table:
    headers = [str(c) for c in pd.read_csv(path, sep=_separator(path), nrows=0, encoding="utf-8-sig").columns]
    _check_headers(path, headers, None)
    text, valued = decide(headers)
    scanned = [c for c in dict.fromkeys(valued) if c not in text]
    kinds: dict[str, set[str]] = {c: set() for c in scanned}
    rows = 0
    if scanned:
        with _read_csv(path, path, usecols=scanned, chunksize=CHUNK_ROWS) as reader:
            for frame in reader:
                rows += len(frame)
                for name in scanned:
                    kinds[name].add(kind_of(frame[name]))
        _check_headers(path, headers, rows)
    # A column whose whole-file dtype is text is read as text in every chunk (numbers
    # keep their spelling); one of floats is read as floats (a chunk of ints is not ints).
    dtypes = dict.fromkeys(text, str) | {c: str if whole == "object" else "float64"
                                         for c, whole in whole_file_plan(kinds).items()}
    return Table(path, "csv", tuple(headers), path.stat().st_size, dtypes=dtypes)


def _open_parquet(path: Path, decide: Decide) -> Table:
    with pq.ParquetFile(path) as parquet:
        headers = [str(c) for c in parquet.schema_arrow.empty_table().to_pandas().columns]
        rows = parquet.metadata.num_rows
        _check_headers(path, headers, rows)
        decide(headers)
        # An integer column with a null anywhere is float in the whole file, int in chunks without one.
        plan = {f.name: "float" for f in parquet.schema_arrow
                if pa.types.is_integer(f.type) and f.name in headers and _has_nulls(parquet, f.name)}
    return Table(path, "parquet", tuple(headers), path.stat().st_size, rows=rows, plan=plan)


def _has_nulls(parquet: pq.ParquetFile, name: str) -> bool:
    meta = parquet.metadata
    index = next((j for j in range(meta.num_columns) if meta.schema.column(j).path == name), None)
    counts = [None if index is None else meta.row_group(g).column(index).statistics
              for g in range(meta.num_row_groups)]
    if all(s is not None and s.has_null_count for s in counts):
        return any(s.null_count for s in counts if s is not None)
    return any(b.column(0).null_count for b in parquet.iter_batches(columns=[name]))


def _open_json(path: Path, decide: Decide) -> Table:
    size = path.stat().st_size
    if _is_array(path):
        frame = _read_json_array(path)
        headers = [str(c) for c in frame.columns]
        _check_headers(path, headers, len(frame))
        decide(headers)
        return Table(path, "jsonl", tuple(headers), size, rows=len(frame), frame=frame)
    columns: dict[str, set[str]] = {}
    rows = 0
    for batch in _json_batches(path):
        found = batch_kinds(batch)
        for name in found:
            columns.setdefault(name, {"empty"} if rows else set())  # missing from earlier rows
        for name, kinds in columns.items():
            kinds.add(found.get(name, "empty"))
        rows += len(batch)
    headers = list(columns)
    _check_headers(path, headers, rows)
    decide(headers)
    return Table(path, "jsonl", tuple(headers), size, rows=rows, plan=whole_file_plan(columns))


def _check_file(path: Path, fmt: str) -> None:
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if not path.is_file():
        raise BadInput(f"{path}: not a regular file")
    if fmt != "parquet":
        check_text_head(path, "import file")


def _check_headers(path: Path, headers: list[str], rows: int | None) -> None:
    if not headers:
        raise BadInput(f"{path}: no columns found")
    if len(set(headers)) != len(headers):
        raise BadInput(f"{path}: two columns have the same name")
    if rows is not None and rows > MAX_ROWS:
        raise BadInput(f"{path}: {rows:,} rows is more than {MAX_ROWS:,}; split the file")


@contextmanager
def _reading(path: Path, fmt: str, after: int = 0) -> Iterator[None]:
    """A reader's errors as bad input; `after` rows were read before it, if the file fails part-way."""
    where = f" after row {after:,}" if after else ""
    try:
        yield
    except BadInput:
        raise
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text{where}; save the file as UTF-8") from None
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{path}: unreadable as {fmt}{where}: {first}") from None


def _separator(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _read_csv(source: Any, path: Path, **options: Any) -> Any:
    """pandas' CSV reader as every read here calls it: empty fields are missing values and
    nothing else is ("NA" may be a symbol); dtypes are inferred from all rows read at once."""
    return pd.read_csv(source, sep=_separator(path), keep_default_na=False, na_values=[""], encoding="utf-8-sig",
                       low_memory=False, **options)


def _as_whole(frame: pd.DataFrame, plan: dict[str, str], rows: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """A JSON or Parquet chunk with the planned columns as a whole-file read gives them:
    ints as floats, or (JSON) the values as parsed, which a float column would have changed."""
    for name, whole in plan.items():
        column = frame[name]
        numeric = isinstance(column.dtype, np.dtype) and column.dtype.kind in "iuf"
        if whole == "float" and numeric and column.dtype.kind != "f":
            frame[name] = column.astype("float64")
        elif whole == "object" and rows is not None and column.dtype != object:
            frame[name] = pd.Series([row.get(name) for row in rows], index=frame.index, dtype=object)
    return frame


def _lines(path: Path) -> Iterator[bytes]:
    """The file's lines as `bytes.splitlines` cuts them (a leading BOM dropped), read a block at a time."""
    with path.open("rb") as handle:
        head = b""
        first = True
        while block := handle.read(_BLOCK):
            if first:
                block, first = block.lstrip(_BOM), False
            lines = (head + block if head else block).splitlines(keepends=True)
            # The last line may go on in the next block (a CR may be half of a CRLF).
            head = b"" if not lines or lines[-1].endswith(b"\n") else lines.pop()
            yield from lines
        if head:
            yield head


def _json_batches(path: Path) -> Iterator[list[dict[str, Any]]]:
    """The objects of a JSON lines file, CHUNK_ROWS at a time; blank lines are skipped."""
    batch: list[dict[str, Any]] = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BadInput(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(row, dict):
            raise BadInput(f"{path}: line {number} is not a JSON object; every line must be one")
        batch.append(row)
        if len(batch) == CHUNK_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _is_array(path: Path) -> bool:
    """Whether the file is one JSON array (its first character other than space is `[`)."""
    with path.open("rb") as handle:
        head = handle.read(_BLOCK).lstrip(_BOM).lstrip()
        while not head and (block := handle.read(_BLOCK)):
            head = block.lstrip()
    return head.startswith(b"[")


def _read_json_array(path: Path) -> pd.DataFrame:
    """A whole-file JSON array of objects: one JSON value, read whole."""
    try:
        rows = orjson.loads(path.read_bytes().lstrip(_BOM))
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON: {exc}") from None
    if not all(isinstance(r, dict) for r in rows):
        raise BadInput(f"{path}: every item must be a JSON object")
    # Nested objects (params) stay objects; everything else is read as given.
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame()


def read_table(path: Path, fmt: str, text_columns: Callable[[list[str]], list[str]] | None = None) -> pd.DataFrame:
    """The whole file as one table of raw columns; unreadable files are bad input. For CSV,
    `text_columns(headers)` names the columns read as text (ids keep leading zeros);
    the others are parsed as numbers where they look like numbers."""
    _check_file(path, fmt)
    with _reading(path, fmt):
        if fmt == "csv":
            headers = list(pd.read_csv(path, sep=_separator(path), nrows=0, encoding="utf-8-sig").columns)
            as_text = dict.fromkeys(text_columns(headers) if text_columns else headers, str)
            frame = _read_csv(path, path, dtype=as_text)
        elif fmt == "jsonl":
            frame = _read_json_array(path) if _is_array(path) else pd.DataFrame.from_records(
                [row for batch in _json_batches(path) for row in batch])
        else:
            frame = pd.read_parquet(path)
    frame.columns = [str(c) for c in frame.columns]
    _check_headers(path, list(frame.columns), len(frame))
    return frame
