"""SLMRec (Tao et al., IEEE TMM 2022): self-supervised learning for multimedia recommendation on a
LightGCN backbone.

Backbone: one LightGCN (3 layers, mean over layers, D^-½ A D^-½) per branch b ∈ {id, m_1..m_M}; every
branch shares the user ID table as its user input, and its item input is the item ID table (id) or
Linear_m(normalise(f_m)) (modality m). Because propagation is linear and column-wise, the 1+M branches
run as ONE propagation of the concatenated [n, 64·(1+M)] input. Fusion: user = Linear_u(concat of the
user branches), item = Linear_i(concat of the item branches), 64-d. Score = user · item.
Main loss: in-batch softmax (InfoNCE) of cosine(user, positive item) / `temp` (the sampled negatives
are not used, as in the original). Auxiliary: `ssl_alpha` · one self-supervised task (`ssl_task`),
InfoNCE with cosine similarity / `ssl_temp` over the batch's distinct positive items:
* FAC (fine and coarse, default): a chain of spaces; level 1 aligns g_1(i_id) with h_1(i_{m_1}) in a
  fine 64-d space, level l ≥ 2 projects the previous level's id view further, g_l(·), into a coarser
  32-d space and aligns it with h_l(i_{m_l}) (original: id→v, (id,v)→a, (id,v,a)→t);
* FD (feature dropout): two views of the concatenated item branches with independent dropout masks
  (rate `ssl_dropout`), each fused by Linear_i, aligned with each other;
* FM (feature masking): two views in each of which every item has one random modality branch zeroed.
The augmentations act on the propagated branch outputs (no extra graph propagation per view).
Regularisation: Adam weight decay 1e-4 on all parameters, as the original.

Protocol difference: the original (NeuRec) has no validation split and reports the epoch with the best
TEST Recall@10 (stopping 50 epochs after it). Here the shared trainer selects the epoch on VALID
only and evaluates test once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.config import Param
from mmbench.errors import ConfigError
from mmbench.models.base import Batch, EmbeddingRecommender, register
from mmbench.models.graph import normalized_bipartite_adjacency
from mmbench.models.lightgcn import propagate

SSL_TASKS = ("FAC", "FD", "FM", "none")


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of matching row r of `a` to row r of `b` among all rows of `b` (cosine logits)."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


@register("slmrec")
class SLMRec(EmbeddingRecommender):
    """Defaults from the original configuration: 3 layers, temp 0.2, ssl_temp 0.2, ssl_alpha 0.1,
    FAC, lr 0.01, Adam weight decay 1e-4, batch 2048."""

    uses_features = True
    defaults = {
        "n_layers": 3,
        "temp": Param(0.2, float, min=0, min_exclusive=True, doc="temperature of the main InfoNCE"),
        "ssl_task": Param("FAC", str, choices=SSL_TASKS),
        "ssl_temp": Param(0.2, float, min=0, min_exclusive=True, doc="temperature of the SSL InfoNCE"),
        "ssl_alpha": 0.1,
        "ssl_dropout": Param(0.1, float, min=0, max=1, max_exclusive=True, doc="feature dropout (FD only)"),
        "lr": 1e-2,
        "weight_decay": 1e-4,
    }

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        if cfg.ssl_task not in SSL_TASKS:
            raise ConfigError(f"slmrec: ssl_task must be one of {', '.join(SSL_TASKS)}, got {cfg.ssl_task!r}")
        d = cfg.embedding_size
        self.modalities = list(data.features)
        n_branches = 1 + len(self.modalities)
        self.user_emb = nn.Embedding(data.n_users, d)
        self.item_emb = nn.Embedding(data.n_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.item_input = nn.ModuleList()
        for i, m in enumerate(self.modalities):
            feat = F.normalize(torch.tensor(data.features[m], dtype=torch.float32), dim=1)
            self.register_buffer(f"feat_{i}", feat, persistent=False)
            self.item_input.append(nn.Linear(feat.shape[1], d))
        self.register_buffer("adj", normalized_bipartite_adjacency(data.train), persistent=False)
        self.fuse_user = nn.Linear(n_branches * d, d)
        self.fuse_item = nn.Linear(n_branches * d, d)
        # FAC: level l maps the id chain (g) and modality l (h) into a shared space.
        dims = [d] + [max(1, d // 2)] * (len(self.modalities) - 1)
        self.fac_g = nn.ModuleList(nn.Linear(d if l == 0 else dims[l - 1], dims[l]) for l in range(len(dims)))
        self.fac_h = nn.ModuleList(nn.Linear(d, dims[l]) for l in range(len(dims)))

    # ---- backbone -------------------------------------------------------------------------------
    def branches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagated user and item branch outputs, [U, 1+M, d] and [I, 1+M, d] (branch 0 = id)."""
        n_b = 1 + len(self.modalities)
        items = [self.item_emb.weight] + [lin(getattr(self, f"feat_{i}")) for i, lin in enumerate(self.item_input)]
        users = self.user_emb.weight.repeat(1, n_b)
        ego = torch.cat([users, torch.cat(items, dim=1)])
        out = propagate(self.adj, ego, self.cfg.n_layers).view(-1, n_b, self.cfg.embedding_size)
        return out[: self.n_users], out[self.n_users :]

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ub, ib = self.branches()
        return self.fuse_user(ub.flatten(1)), self.fuse_item(ib.flatten(1)), ib

    # ---- losses -----------------------------------------------------------------------------------
    def ssl_loss(self, ib: torch.Tensor) -> torch.Tensor:
        """The configured self-supervised task on item branch outputs ib [n, 1+M, d]."""
        task, tau = self.cfg.ssl_task, self.cfg.ssl_temp
        if task == "FAC":
            loss, z = ib.new_zeros(()), ib[:, 0]
            for lvl, (g, h) in enumerate(zip(self.fac_g, self.fac_h)):
                z = g(z)
                loss = loss + info_nce(z, h(ib[:, 1 + lvl]), tau)
            return loss
        if task == "FD":
            p = self.cfg.ssl_dropout
            views = [self.fuse_item(F.dropout(ib.flatten(1), p, training=True)) for _ in range(2)]
            return info_nce(views[0], views[1], tau)
        if task == "FM":
            views = []
            for _ in range(2):
                drop = torch.randint(1, ib.shape[1], (ib.shape[0],), device=ib.device)
                keep = torch.ones(ib.shape[:2], device=ib.device, dtype=ib.dtype)
                keep[torch.arange(ib.shape[0], device=ib.device), drop] = 0.0
                views.append(self.fuse_item((ib * keep.unsqueeze(-1)).flatten(1)))
            return info_nce(views[0], views[1], tau)
        return ib.new_zeros(())

    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        users, items, ib = self.forward()
        main = info_nce(users[batch.users], items[batch.pos], self.cfg.temp)
        ssl = self.ssl_loss(ib[torch.unique(batch.pos)])
        return {"loss": main + self.cfg.ssl_alpha * ssl, "main": main, "ssl": ssl}

    # ---- scoring --------------------------------------------------------------------------------
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward()[:2]
