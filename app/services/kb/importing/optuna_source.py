"""Optuna studies in and out, through Optuna's public API (the optional `optuna` extra).

In: COMPLETE trials become runs (params -> params, value -> sharpe unless a user
attribute says otherwise, user attributes named like fields fill them), keyed by study
and trial number. Out: recommended parameter sets are enqueued as the study's next trials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from app.errors import BadInput
from app.services.kb.importing.fields import FIELDS, Mapping
from app.urls import redact_url

INSTALL_HINT = "pip install 'trading-kb[optuna]'"


def _optuna() -> Any:
    try:
        import optuna  # noqa: PLC0415
    except ImportError:
        raise BadInput(f"Optuna is not installed; {INSTALL_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _load(storage: str, study: str) -> Any:
    optuna = _optuna()
    if storage.startswith("sqlite:///"):
        path = Path(storage.removeprefix("sqlite:///"))
        if not path.is_file():  # Optuna would create an empty database there
            raise BadInput(f"--storage {storage}: no such SQLite file {path}")
    try:
        return optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        names = _study_names(optuna, storage)
        raise BadInput(f"no study named {study!r} in {redact_url(storage)}"
                       + (f"; studies: {', '.join(names[:20])}" if names else "")) from None
    except Exception as exc:  # SQLAlchemy and driver errors: a bad URL or an unreachable server
        raise BadInput(f"cannot open Optuna storage {redact_url(storage)}: {type(exc).__name__}") from None


def _study_names(optuna: Any, storage: str) -> list[str]:
    try:
        return [s.study_name for s in optuna.get_all_study_summaries(storage=storage)]
    except Exception:  # listing is only a hint in the error message
        return []


def study_frame(storage: str, study: str, strategy: str | None) -> tuple[pd.DataFrame, Mapping, dict[str, int]]:
    """The study's COMPLETE trials as rows of fields, with counts of the trials skipped."""
    optuna = _optuna()
    loaded = _load(storage, study)
    trials = loaded.get_trials(deepcopy=False)
    complete = optuna.trial.TrialState.COMPLETE
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for trial in trials:
        if trial.state != complete:
            skipped[trial.state.name.lower()] = skipped.get(trial.state.name.lower(), 0) + 1
            continue
        attrs = {k: v for k, v in trial.user_attrs.items() if k in FIELDS and k != "params"}
        row: dict[str, Any] = {
            "strategy_name": strategy or study,
            "params": dict(trial.params),
            "sharpe": trial.values[0] if trial.values else None,
            "created_at": trial.datetime_complete,
            **attrs,
            "source_id": str(trial.number),
        }
        rows.append(row)
    frame = pd.DataFrame.from_records(rows, columns=list(dict.fromkeys(
        ["strategy_name", "params", "sharpe", "created_at", "source_id"] + [k for r in rows for k in r])))
    mapping = Mapping(columns={c: c for c in frame.columns})
    return frame, mapping, {"trials": len(trials), "complete": len(rows), **skipped}


def enqueue(storage: str, study: str, param_sets: list[dict[str, Any]], note: dict[str, Any]) -> int:
    """Put each parameter set in the study's queue (sets already queued or tried are skipped)."""
    loaded = _load(storage, study)
    before = len(loaded.get_trials(deepcopy=False))
    for rank, params in enumerate(param_sets, start=1):
        loaded.enqueue_trial(params, user_attrs={**note, "kb_rank": rank}, skip_if_exists=True)
    return len(loaded.get_trials(deepcopy=False)) - before
