"""Reading schema-1 run records (wave 1, before budgets, thread counts and data fingerprints were
recorded) as today's `RunRecord`: the facts they lack are recovered where they can be, and marked
unknown where they cannot — an unknown dataset is shown in reports but never ranked."""
from __future__ import annotations

from functools import lru_cache

from mmbench.records import UNKNOWN


# The budget table of wave 1, frozen: schema-1 records were made under it, and today's `full` caps
# (1000 epochs / patience 20 for every model) are not theirs. Wave 1's `full` was each model's own
# settings: 500 epochs / patience 20, MMSSL and its variants 1000 / 8 (the authors' code); `quick` and
# `smoke` capped every model at 10 / 3 and 2 / 1, its heavy models (the MMSSL family, SGL, NCL) at 1 / 1.
WAVE1_MMSSL = ("mmssl", "mmssl-official", "mmssl-wo-asl", "mmssl-wo-cl", "mmssl-wo-gt", "mmssl-rp-gae")
WAVE1_HEAVY = WAVE1_MMSSL + ("recbole-sgl", "recbole-ncl")
WAVE1_FULL = {"epochs": 500, "patience": 20}
WAVE1_MMSSL_FULL = {"epochs": 1000, "patience": 8}
WAVE1_CAPS = {"quick": {"epochs": 10, "patience": 3}, "smoke": {"epochs": 2, "patience": 1}}
WAVE1_HEAVY_CAPS = {"quick": {"epochs": 1, "patience": 1}, "smoke": {"epochs": 1, "patience": 1}}


def wave1_caps(model: str, budget: str) -> dict:
    """The epochs/patience `budget` gave `model` in wave 1 (the frozen table above)."""
    if budget == "full":
        return dict(WAVE1_MMSSL_FULL if model in WAVE1_MMSSL else WAVE1_FULL)
    return dict((WAVE1_HEAVY_CAPS if model in WAVE1_HEAVY else WAVE1_CAPS)[budget])


def budget_of_schema1(model: str, dataset: str, config: dict) -> str:
    """The named budget whose wave-1 epochs/patience (`wave1_caps`) match the record's config;
    `custom` when none does or the model no longer exists. `dataset` is unused since wave 1 had no
    per-dataset caps; it stays in the signature the record reader calls."""
    from mmbench.budget import CAPPED_KEYS, CUSTOM
    from mmbench.models.base import registry

    if model not in registry(allow_broken=True):  # a broken zoo module is reported elsewhere
        return CUSTOM
    for budget in ("full", "quick", "smoke"):
        caps = wave1_caps(model, budget)
        if all(caps[k] == config.get(k) for k in CAPPED_KEYS):
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


def adopt_sibling_fingerprints(recs: list) -> list:
    """Schema-1 records whose fingerprint is `unknown` only because the data is absent here take the
    fingerprint of a schema-2 record read beside them with the same dataset name, the same file
    checksums and the same modalities (same files, same reader → same content). Where the siblings
    disagree, or none exists, the record stays `unknown`. Returns the records, replaced where adopted."""
    import dataclasses

    known: dict[tuple, set[str]] = {}
    for r in recs:
        ds = r.dataset
        if ds.fingerprint != UNKNOWN and ds.checksums:
            key = (ds.name, tuple(sorted(ds.checksums.items())), tuple(ds.modalities))
            known.setdefault(key, set()).add(ds.fingerprint)
    out = []
    for r in recs:
        ds = r.dataset
        key = (ds.name, tuple(sorted(ds.checksums.items())), tuple(ds.modalities))
        found = known.get(key, set())
        if ds.fingerprint == UNKNOWN and ds.checksums and len(found) == 1:
            r = dataclasses.replace(r, dataset=dataclasses.replace(ds, fingerprint=next(iter(found))))
        out.append(r)
    return out


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
