"""A small synthetic dataset with a planted signal, for tests and smoke runs without real data.

Items have latent factors; every modality is a noisy linear map of them, and users pick items by
user x item affinity. So item features carry real information about who interacts with what, and
a model that uses them must beat random (and one that ignores them can still learn from the
interactions). Deterministic by seed; split with the same per-user rule as MovieLens-100K.
"""
from __future__ import annotations

import numpy as np

from mmbench.data.dataset import Dataset
from mmbench.data.readers import build_dataset, split_per_user

DEFAULT_MODALITIES = {"image": 32, "text": 16}


def make_synthetic(n_users: int = 300, n_items: int = 200, n_factors: int = 8,
                   modalities: dict[str, int] | None = None, density: float = 0.05, seed: int = 0,
                   feature_noise: float = 0.5, temperature: float = 0.5,
                   split_seed: int | None = None) -> Dataset:
    """Planted-signal dataset: `density` x n_items interactions per user on average (at least 3).

    feature_noise: std of the Gaussian noise added to each modality (signal has unit scale).
    temperature: lower = users follow their affinity more strictly (less random picks).
    split_seed: seed of the per-user split (defaults to `seed`).
    """
    modalities = dict(DEFAULT_MODALITIES if modalities is None else modalities)
    if n_items < 4 or n_users < 1 or n_factors < 1:
        raise ValueError("make_synthetic needs n_users >= 1, n_items >= 4, n_factors >= 1")
    rng = np.random.default_rng(seed)
    item_f = rng.standard_normal((n_items, n_factors))
    user_f = rng.standard_normal((n_users, n_factors))
    features = {}
    for name, dim in modalities.items():
        proj = rng.standard_normal((n_factors, dim)) / np.sqrt(n_factors)
        feat = item_f @ proj + feature_noise * rng.standard_normal((n_items, dim))
        features[name] = (feat.astype(np.float32), f"synthetic:{name}")

    mean = max(3.0, density * n_items)
    counts = np.clip(3 + rng.poisson(mean - 3, size=n_users), 3, n_items - 1)
    users, items = [], []
    chunk = max(1, 2_000_000 // n_items)  # bounded memory: never a full users x items block
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        affinity = user_f[lo:hi] @ item_f.T / np.sqrt(n_factors)
        gumbel = -np.log(-np.log(rng.random(affinity.shape)))
        ranked = np.argsort(-(affinity / temperature + gumbel), axis=1, kind="stable")
        for row, u in enumerate(range(lo, hi)):  # Gumbel top-k = sampling without replacement
            picked = ranked[row, : counts[u]]
            users.append(np.full(len(picked), u, dtype=np.int64))
            items.append(picked.astype(np.int64))
    users, items = np.concatenate(users), np.concatenate(items)

    parts = split_per_user(users, items, n_users, seed if split_seed is None else split_seed)
    splits = {s: (u, i, "synthetic") for s, (u, i) in parts.items()}
    params = {"n_users": n_users, "n_items": n_items, "n_factors": n_factors,
              "modalities": modalities, "density": density, "seed": seed,
              "feature_noise": feature_noise, "temperature": temperature,
              "split_seed": seed if split_seed is None else split_seed}
    meta = {"layout": "synthetic", "directory": None, "files": [], "params": params}
    return build_dataset("synthetic", splits, features, meta, n_items=n_items)
