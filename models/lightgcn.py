"""LightGCN (He et al., SIGIR 2020): linear propagation over the symmetric-normalised user–item
graph, no feature transforms or non-linearities; the final embedding is the mean over layers 0..L.

A best epoch of 1 under `--budget quick` on ML-100K (valid R@20 .1998, then .1959 .1944 .1955: the
reference record results/reference/runs/ml100k/lightgcn/48f2ec1ea7-seed2024) is a dip that patience 3
cuts short, not a peak: valid dips while the BPR loss leaves 0.69 (.1984 at epoch 5), then climbs,
.2320 at 10, .2672 at 20, best .3599 at epoch 204 under the full budget
(results/fidelity/runs/ml100k-270d637e/lightgcn/3592ed4d0f-seed2024)."""
from __future__ import annotations

import torch
from torch import nn

from mmbench.models.base import Batch, EmbeddingRecommender, bpr_loss, l2_per_batch, register
from mmbench.models.graph import normalized_bipartite_adjacency, spmm


def propagate(adj: torch.Tensor, ego: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Mean of [E, ÂE, Â²E, ...]: LightGCN's layer combination with α_k = 1/(L+1). Â is symmetric, so
    each layer's backward reuses Â itself as the transpose."""
    out = ego
    layer = ego
    for _ in range(n_layers):
        layer = spmm(adj, layer)
        out = out + layer
    return out / (n_layers + 1)


@register("lightgcn")
class LightGCN(EmbeddingRecommender):
    """Regularisation: `reg_weight` · ½‖ego embeddings of the batch‖² / batch (as in the paper's code)."""

    defaults = {"n_layers": 2, "reg_weight": 1e-4}

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        self.user_emb = nn.Embedding(data.n_users, cfg.embedding_size)
        self.item_emb = nn.Embedding(data.n_items, cfg.embedding_size)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.register_buffer("adj", normalized_bipartite_adjacency(data.train), persistent=False)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        out = propagate(self.adj, ego, self.cfg.n_layers)
        return out[: self.n_users], out[self.n_users :]

    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        users, items = self.forward()
        u, i, j = users[batch.users], items[batch.pos], items[batch.neg]
        bpr = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        reg = self.cfg.reg_weight * l2_per_batch(
            self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg)
        )
        return {"loss": bpr + reg, "bpr": bpr, "reg": reg}

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward()
