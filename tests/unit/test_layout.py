"""The architecture, checked: import layers, no import cycles, SQL only in the SQL package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"

# Packages and modules of the domain that compute and parse; they never touch the database.
PURE_PACKAGES = ("app.services.kb.runs", "app.services.kb.regime")
PURE = {
    "app.services.kb.synthetic", "app.services.kb.synthetic.demo", "app.services.kb.synthetic.world",
    "app.services.kb.recommend.query", "app.services.kb.recommend.scaling", "app.services.kb.recommend.evidence",
    "app.services.kb.recommend.walkforward", "app.services.kb.recommend.expected", "app.services.kb.recommend.answer",
    "app.services.kb.recommend.nearest", "app.services.kb.backfill.counters", "app.services.kb.candidacy",
    "app.services.kb.types", "app.services.kb.importing.fields", "app.services.kb.importing.rows",
    "app.services.kb.importing.sources", "app.services.kb.importing.optuna_source", "app.web", "app.urls",
    "app.files", "app.far_time", "app.timestamps", "app.numbers",
}
# The domain's sub-packages, each with a docstring that says what it owns.
DOMAIN_PACKAGES = ("runs", "regime", "recommend", "synthetic", "backfill", "importing")
# Only the database package speaks to the driver or names SQL.
DRIVER_MODULES = ("asyncpg", "app.db.sql")


def _is_pure(module: str) -> bool:
    return module in PURE or any(module == p or module.startswith(p + ".") for p in PURE_PACKAGES)


# The plan names `python -m app.services.kb.cli`: a two-line entry point into the CLI.
PLAN_ENTRY = "app.services.kb.cli"
SQL_START = re.compile(r"^\s*(SELECT\s|INSERT INTO\s|UPDATE \w+ SET\s|DELETE FROM\s|CREATE (TABLE|INDEX)\s|"
                       r"ALTER TABLE\s|DROP (TABLE|DATABASE)\s|WITH \w+ AS\s|SET TIME ZONE)")


def _module_name(path: Path) -> str:
    rel = path.relative_to(APP.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in APP.rglob("*.py")}


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    """App modules a module imports, anywhere in it (type-only imports count: a circle
    through them is still a circle for a reader)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n in known)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(tree, known) - {name} for name, tree in mods.items()}


def test_no_import_cycles() -> None:
    graph = _graph()
    # Packages import their own submodules by design; a cycle is between modules.
    edges = {m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in edges.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d):], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_layers_import_downward_only() -> None:
    problems = []
    for module, deps in _graph().items():
        for dep in deps:
            if module.startswith(("app.services", "app.db", "app.errors")) and module != PLAN_ENTRY \
                    and dep.startswith(("app.cli", "app.api")):
                problems.append(f"{module} (below) imports {dep} (above)")
            if module.startswith("app.db") and dep.startswith("app.services"):
                problems.append(f"{module} (database layer) imports the domain module {dep}")
            if module.startswith("app.api") and dep.startswith("app.cli"):
                problems.append(f"{module} (API) reaches into the CLI ({dep})")
            if _is_pure(module) and dep.startswith("app.db"):
                problems.append(f"pure module {module} imports the database layer ({dep})")
    assert not problems, "\n".join(sorted(problems))


def test_the_plan_entry_point_is_thin() -> None:
    deps = _graph()[PLAN_ENTRY]
    assert deps and all(d.startswith("app.cli") for d in deps)


def test_no_sql_outside_the_sql_package() -> None:
    offenders = []
    for path in APP.rglob("*.py"):
        if "sql" in path.relative_to(APP).parts[:2] and path.parent.name == "sql":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_START.match(node.value):
                offenders.append(f"{path.relative_to(APP.parent)}:{node.lineno}: {node.value.strip()[:60]!r}")
    assert not offenders, "SQL belongs in app/db/sql/queries/*.sql:\n" + "\n".join(offenders)


def test_no_module_grows_past_about_500_lines() -> None:
    long = [f"{p.relative_to(APP.parent)}: {n}" for p in APP.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400]
    assert not long, long


def test_no_function_grows_past_60_lines() -> None:
    long = []
    for path in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.relative_to(APP.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_domain_packages_say_what_they_own() -> None:
    for name in DOMAIN_PACKAGES:
        init = APP / "services" / "kb" / name / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()) <= 2, f"{init}: a short docstring saying what the package owns"


def test_only_the_database_package_calls_the_driver() -> None:
    offenders = []
    for path in APP.rglob("*.py"):
        module = _module_name(path)
        if module.startswith("app.db"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{module} imports {n}" for n in names
                          if any(n == d or n.startswith(d + ".") for d in DRIVER_MODULES)]
    assert not offenders, "\n".join(sorted(offenders))


def test_tests_share_builders_only_through_factories() -> None:
    tests = Path(__file__).resolve().parents[1]
    offenders = []
    for path in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests."):
                target = node.module.rsplit(".", 1)[-1]
                if target == "conftest" or target.startswith("test_"):
                    offenders.append(f"{path.relative_to(tests)} imports {node.module}")
    assert not offenders, "shared builders belong in tests/factories.py:\n" + "\n".join(offenders)
