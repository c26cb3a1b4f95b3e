"""Reading schema-1 run records (wave 1, before budgets, thread counts and data fingerprints were
recorded) as today's `RunRecord`: the facts they lack are recovered where they can be, and marked
unknown where they cannot — an unknown dataset is shown in reports but never ranked."""
from __future__ import annotations

from functools import lru_cache

from mmbench.records import UNKNOWN


def budget_of_schema1(model: str, dataset: str, config: dict) -> str:
    """The named budget whose epochs/patience (with the model's preset for `dataset`) match the
    record's config; `custom` when none does or the model no longer exists."""
    from mmbench.budget import BUDGETS, CUSTOM, CAPPED_KEYS
    from mmbench.errors import MMBenchError
    from mmbench.runner import model_config

    for budget in BUDGETS:
        try:
            caps = model_config(model, dataset, budget)
        except MMBenchError:
            return CUSTOM
        if all(caps.get(k) == config.get(k) for k in CAPPED_KEYS):
            return budget
    return CUSTOM


def fingerprint_of_schema1(name: str, checksums: dict, modalities: list) -> str:
    """The fingerprint of the card's data today, if the record's file checksums are today's files'
    (same files, same reader → same content); `unknown` otherwise or when the data is absent."""
    current = _card_dataset(name)
    if current is None or not checksums or dict(current.checksums) != dict(checksums):
        return UNKNOWN
    try:
        return current.select_modalities(list(modalities) or None).fingerprint
    except Exception:  # noqa: BLE001 - a modality that no longer exists: unknown, not a crash
        return UNKNOWN


@lru_cache(maxsize=8)
def _card_dataset(name: str):
    """The card's dataset as loaded today, or None (not a card, files absent or changed)."""
    from mmbench.data.registry import card, load_dataset
    from mmbench.errors import MMBenchError

    try:
        c = card(name)
        if not c.get("files"):
            return None  # generated data: its parameters are not in a schema-1 record
        return load_dataset(name)
    except (MMBenchError, OSError):
        return None
