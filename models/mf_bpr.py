"""MF-BPR (Rendle et al., UAI 2009): matrix factorisation trained with the BPR pairwise loss."""
from __future__ import annotations

import torch
from torch import nn

from mmbench.models.base import Batch, Recommender, bpr_loss, l2_per_batch, register


@register("mf-bpr")
class MFBPR(Recommender):
    """Score = user factor · item factor; L2 on the batch's factors (`reg_weight`)."""

    defaults = {"reg_weight": 1e-4}

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        self.user_emb = nn.Embedding(data.n_users, cfg.embedding_size)
        self.item_emb = nn.Embedding(data.n_items, cfg.embedding_size)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)

    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        u, i, j = self.user_emb(batch.users), self.item_emb(batch.pos), self.item_emb(batch.neg)
        bpr = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        reg = self.cfg.reg_weight * l2_per_batch(u, i, j)
        return {"loss": bpr + reg, "bpr": bpr, "reg": reg}

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_emb(users) @ self.item_emb.weight.T
