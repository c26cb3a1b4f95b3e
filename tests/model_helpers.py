"""Helpers shared by the model test files: tiny fixtures with zero-degree nodes, configs, baselines."""
from __future__ import annotations

import numpy as np
import torch

from mmbench.data.dataset import TrainData, to_csr
from mmbench.models.base import get_model_class
from mmbench.runner import model_config
from mmbench.train.trainer import resolve_device

CPU = resolve_device("cpu")
MODALITY_SETS = {1: {"image": 24}, 2: {"image": 24, "text": 12}, 3: {"image": 24, "text": 12, "audio": 6}}


def cfg(name: str, *sets: str):
    return model_config(name, "synthetic", "full", None, list(sets))


def build(name: str, data: TrainData, *sets: str, seed: int = 0):
    torch.manual_seed(seed)
    return get_model_class(name)(data, cfg(name, *sets))


def tiny(n_modalities: int = 2, n_items: int = 12) -> TrainData:
    """10 users × n_items; user 9 and the last two items have no training interactions."""
    rng = np.random.default_rng(0)
    rows, cols = [], []
    for u in range(9):
        for i in rng.choice(n_items - 2, size=3, replace=False):
            rows.append(u)
            cols.append(int(i))
    train = to_csr(rows, cols, 10, n_items)
    feats = {m: rng.standard_normal((n_items, d)).astype(np.float32) for m, d in MODALITY_SETS[n_modalities].items()}
    feats[next(iter(feats))][n_items - 1] = 0.0  # an all-zero feature row must not produce NaN either
    return TrainData(10, n_items, train, feats, "tiny")


def random_recall(data, split: str, k: int = 20) -> float:
    """Expected Recall@k of a uniformly random ranking over the unmasked (non-train) items."""
    held = data.split(split)
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    candidates = data.n_items - np.diff(data.train.indptr)[users]
    return float(np.mean(np.minimum(1.0, k / candidates)))
