"""Reading import files: CSV, JSON lines and Parquet into one table of raw columns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pandas as pd

from app.errors import BadInput
from app.services.kb.regime.ohlcv import check_text_head

FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
MAX_ROWS = 50_000_000


def detect_format(path: Path, given: str | None) -> str:
    if given:
        return given
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise BadInput(f"{path}: cannot tell the format from the name; give --format {'|'.join(FORMATS)}")
    return found


def read_table(path: Path, fmt: str, text_columns: Callable[[list[str]], list[str]] | None = None) -> pd.DataFrame:
    """The file as a table of raw columns; unreadable files are bad input. For CSV,
    `text_columns(headers)` names the columns read as text (ids keep leading zeros);
    the others are parsed as numbers where they look like numbers."""
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if not path.is_file():
        raise BadInput(f"{path}: not a regular file")
    if fmt != "parquet":
        check_text_head(path, "import file")
    try:
        if fmt == "csv":
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            headers = list(pd.read_csv(path, sep=sep, nrows=0, encoding="utf-8-sig").columns)
            as_text = dict.fromkeys(text_columns(headers) if text_columns else headers, str)
            frame = pd.read_csv(path, sep=sep, dtype=as_text, keep_default_na=False, na_values=[""],
                                encoding="utf-8-sig", low_memory=False)
        elif fmt == "jsonl":
            frame = _read_jsonl(path)
        else:
            frame = pd.read_parquet(path)
    except BadInput:
        raise
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{path}: unreadable as {fmt}: {first}") from None
    if len(frame.columns) == 0:
        raise BadInput(f"{path}: no columns found")
    if len(frame) > MAX_ROWS:
        raise BadInput(f"{path}: {len(frame):,} rows is more than {MAX_ROWS:,}; split the file")
    frame.columns = [str(c) for c in frame.columns]
    if len(set(frame.columns)) != len(frame.columns):
        raise BadInput(f"{path}: two columns have the same name")
    return frame


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line (a whole-file JSON array is read too)."""
    text = path.read_bytes().lstrip(b"\xef\xbb\xbf")
    if text.lstrip().startswith(b"["):
        try:
            rows = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BadInput(f"{path}: not valid JSON: {exc}") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                raise BadInput(f"{path}: line {number} is not valid JSON") from None
    if not all(isinstance(r, dict) for r in rows):
        raise BadInput(f"{path}: every line must be a JSON object")
    # Nested objects (params) stay objects; everything else is read as given.
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
