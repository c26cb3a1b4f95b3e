"""Small pieces the multimodal models share: the item features as device-following tensors, their
normalisation, and the mean-aggregation graph (MMGCN-style message passing).

Features are data, not state: they are held as non-persistent buffers, so they follow `.to(device)`
but never bloat checkpoints or the trainer's best-state snapshots.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmbench.errors import ConfigError
from mmbench.models.graph import bipartite_adjacency, sparse_to_torch

FEATURE_NORMS = ("none", "l2", "zscore")


def normalize_features(x: np.ndarray, how: str) -> np.ndarray:
    """Put modalities of very different scales on a common footing (TikTok: image row norm ~33,
    audio ~4.5). `l2`: unit rows; `zscore`: zero-mean columns of variance 1/d, so rows have unit norm
    on average (the same scale as `l2`, without l2's shared mean direction: TikTok's unit image rows
    all point within ~25° of their mean); `none`: raw. All-zero rows/constant columns stay zero."""
    x = np.asarray(x, dtype=np.float64)
    if how == "none":
        out = x
    elif how == "l2":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        out = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    elif how == "zscore":
        std = x.std(axis=0, keepdims=True)
        std = std * np.sqrt(x.shape[1])
        out = np.divide(x - x.mean(axis=0, keepdims=True), std, out=np.zeros_like(x), where=std > 0)
    else:
        raise ConfigError(f"feature_norm must be one of {', '.join(FEATURE_NORMS)}, got {how!r}")
    return out.astype(np.float32)


class ItemFeatures(nn.Module):
    """The item feature matrices of the selected modalities, in a fixed order.

    `modalities=None` keeps every modality of `features` (the runner has already applied the
    `modalities` config key). Buffers are indexed by position, so any modality name works.
    """

    def __init__(self, features: dict[str, np.ndarray], norm: str = "l2",
                 modalities: list[str] | None = None):
        super().__init__()
        names = list(features) if modalities is None else list(modalities)
        missing = [m for m in names if m not in features]
        if missing:
            raise ConfigError(f"modalities {missing} not among the item features {list(features)}")
        if not names:
            raise ConfigError("this model needs at least one item feature modality")
        self.names = names
        for k, name in enumerate(names):
            feat = torch.from_numpy(normalize_features(features[name], norm))
            self.register_buffer(f"_feat{k}", feat, persistent=False)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, k: int) -> torch.Tensor:
        return getattr(self, f"_feat{k}")

    def all(self) -> list[torch.Tensor]:
        return [self[k] for k in range(len(self))]

    @property
    def dims(self) -> list[int]:
        return [int(t.shape[1]) for t in self.all()]

    def concat(self) -> torch.Tensor:
        """[n_items, Σ d_m]: every modality side by side (VBPR's and LightGCN-M's content input)."""
        return torch.cat(self.all(), dim=1)


def mean_bipartite_adjacency(train: sp.csr_matrix) -> torch.Tensor:
    """D⁻¹A of the (U+I)×(U+I) user–item graph as torch sparse CSR: each node averages its
    neighbours (users over their items, items over their users). Zero-degree rows stay empty, so
    such nodes aggregate to 0, never NaN."""
    a = bipartite_adjacency(train).astype(np.float64)
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    inv[deg > 0] = 1.0 / deg[deg > 0]
    return sparse_to_torch(sp.diags(inv) @ a)
