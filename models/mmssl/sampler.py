"""MMSSL's per-user batch sampling (the official code's `sample()`, spec §1.3).

Each batch draws `batch_size` DISTINCT users uniformly from the users with at least one training item
(with replacement only when the batch is larger than that set, as the code does), one positive uniformly
from each user's training items and one negative uniformly over all items, redrawn while it is one of
the user's training items. An epoch is ⌊n_train / batch_size⌋ + 1 batches. So users are sampled
uniformly per user, not per interaction (the shared BPR sampler visits every pair once per epoch).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from mmbench.models.base import Batch


class PerUserSampler:
    """Same interface as `mmbench.train.sampler.BPRSampler`: `epoch()`, `len()`, state dicts."""

    def __init__(self, train: sp.csr_matrix, batch_size: int, seed: int):
        train = sp.csr_matrix(train)
        train.sort_indices()
        self.n_users, self.n_items = train.shape
        self.indptr = train.indptr.astype(np.int64)
        self.indices = train.indices.astype(np.int64)
        self.degree = np.diff(self.indptr)
        self.exist_users = np.flatnonzero(self.degree > 0)
        if len(self.exist_users) == 0:
            raise ValueError("per-user sampling needs at least one user with a training item")
        rows = np.repeat(np.arange(self.n_users, dtype=np.int64), self.degree)
        self.keys = rows * self.n_items + self.indices  # sorted: CSR order with sorted indices
        self.n_train = int(train.nnz)
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.n_train // self.batch_size + 1

    def _is_train(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[at] == keys

    def sample(self) -> Batch:
        b = self.batch_size
        replace = b > len(self.exist_users)
        users = self.rng.choice(self.exist_users, size=b, replace=replace)
        deg = self.degree[users]
        pos = self.indices[self.indptr[users] + np.floor(self.rng.random(b) * deg).astype(np.int64)]
        neg = self.rng.integers(0, self.n_items, size=b)
        bad = self._is_train(users, neg) & (deg < self.n_items)  # a user with every item keeps the draw
        while bad.any():
            idx = np.flatnonzero(bad)
            neg[idx] = self.rng.integers(0, self.n_items, size=len(idx))
            bad[idx] = self._is_train(users[idx], neg[idx])
        return Batch(torch.from_numpy(users.astype(np.int64)), torch.from_numpy(pos),
                     torch.from_numpy(neg.astype(np.int64)))

    def epoch(self) -> Iterator[Batch]:
        for _ in range(len(self)):
            yield self.sample()

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
