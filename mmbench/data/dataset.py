"""The in-memory dataset every model, trainer and evaluator shares.

Splits are binary users x items CSR matrices (float32 ones; scipy's index dtype, which must be the
same for indptr and indices — int32 below 2**31 stored pairs, as scipy chooses); features are float32
[n_items, d] arrays keyed by modality name. Models only ever receive `train_view()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

SPLITS = ("train", "valid", "test")


def to_csr(rows, cols, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary CSR with canonical dtypes (float32 ones, sorted indices, scipy's index dtype)."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    m = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_items)
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return canonical_csr(m)


def canonical_csr(m: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sort_indices()
    return m


@dataclass
class Dataset:
    name: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    features: dict[str, np.ndarray] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # card facts: provenance, missing modalities, layout
    # Original id tokens per dense index when the files' ids are not already 0..n-1 (ML-100K).
    user_tokens: np.ndarray | None = None
    item_tokens: np.ndarray | None = None

    def split(self, name: str) -> sp.csr_matrix:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def statistics(self) -> dict:
        train_user_deg = np.diff(self.train.indptr)
        train_item_deg = np.asarray(self.train.sum(axis=0)).ravel()
        n_inter = {s: int(self.split(s).nnz) for s in SPLITS}
        total = sum(n_inter.values())
        return {
            "n_users": int(self.n_users),
            "n_items": int(self.n_items),
            "interactions": n_inter,
            "density": total / float(self.n_users * self.n_items) if self.n_users and self.n_items else 0.0,
            "users_without_train": int((train_user_deg == 0).sum()),
            "items_without_train": int((train_item_deg == 0).sum()),
            "valid_users": int((np.diff(self.valid.indptr) > 0).sum()),
            "test_users": int((np.diff(self.test.indptr) > 0).sum()),
            "modalities": {m: list(f.shape) for m, f in self.features.items()},
        }

    def select_modalities(self, names: list[str] | None) -> "Dataset":
        """A shallow copy with only the named modalities (unknown names are an error)."""
        if names is None:
            return self
        from mmbench.errors import ConfigError

        unknown = [n for n in names if n not in self.features]
        if unknown:
            raise ConfigError(
                f"modalities {unknown} not in dataset {self.name!r} (has {self.modalities})"
            )
        return Dataset(
            self.name, self.n_users, self.n_items, self.train, self.valid, self.test,
            {n: self.features[n] for n in names}, self.checksums, self.meta,
            self.user_tokens, self.item_tokens,
        )

    def train_view(self) -> "TrainData":
        return TrainData(self.n_users, self.n_items, self.train, self.features, self.name)


@dataclass(frozen=True)
class TrainData:
    """What a model may see: the training interactions and the item features, nothing else."""

    n_users: int
    n_items: int
    train: sp.csr_matrix
    features: dict[str, np.ndarray]
    name: str = ""
