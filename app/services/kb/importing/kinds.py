"""The kind of values a column of an import file holds, as a pandas read of it would
type them, chunk by chunk, and what the whole file's read would make of the chunks."""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

_INT64_MAX = 2**63 - 1
_SIMPLE = frozenset({bool, int, float, str})
_NONE = type(None)


def kind_of(column: pd.Series) -> str:
    """The class of dtype a reader gave one chunk's column: empty, int, float, bool, text,
    object (mixed Python values) or other (timestamps, categories: fixed by a schema)."""
    if not column.notna().any():
        return "empty"
    dtype = column.dtype
    if isinstance(dtype, pd.StringDtype):
        return "text"
    if not isinstance(dtype, np.dtype):
        return "other"
    if dtype.kind in "iufb":
        return {"i": "int", "u": "int", "f": "float", "b": "bool"}[dtype.kind]
    if dtype.kind != "O":
        return "other"
    types = set(map(type, column.dropna()))
    return "bool" if types == {bool} else "text" if types == {str} else "object"


def whole_file_plan(kinds: dict[str, set[str]]) -> dict[str, str]:
    """The columns whose chunks a whole-file read would give another dtype, and that dtype.
    Read whole, ints with a gap anywhere are floats; numbers beside words or booleans are
    text in a CSV and Python objects in JSON."""
    plan = {}
    for name, found in kinds.items():
        seen = found - {"empty"}
        if seen and seen <= {"int", "float"} and ("float" in seen or "empty" in found) and "int" in seen:
            plan[name] = "float"
        elif len(seen) > 1 and not seen <= {"int", "float"}:
            plan[name] = "object"
    return plan


def batch_kinds(batch: list[dict[str, Any]]) -> dict[str, str]:
    """Per column of a batch of JSON objects, `kind_of` the column `DataFrame.from_records`
    would build, without building it: from the Python types of the values (a key missing
    from a row counts as null). Columns beyond what the types decide (integers past int64)
    are worked out by pandas itself."""
    out: dict[str, str | None] = {}
    for name in dict.fromkeys(chain.from_iterable(batch)):  # every key, in order of first appearance
        column = [row.get(name) for row in batch]
        seen = set(map(type, column))
        has_null = _NONE in seen
        seen.discard(_NONE)
        kind = _kind_of_types(seen, has_null)
        if int in seen and any(v > _INT64_MAX for v in column if type(v) is int):
            kind = None  # unsigned 64-bit integers: pandas decides
        out[name] = kind
    unsure = [name for name, kind in out.items() if kind is None]
    if unsure:
        frame = pd.DataFrame.from_records([{n: r[n] for n in unsure if n in r} for r in batch], columns=unsure)
        out.update({n: kind_of(frame[n]) for n in unsure})
    return {name: str(kind) for name, kind in out.items()}


def _kind_of_types(seen: set[type], has_null: bool) -> str | None:
    """pandas' inference from object values, as `kind_of` names it (None: not decided here)."""
    if not seen:
        return "empty"
    if not seen <= _SIMPLE:
        return "object" if seen & {dict, list} else None
    if seen == {bool}:
        return "bool"  # a bool column, or objects that are all bools
    if seen == {str}:
        return "text"
    if seen <= {int, float}:
        return "float" if float in seen or has_null else "int"
    return "object"  # booleans or words beside numbers
