"""MMSSL's graphs: the one-sided normalised interaction graphs (Eqs. 2, 8, 10), the batch's training
positives, and the semantic-neighbour pairs taken from top-k relation rows (Eq. 8).

Nothing here forms a users×items matrix: graphs are sparse, the batch rows are [B, I] at most.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from mmbench.models.graph import Graph


def one_sided_norm(r: sp.spmatrix) -> sp.csr_matrix:
    """diag((deg + 1e-8)^-½) · R (scipy, float32).

    The official code's normalisation (spec §1.4): entry [u, i] = 1/√|N_u| (one-sided, not the
    symmetric LightGCN one). Duplicate coordinates are summed first (the rebuilt semantic graphs count a
    pair twice when it was collected twice). Zero-degree rows have no entries, so they stay zero (no NaN).
    """
    r = sp.csr_matrix(r, dtype=np.float64)
    r.sum_duplicates()
    deg = np.asarray(r.sum(axis=1)).ravel()
    d = sp.diags(np.power(deg + 1e-8, -0.5))
    return sp.csr_matrix(d @ r, dtype=np.float32)


def bipartite_pair(r: sp.spmatrix, device: torch.device) -> tuple[Graph, Graph]:
    """(Â_ui [U, I], Â_iu [I, U]): each side normalised by its own degree (spec §1.4, paper Eq. 10)."""
    r = sp.csr_matrix(r)
    return (Graph.from_scipy(one_sided_norm(r), device),
            Graph.from_scipy(one_sided_norm(r.T.tocsr()), device))


def coo_matrix(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape) -> sp.csr_matrix:
    """A [U, I] matrix from coordinate lists; duplicates are summed (as the official rebuild does)."""
    m = sp.coo_matrix((vals.astype(np.float64), (rows.astype(np.int64), cols.astype(np.int64))), shape=shape)
    return m.tocsr()


def batch_positions(indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(row in batch, item) of every training positive of the batch users, built on the device."""
    start, end = indptr[users], indptr[users + 1]
    deg = end - start
    rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), deg)
    offset = torch.arange(int(deg.sum()), device=users.device) - torch.repeat_interleave(
        torch.cumsum(deg, 0) - deg, deg)
    cols = indices[torch.repeat_interleave(start, deg) + offset]
    return rows, cols


def dense_mask(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_items: int) -> torch.Tensor:
    """The batch's dense binary training rows r_b as float32 [B, I] (built once per batch)."""
    m = torch.zeros(n_rows, n_items, device=rows.device)
    m[rows, cols] = 1.0
    return m


def topk_pairs(users: torch.Tensor, top_items: torch.Tensor, official_pairing: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, item) pairs from per-user top-k item lists [B, k].

    Paper: each user with its own top-k items. Official code: the user list is tiled
    ([u1..uB, u1..uB, ...]) while the items are flattened row by row, so pair j is
    (u_{j mod B}, item_{⌊j/k⌋, j mod k}): wrong users for k > 1 (spec §4.1).
    """
    k = top_items.shape[1]
    items = top_items.reshape(-1)
    if official_pairing:
        return users.repeat(k), items
    return users.repeat_interleave(k), items
