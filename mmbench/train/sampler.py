"""The shared BPR sampler: every training pair once per epoch, one uniform negative each.

Negatives are drawn uniformly over all items and rejected (redrawn) when they are among the user's
training items, all vectorised: membership is a `searchsorted` on the sorted keys user*n_items+item.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from mmbench.train.batch import Batch


class BPRSampler:
    def __init__(self, train: sp.csr_matrix, batch_size: int, seed: int):
        self.n_users, self.n_items = train.shape
        coo = train.tocoo()
        order = np.lexsort((coo.col, coo.row))
        self.users = coo.row[order].astype(np.int64)
        self.items = coo.col[order].astype(np.int64)
        self.keys = self.users * self.n_items + self.items  # sorted
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(seed)
        deg = np.diff(train.indptr)
        self._full_users = set(np.flatnonzero(deg >= self.n_items).tolist())

    def __len__(self) -> int:
        return max(1, -(-len(self.users) // self.batch_size))

    def is_train_pair(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys

    def sample_negatives(self, users: np.ndarray) -> np.ndarray:
        neg = self.rng.integers(0, self.n_items, size=len(users))
        bad = self.is_train_pair(users, neg)
        if self._full_users:
            bad &= ~np.isin(users, list(self._full_users))  # nothing to reject to: keep the draw
        tries = 0
        while bad.any():
            idx = np.flatnonzero(bad)
            neg[idx] = self.rng.integers(0, self.n_items, size=len(idx))
            bad[idx] = self.is_train_pair(users[idx], neg[idx])
            tries += 1
            if tries > 1000:
                raise RuntimeError("negative sampling did not converge")
        return neg

    def epoch(self) -> Iterator[Batch]:
        perm = self.rng.permutation(len(self.users))
        for start in range(0, len(perm), self.batch_size):
            idx = perm[start : start + self.batch_size]
            u = self.users[idx]
            yield Batch(
                torch.from_numpy(u),
                torch.from_numpy(self.items[idx]),
                torch.from_numpy(self.sample_negatives(u)),
            )

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
