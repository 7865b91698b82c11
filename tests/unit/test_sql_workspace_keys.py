"""Every named query keeps its rows to a workspace: each reference to a workspace table
is filtered or joined on its `workspace_id`, every insert into one writes the column,
and every conflict target names it. That is what hash partitions by workspace (and a
distributed PostgreSQL such as Citus, whose distribution column it is) need to route a
statement to one partition or node. A statement meant to span workspaces says so with
a `-- all workspaces:` comment and its reason.

The queries are parsed with PostgreSQL's own parser (pglast), not matched as text."""

from __future__ import annotations

from typing import Any

import pytest
from pglast import ast, parse_sql
from pglast.visitors import Visitor

from app.db.sql import _all_queries

WORKSPACE_TABLES = frozenset({
    "backtest_runs", "kb_trials", "kb_evidence", "kb_status_history", "kb_backfill_runs", "kb_walkforward",
    "kb_trial_revisions", "kb_strategy_revisions", "kb_ingest_state",
})
OPT_OUT = "-- all workspaces:"


def _columns(node: Any) -> list[tuple[str, ...]]:
    """Every column reference under `node`, as its name parts."""
    found: list[tuple[str, ...]] = []

    class Refs(Visitor):  # type: ignore[misc]
        def visit_ColumnRef(self, _ancestors: Any, ref: ast.ColumnRef) -> None:
            found.append(tuple(getattr(f, "sval", "*") for f in ref.fields))

    if node is not None:
        Refs()(node)
    return found


def _relations(from_items: Any) -> tuple[list[ast.RangeVar], list[Any]]:
    """The tables a FROM list names directly (not inside subqueries), and its join conditions."""
    tables: list[ast.RangeVar] = []
    quals: list[Any] = []
    stack = list(from_items or ())
    while stack:
        item = stack.pop()
        if isinstance(item, ast.RangeVar):
            tables.append(item)
        elif isinstance(item, ast.JoinExpr):
            stack += [item.larg, item.rarg]
            quals.append(item.quals)
            for name in item.usingClause or ():
                quals.append(ast.ColumnRef(fields=(ast.String(sval=name.sval),)))
    return tables, quals


def _unkeyed(tables: list[ast.RangeVar], quals: list[Any]) -> list[str]:
    refs = [c for q in quals for c in _columns(q)]
    missing = []
    for t in tables:
        if t.relname not in WORKSPACE_TABLES:
            continue
        alias = t.alias.aliasname if t.alias else t.relname
        if ("workspace_id",) not in refs and (alias, "workspace_id") not in refs:
            missing.append(f"{t.relname} ({alias}) has no workspace_id filter")
    return missing


def problems(sql: str) -> list[str]:
    """What keeps `sql` from staying inside one workspace."""
    found: list[str] = []

    class Statements(Visitor):  # type: ignore[misc]
        def visit_SelectStmt(self, _ancestors: Any, node: ast.SelectStmt) -> None:
            tables, quals = _relations(node.fromClause)
            found.extend(_unkeyed(tables, [node.whereClause, *quals]))

        def visit_UpdateStmt(self, _ancestors: Any, node: ast.UpdateStmt) -> None:
            tables, quals = _relations(node.fromClause)
            found.extend(_unkeyed([node.relation, *tables], [node.whereClause, *quals]))

        def visit_DeleteStmt(self, _ancestors: Any, node: ast.DeleteStmt) -> None:
            tables, quals = _relations(node.usingClause)
            found.extend(_unkeyed([node.relation, *tables], [node.whereClause, *quals]))

        def visit_InsertStmt(self, _ancestors: Any, node: ast.InsertStmt) -> None:
            if node.relation.relname not in WORKSPACE_TABLES:
                return
            if "workspace_id" not in [c.name for c in node.cols or ()]:
                found.append(f"insert into {node.relation.relname} does not write workspace_id")
            conflict = node.onConflictClause
            if conflict is not None and conflict.infer is not None:
                names = [getattr(e.expr, "fields", None) for e in conflict.infer.indexElems or ()]
                named = [e.name for e in conflict.infer.indexElems or ()]
                if "workspace_id" not in named and not any(f and f[-1].sval == "workspace_id" for f in names):
                    found.append(f"the conflict target on {node.relation.relname} lacks workspace_id")

    Statements()(parse_sql(sql))
    return found


NAMED = sorted(_all_queries().items())


@pytest.mark.parametrize(("name", "sql"), NAMED, ids=[n for n, _ in NAMED])
def test_every_named_query_stays_in_its_workspace(name: str, sql: str) -> None:
    if OPT_OUT in sql:
        return
    assert not problems(sql), f"{name}: " + "; ".join(problems(sql))


@pytest.mark.parametrize("sql", [
    "SELECT * FROM kb_trials WHERE strategy_name = $1",
    "SELECT * FROM kb_trials t JOIN backtest_runs r ON r.id = t.source_run_id WHERE t.workspace_id = $1",
    "UPDATE backtest_runs SET kb_status = 'x' WHERE id = $1",
    "DELETE FROM kb_evidence e USING backtest_runs r WHERE e.workspace_id = $1 AND r.id = e.source_run_id",
    "INSERT INTO kb_ingest_state (snapshot) VALUES ($1)",
    "INSERT INTO kb_walkforward (workspace_id, strategy_name) VALUES ($1, $2) ON CONFLICT (strategy_name) DO NOTHING",
    "WITH x AS (SELECT id FROM backtest_runs) SELECT * FROM x",
])
def test_the_lint_catches_statements_that_span_workspaces(sql: str) -> None:
    assert problems(sql)


def test_the_lint_accepts_keyed_statements() -> None:
    assert not problems("SELECT * FROM kb_trials t JOIN backtest_runs r ON r.workspace_id = t.workspace_id "
                        "AND r.id = t.source_run_id WHERE t.workspace_id = $1")
    assert not problems("INSERT INTO kb_walkforward AS w (workspace_id, strategy_name) VALUES ($1, $2) "
                        "ON CONFLICT (workspace_id, strategy_name) DO NOTHING")
