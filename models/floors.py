"""Two non-neural floors, fitted in closed form from the TRAIN split when built (`FittedOnce`: no
optimiser, no batch, one epoch under every budget). Every learned model should beat both.

`mostpop` — popularity: score(u, i) = n_i, the number of training interactions of item i, the same
for every user. Counts are exact in float32 (integers below 2^24), so items with equal counts get
EXACTLY equal scores and the shared evaluator (`mmbench.eval.evaluator.topk_lower_id`) ranks them by
the lower item id. The TopPop baseline of Dacrema et al. ("Are We Really Making Much Progress? A
Worrying Analysis of Recent Neural Recommendation Approaches", RecSys 2019).

`itemknn` — item-based k-nearest-neighbour collaborative filtering, the ItemKNN-CF baseline of
Dacrema et al. (RecSys 2019; after Sarwar et al., WWW 2001), with cosine similarity and a shrink term:
    sim(i, j) = r_i · r_j / (‖r_i‖ ‖r_j‖ + shrink),  i ≠ j,
where r_i ∈ {0,1}^users is item i's column of the binary training matrix R; each item i keeps its
`knn_k` most similar items N_k(i) (ties to the lower item id; only positive similarities); then
    score(u, i) = Σ_{j ∈ N_k(i) ∩ I_u} sim(i, j)      (I_u: u's training items),
i.e. scores = R W with W[j, i] = sim(i, j) for j ∈ N_k(i). The similarities are built block-wise
with sparse products (Rᵀ R for a block of items at a time, never items×items), and a chunk of users
is scored as a sparse×dense product that is dense only for that chunk ([chunk, n_items]).

Differences from Dacrema et al.'s code, stated: their `normalize=False` option (raw co-occurrence
counts) and other similarities (Jaccard, asymmetric, …) are not offered; ties in the top-k go to
the lower item id (theirs: argpartition order). As in theirs, an item is never its own neighbour.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from mmbench.config import Param
from mmbench.models.base import FittedOnce, register
from mmbench.models.graph import sparse_to_torch
from mmbench.models.knn import BLOCK_ELEMENTS


def binary_csr(train: sp.spmatrix) -> sp.csr_matrix:
    """The training matrix with every stored interaction set to 1 (explicit zeros dropped)."""
    r = sp.csr_matrix(train, dtype=np.float64, copy=True)
    r.eliminate_zeros()
    r.data[:] = 1.0
    r.sort_indices()
    return r


def positive_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the k largest POSITIVE entries ordered by (−value, column): ties to the lower column.

    Returns (values, columns) [rows, min(k, n)]; slots beyond a row's positive entries hold value 0
    (to be dropped). Only rows whose k-th and (k+1)-th values tie above 0 need a full stable sort."""
    n = s.shape[1]
    k = min(int(k), n)
    if k == 0:
        return s.new_zeros(s.shape[0], 0), torch.zeros(s.shape[0], 0, dtype=torch.long)
    vals, idx = torch.topk(s, min(k + 1, n), dim=1, sorted=True)
    boundary = torch.zeros(s.shape[0], dtype=torch.bool)
    if k < n:
        boundary = (vals[:, k - 1] == vals[:, k]) & (vals[:, k - 1] > 0)
    vals, idx = vals[:, :k], idx[:, :k]
    idx, by_id = torch.sort(idx, dim=1)  # within the selected set: lower column first ...
    vals = torch.gather(vals, 1, by_id)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)  # ... then by value
    idx = torch.gather(idx, 1, order)
    rows = torch.nonzero(boundary).squeeze(1)
    if rows.numel():  # the tie straddles the k-th place: which tied columns get in depends on the id
        full_vals, full_idx = torch.sort(s[rows], dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = full_vals[:, :k], full_idx[:, :k]
    return vals, idx


def item_knn_graph(train: sp.spmatrix, k: int, shrink: float = 0.0, block: int | None = None) -> sp.csr_matrix:
    """W [n_items, n_items] with W[j, i] = sim(i, j) for the k most similar items j of each item i.

    Rows of the co-occurrence counts C = Rᵀ R are computed for a block of items at a time as a sparse
    product, turned into similarities, and only that block is dense ([block, n_items], at most
    `BLOCK_ELEMENTS` entries) for the tie-aware top-k: ordered by (−sim, j), ties to the lower item
    id (`positive_topk`). The item itself and non-positive similarities are never kept."""
    r = binary_csr(train)
    n_items = r.shape[1]
    rt = r.T.tocsr()
    norms = np.sqrt(np.asarray(r.sum(axis=0)).ravel())  # binary: ‖r_i‖² = n_i
    k = min(int(k), n_items)
    block = int(block) if block else max(1, BLOCK_ELEMENTS // max(n_items, 1))
    out_rows, out_cols, out_vals = [], [], []
    for lo in range(0, n_items, block):
        hi = min(n_items, lo + block)
        c = (rt[lo:hi] @ r).tocoo()  # [block, n_items] co-occurrence counts, sparse
        rows = c.row.astype(np.int64)
        cols = c.col.astype(np.int64)
        sims = np.zeros((hi - lo, n_items))
        sims[rows, cols] = c.data / (norms[rows + lo] * norms[cols] + float(shrink))
        sims[np.arange(hi - lo), np.arange(lo, hi)] = 0.0  # never its own neighbour
        vals, idx = positive_topk(torch.from_numpy(sims), k)
        vals, idx = vals.numpy(), idx.numpy()
        keep = vals > 0
        out_rows.append(np.broadcast_to(np.arange(lo, hi)[:, None], idx.shape)[keep])
        out_cols.append(idx[keep])
        out_vals.append(vals[keep])
    rows = np.concatenate(out_rows) if out_rows else np.zeros(0, np.int64)
    cols = np.concatenate(out_cols) if out_cols else np.zeros(0, np.int64)
    vals = np.concatenate(out_vals) if out_vals else np.zeros(0)
    # Stored as W[j, i] (neighbour j → target i), so that scores = R W.
    return sp.csr_matrix((vals, (cols, rows)), shape=(n_items, n_items))


def dense_user_rows(crow: torch.Tensor, col: torch.Tensor, users: torch.Tensor, n_items: int) -> torch.Tensor:
    """Rows `users` of a binary CSR matrix (given by its row pointer and column indices) as a dense
    [len(users), n_items] float32 tensor: only one chunk of users is ever dense."""
    users = users.to(crow.device).long()
    starts = crow[users]
    counts = crow[users + 1] - starts
    out = torch.zeros(len(users), n_items, dtype=torch.float32, device=crow.device)
    total = int(counts.sum())
    if total == 0:
        return out
    row_ids = torch.repeat_interleave(torch.arange(len(users), device=crow.device), counts)
    first = torch.cumsum(counts, 0) - counts
    offsets = torch.arange(total, device=crow.device) - torch.repeat_interleave(first, counts)
    out[row_ids, col[torch.repeat_interleave(starts, counts) + offsets]] = 1.0
    return out


@register("mostpop")
class MostPop(FittedOnce):
    """Popularity floor: score(u, i) = training interactions of item i (Dacrema et al.'s TopPop).

    No parameters (TopPop has none either)."""

    defaults: dict = {}

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        r = binary_csr(data.train)
        counts = np.bincount(r.indices, minlength=data.n_items).astype(np.float32)
        self.register_buffer("counts", torch.from_numpy(counts), persistent=False)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.unsqueeze(0).repeat(len(users), 1)


@register("itemknn")
class ItemKNN(FittedOnce):
    """Item-kNN floor: cosine top-k neighbours of the training columns (Dacrema et al.'s ItemKNN-CF).

    Defaults: Dacrema et al.'s ItemKNNCFRecommender.fit (RecSys 2019 code,
    MaurizioFD/RecSys2019_DeepLearning_Evaluation, KNN/ItemKNNCFRecommender.py): topK 50, shrink 100,
    cosine similarity, normalize=True."""

    defaults = {
        "knn_k": Param(50, int, min=1, doc="neighbours kept per item"),
        "shrink": Param(100.0, float, min=0, doc="added to the cosine's denominator"),
    }

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        r = binary_csr(data.train)
        w = item_knn_graph(r, cfg.knn_k, cfg.shrink)
        # Wᵀ as CSR, so that a chunk's scores X W = (Wᵀ Xᵀ)ᵀ are one sparse × dense product.
        self.register_buffer("sim_t", sparse_to_torch(w.T.tocsr()), persistent=False)
        self.register_buffer("train_crow", torch.from_numpy(r.indptr.astype(np.int64)), persistent=False)
        self.register_buffer("train_col", torch.from_numpy(r.indices.astype(np.int64)), persistent=False)

    def similarity(self) -> sp.csr_matrix:
        """W (W[j, i] = sim(i, j) for j ∈ N_k(i)) as scipy CSR, for inspection."""
        t = self.sim_t.cpu()
        wt = sp.csr_matrix((t.values().numpy(), t.col_indices().numpy(), t.crow_indices().numpy()),
                           shape=tuple(t.shape))
        return wt.T.tocsr()

    def score(self, users: torch.Tensor) -> torch.Tensor:
        x = dense_user_rows(self.train_crow, self.train_col, users, self.n_items)  # [chunk, I]
        return (self.sim_t @ x.T.contiguous()).T.contiguous()  # score(u, i) = Σ_j x[u, j] W[j, i]
