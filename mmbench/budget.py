"""Budgets: named caps on the work of a run, without touching the protocol (valid-only early
stopping, test once).

`full` is the models' own settings; `quick` and `smoke` cap epochs and patience (heavy models —
MMSSL, SGL, NCL: tens of seconds per epoch on a laptop even on ML-100K — get 1 epoch under both).
A run whose `--set`/`--config` changed `epochs` or `patience` is labelled `custom`: its numbers are
neither a full result nor one of the named smoke checks. The label is part of a run's identity.
"""
from __future__ import annotations

from typing import Any

from mmbench.errors import ConfigError

BUDGETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {"epochs": 10, "patience": 3},
    "smoke": {"epochs": 2, "patience": 1},
}
HEAVY_BUDGETS: dict[str, dict[str, Any]] = {"quick": {"epochs": 1, "patience": 1},
                                             "smoke": {"epochs": 1, "patience": 1}}
CUSTOM = "custom"
CAPPED_KEYS = ("epochs", "patience")


def check_budget(budget: str) -> str:
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    return budget


def budget_caps(budget: str, heavy: bool) -> dict[str, Any]:
    """The overrides `budget` applies to a model (heavy models have their own `quick` caps)."""
    check_budget(budget)
    return dict(HEAVY_BUDGETS.get(budget, BUDGETS[budget]) if heavy else BUDGETS[budget])


def budget_label(budget: str, resolved: dict[str, Any], budget_only: dict[str, Any]) -> str:
    """`budget`, or `custom` when the resolved config's epochs/patience differ from what the
    budget alone gives (`budget_only`: the same model and dataset without --config/--set)."""
    changed = any(resolved.get(k) != budget_only.get(k) for k in CAPPED_KEYS)
    return CUSTOM if changed else budget
