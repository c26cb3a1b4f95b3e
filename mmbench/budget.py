"""Budgets: named caps on the work of a run, without touching the protocol (valid-only early
stopping, test once).

One epoch cap and one patience per budget, the same for every model:

    budget   epochs / patience        under `run`, heavy models (MMSSL, SGL, NCL)
    full     1000 / 20 (the trainer's defaults)   the same
    quick    10 / 3                   1 / 1
    smoke    2 / 1                    1 / 1

`full` applies no caps of its own: the trainer's defaults hold, except where a model's
author-published per-dataset preset says otherwise (MMSSL's patience 8 on the authors' datasets).
Heavy models take tens of seconds per epoch on a laptop even on ML-100K, so `run` gives them 1 epoch
under quick and smoke; `tune` does not (`tune_caps`): every model of a study gets the same caps.
Models fitted in closed form (`mostpop`, `itemknn`: `FittedOnce`) run one epoch under every budget.
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
# Models fitted in closed form (`FittedOnce`: popularity, item-kNN) run one epoch under every budget.
FITTED_ONCE_CAPS: dict[str, Any] = {"epochs": 1, "patience": 1}
HEAVY_BUDGETS: dict[str, dict[str, Any]] = {"quick": {"epochs": 1, "patience": 1},
                                             "smoke": {"epochs": 1, "patience": 1}}
CUSTOM = "custom"
CAPPED_KEYS = ("epochs", "patience")


def check_budget(budget: str) -> str:
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    return budget


def budget_caps(budget: str, heavy: bool, fits_once: bool = False) -> dict[str, Any]:
    """The overrides `budget` applies to a model under `run` (heavy models have their own `quick`
    and `smoke` caps; a model fitted once gets one epoch whatever the budget)."""
    check_budget(budget)
    if fits_once:
        return dict(FITTED_ONCE_CAPS)
    return dict(HEAVY_BUDGETS.get(budget, BUDGETS[budget]) if heavy else BUDGETS[budget])


def tune_caps(budget: str, fits_once: bool = False) -> dict[str, Any]:
    """The caps every model gets while tuning under `budget`: the budget's plain caps, and for
    `full` the trainer's defaults stated explicitly, so neither a heavy-model cap nor a preset's
    patience gives one model of a comparison more or fewer epochs than another."""
    from mmbench.config import TRAINER_DEFAULTS

    check_budget(budget)
    if fits_once:  # nothing to train: more epochs would only repeat the same validation
        return dict(FITTED_ONCE_CAPS)
    caps = {k: TRAINER_DEFAULTS[k] for k in CAPPED_KEYS}
    caps.update(BUDGETS[budget])
    return caps


def budget_label(budget: str, resolved: dict[str, Any], budget_only: dict[str, Any]) -> str:
    """`budget`, or `custom` when the resolved config's epochs/patience differ from what the
    budget alone gives (`budget_only`: the same model and dataset without --config/--set)."""
    changed = any(resolved.get(k) != budget_only.get(k) for k in CAPPED_KEYS)
    return CUSTOM if changed else budget
