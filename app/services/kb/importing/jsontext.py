"""JSON object text for many rows at once, as `orjson.dumps` of each row's dict would give.

Each column is turned into JSON fragments in one go (numbers by one `orjson.dumps` of
the whole list, text once per distinct value), then every row is one `%` of a fixed
template: no dict per row. Rows with a missing value (None, left out of the object)
take the per-row path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson


def _fragments(column: list[Any]) -> list[str]:
    """Each value as JSON text."""
    try:
        distinct = set(column)
    except TypeError:  # nested objects
        distinct = None
    if distinct is not None and all(type(v) is str for v in distinct):
        texts = {v: orjson.dumps(v).decode() for v in distinct}
        return [texts[v] for v in column]
    try:
        whole = orjson.dumps(column).decode()[1:-1]
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: let each value say so
        whole = '"'
    # Only numbers, JSON without quotes, brackets, true, false or null, split at commas into
    # the values' own JSON.
    if not any(mark in whole for mark in '"{[tfn'):
        parts = whole.split(",")
        if len(parts) == len(column):
            return parts
    return [orjson.dumps(v).decode() for v in column]


def json_objects(keys: Sequence[str], columns: Sequence[list[Any]], rows: int) -> list[str]:
    """Per row, the JSON object of `{key: value}` in key order, leaving out None values."""
    kept = [(k, c) for k, c in zip(keys, columns, strict=True) if c.count(None) < rows]
    if not kept:
        return ["{}"] * rows
    names = [k for k, _ in kept]
    values = [c for _, c in kept]
    if any(None in c for c in values):
        dumps = orjson.dumps
        return [dumps({k: v for k, v in zip(names, row, strict=True) if v is not None}).decode()
                for row in zip(*values, strict=True)]
    template = "{" + ",".join(orjson.dumps(k).decode().replace("%", "%%") + ":%s" for k in names) + "}"
    return [template % row for row in zip(*(_fragments(c) for c in values), strict=True)]
