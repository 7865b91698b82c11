"""Per-run tallies: what was scanned, passed, rejected (by reason) and written."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

EXAMPLES_PER_REASON = 3


@dataclass
class Counters:
    scanned: int = 0
    passed: int = 0
    rejected: int = 0
    updated: int = 0
    changed_concurrently: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def reject(self, reason: str, run_id: object) -> None:
        self.rejected += 1
        self.reasons[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(str(run_id))

    def plus(self, other: Counters) -> Counters:
        examples = {k: list(v) for k, v in self.examples.items()}
        for reason, ids in other.examples.items():
            shown = examples.setdefault(reason, [])
            shown.extend(i for i in ids if i not in shown)
            del shown[EXAMPLES_PER_REASON:]
        return Counters(
            self.scanned + other.scanned,
            self.passed + other.passed,
            self.rejected + other.rejected,
            self.updated + other.updated,
            self.changed_concurrently + other.changed_concurrently,
            self.reasons + other.reasons,
            examples,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "passed": self.passed,
            "rejected": self.rejected,
            "updated": self.updated,
            "changed_concurrently": self.changed_concurrently,
            "reasons": dict(self.reasons.most_common()),
            "examples": self.examples,
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str | None) -> Counters:
        data = orjson.loads(text) if text else {}
        return cls(
            int(data.get("scanned", 0)),
            int(data.get("passed", 0)),
            int(data.get("rejected", 0)),
            int(data.get("updated", 0)),
            int(data.get("changed_concurrently", 0)),
            Counter({str(k): int(v) for k, v in data.get("reasons", {}).items()}),
            {str(k): [str(i) for i in v] for k, v in data.get("examples", {}).items()},
        )
