"""Named SQL queries, loaded once from `app/db/sql/queries/*.sql`.

A file holds blocks introduced by `-- name: some_name`; the text up to the next such
line is the query. Lookups of unknown names fail loudly at first use.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_named_queries(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip().rstrip(";").strip()
        if match.group(1) in queries:
            raise ValueError(f"query {match.group(1)!r} is defined twice")
        queries[match.group(1)] = body
    return queries


@cache
def _all_queries() -> dict[str, str]:
    queries: dict[str, str] = {}
    folder = resources.files("app.db.sql") / "queries"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, body in parse_named_queries(entry.read_text(encoding="utf-8")).items():
                if name in queries:
                    raise ValueError(f"query {name!r} is defined in two files")
                queries[name] = body
    return queries


def q(name: str) -> str:
    """The SQL text of the named query."""
    try:
        return _all_queries()[name]
    except KeyError:
        raise KeyError(f"no SQL query named {name!r} in app/db/sql/queries") from None


_UNNEST_ALIAS = re.compile(r"\bAS\s+u\s*\(([^)]*)\)", re.IGNORECASE)


def unnest_columns(name: str) -> tuple[str, ...]:
    """The column names of a named query's `unnest(...) AS u(...)` alias, in order: the
    one field order that the Python side builds its row tuples in."""
    match = _UNNEST_ALIAS.search(q(name))
    if match is None:
        raise KeyError(f"query {name!r} has no `AS u(...)` unnest alias")
    return tuple(c.strip() for c in match.group(1).split(","))
