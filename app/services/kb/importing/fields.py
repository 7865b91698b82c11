"""The import fields, the headers recognised without `--map`, and the column mapping.

A mapping says which column (or constant) gives each field. Headers are matched after
folding case and spacing, so `Sharpe Ratio`, `sharpe ratio` and `SHARPE_RATIO` are one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from app.errors import BadInput

Kind = Literal["text", "json", "timestamp", "int", "float", "enum"]

FIELDS: dict[str, Kind] = {
    "strategy_name": "text",
    "params": "json",
    "oos_start": "timestamp",
    "oos_end": "timestamp",
    "is_start": "timestamp",
    "is_end": "timestamp",
    "symbol": "text",
    "timeframe": "text",
    "trades": "int",
    "sharpe": "float",
    "max_drawdown_pct": "float",
    "return_pct": "float",
    "win_rate": "float",
    "profit_factor": "float",
    "experiment_type": "text",
    "run_kind": "enum",
    "status": "enum",
    "created_at": "timestamp",
    "source_id": "text",
}

# Stored unit of the fields that have one: percent where the name says pct, else a fraction.
PERCENT_FIELDS = frozenset({"max_drawdown_pct", "return_pct"})
FRACTION_FIELDS = frozenset({"win_rate"})

# Exported stats of backtesting.py (`Backtest.run()`) and vectorbt (`Portfolio.stats()`).
KNOWN_HEADERS: dict[str, str] = {
    "Start": "oos_start",
    "End": "oos_end",
    "Sharpe Ratio": "sharpe",
    "Max. Drawdown [%]": "max_drawdown_pct",
    "Max Drawdown [%]": "max_drawdown_pct",
    "# Trades": "trades",
    "Total Trades": "trades",
    "Return [%]": "return_pct",
    "Total Return [%]": "return_pct",
    "Win Rate [%]": "win_rate",
    "Profit Factor": "profit_factor",
    # common spellings in researchers' own exports
    "strategy": "strategy_name",
    "trade_count": "trades",
    "n_trades": "trades",
    "id": "source_id",
    "run_id": "source_id",
}

# backtesting.py names the strategy with its parameters: `SmaCross(n1=10,n2=20)`.
STRATEGY_REPR_COLUMN = "_strategy"
PARAM_PREFIXES = ("param_", "params.", "params_")


def fold(header: str) -> str:
    """Case, spacing and punctuation folded, `%` kept: `Max. Drawdown [%]` -> `max drawdown %`."""
    text = header.strip().lower().replace("%", " % ")
    return " ".join(re.sub(r"[^a-z0-9%#]+", " ", text).split())


_RECOGNISED = {fold(k): v for k, v in KNOWN_HEADERS.items()} | {fold(f): f for f in FIELDS}


def is_percent_column(header: str) -> bool:
    """The column's own unit convention: `[%]`, `pct` or `percent` in its name means percent."""
    words = fold(header).split()
    return "%" in words or "pct" in words or "percent" in words


@dataclass
class Mapping:
    """Where each field comes from: a column, a constant, or param columns."""

    columns: dict[str, str] = field(default_factory=dict)  # field -> column
    constants: dict[str, str] = field(default_factory=dict)  # field -> value given with --set
    param_columns: dict[str, str] = field(default_factory=dict)  # param name -> column
    strategy_repr: str | None = None  # a `_strategy` column to split into name and params
    ignored: list[str] = field(default_factory=list)

    def scale(self, name: str) -> float:
        """Factor from the column's unit to the field's stored unit."""
        column = self.columns.get(name)
        if column is None:
            return 1.0
        percent = is_percent_column(column)
        if name in FRACTION_FIELDS and percent:
            return 0.01
        if name in PERCENT_FIELDS and not percent and column != name:
            return 100.0
        return 1.0

    def describe(self) -> dict[str, object]:
        return {"columns": dict(self.columns), "constants": dict(self.constants),
                "param_columns": dict(self.param_columns), "ignored_columns": list(self.ignored)}


def parse_pairs(pairs: Iterable[str], option: str) -> dict[str, str]:
    """`FIELD=VALUE` items of a repeated option; unknown fields are bad input."""
    out: dict[str, str] = {}
    for item in pairs:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise BadInput(f"{option} {item[:60]!r}: expected FIELD=VALUE")
        if name not in FIELDS:
            raise BadInput(f"{option} {item[:60]!r}: unknown field {name!r}; fields: {', '.join(FIELDS)}")
        if name in out:
            raise BadInput(f"{option} gives {name!r} twice")
        out[name] = value
    return out


def resolve_mapping(headers: Sequence[str], maps: dict[str, str], sets: dict[str, str]) -> Mapping:
    """Decide which column gives each field. Explicit `--map`/`--set` win; the rest are
    recognised by name. A field given by two columns, or a mapped column that is not in
    the file, is bad input."""
    present = list(headers)
    mapping = Mapping(constants=dict(sets))
    for name, column in maps.items():
        if column not in present:
            raise BadInput(f"--map {name}={column[:60]}: the file has no column {column[:60]!r}; "
                           f"columns: {', '.join(h[:40] for h in present[:30])}")
        mapping.columns[name] = column
    taken = set(maps.values())
    for header in present:
        if header in taken:
            continue
        found = None if header == STRATEGY_REPR_COLUMN else _RECOGNISED.get(fold(header))
        lower = header.strip().lower()
        prefix = next((p for p in PARAM_PREFIXES if lower.startswith(p) and len(header) > len(p)), None)
        if found is not None:
            if found in maps or found in sets:
                mapping.ignored.append(header)
                continue
            if found in mapping.columns:
                raise BadInput(f"columns {mapping.columns[found]!r} and {header!r} both give {found}; "
                               f"choose one with --map {found}=COLUMN")
            mapping.columns[found] = header
        elif prefix is not None:
            mapping.param_columns[header.strip()[len(prefix):]] = header
        elif header == STRATEGY_REPR_COLUMN:
            mapping.strategy_repr = header
        else:
            mapping.ignored.append(header)
    return mapping


_REPR = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def split_strategy_repr(text: str) -> tuple[str, dict[str, object]] | None:
    """`SmaCross(n1=10,n2=20)` -> ("SmaCross", {"n1": 10, "n2": 20}); None when unreadable."""
    match = _REPR.match(text)
    if match is None:
        return None
    params: dict[str, object] = {}
    body = (match.group(2) or "").strip()
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, sep, raw = part.partition("=")
        if not sep:
            return None
        params[key.strip()] = _literal(raw.strip())
    return match.group(1), params


def _literal(raw: str) -> object:
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    if raw in ("True", "False"):
        return raw == "True"
    return raw.strip("'\"")
