"""LATTICE (Zhang et al., ACM MM 2021): learn item–item graphs from multimodal features and convolve
item ID embeddings over them, on top of a LightGCN collaborative backbone.

Per modality m there are two sparse kNN graphs (top-k cosine neighbours per item, the item itself
included, k = 10; LATTICE's D^-½ S D^-½ with row-sum degrees; never a dense I×I matrix):
* S_m, the frozen graph of the RAW features, built once;
* A_m, the learned graph of the projected features p_m = W_m f_m + b_m.
They are mixed with λ (skip connection to the frozen graph) and a softmax over learnable modality
weights α: G = Σ_m softmax(α)_m (λ S_m + (1 − λ) A_m). Items get h = G^L · E_item (L = 1) and
final item = LightGCN item + normalise(h); users are LightGCN users. Loss: BPR + `reg_weight` ·
½‖final batch embeddings‖² / batch; Adam, lr decayed by 0.96^(epoch/50).

How gradients reach the learned graph (differs from the original code): top-k selection is piecewise
constant, so only the edge WEIGHTS carry gradient. We recompute the learned graph's neighbour sets
(top-k of the projected features) in `on_epoch_start` and in `begin_scoring`, and recompute its edge
weights (cosines of the current projections, normalisation, α-mixture) with autograd in EVERY batch;
so W_m, b_m, α and the trainable feature tables receive gradient at every step. The original rebuilds
the whole graph with autograd only in the first batch of an epoch (`retain_graph`) and uses a detached
copy afterwards, so those parameters are updated from one batch per epoch.

Other differences from the original, stated: the user–item graph is LightGCN's D^-½ A D^-½ (reused
from `models/lightgcn.py`), the original uses D^-1(A + I); batches are our shared BPR sampler's (every
training pair once per epoch, negatives outside the user's training items), the original samples
users uniformly; any number of modalities (the original had image + text).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.config import Param
from mmbench.models.base import Batch, EmbeddingRecommender, bpr_loss, l2_per_batch, register
from mmbench.models.graph import normalized_bipartite_adjacency
from mmbench.models.knn import EdgePattern, cosine_topk, sym_normalize_knn
from mmbench.models.lightgcn import propagate


@register("lattice")
class LATTICE(EmbeddingRecommender):
    """Defaults from the paper / original code: k = 10, λ = 0.9, 2 UI layers, 1 item-graph layer,
    feature projection 64, lr 5e-4 with 0.96^(epoch/50) decay, reg 1e-5, batch 1024."""

    uses_features = True
    defaults = {
        "n_layers": 2,  # LightGCN layers on the user–item graph (weight_size [64, 64])
        "n_item_layers": 1,  # convolutions over the item–item graph
        "knn_k": Param(10, int, min=1, doc="neighbours per item in the item-item graphs"),
        # weight of the frozen raw-feature graph (skip connection)
        "lambda_coeff": Param(0.9, float, min=0, max=1),
        "feat_embed_dim": Param(64, int, min=1),
        "train_features": True,  # raw feature tables are trainable, initialised from the files
        "reg_weight": 1e-5,
        "lr": 5e-4,
        "lr_decay": Param(0.96, float, min=0, max=1, min_exclusive=True, doc="lr factor per lr_decay_epochs"),
        "lr_decay_epochs": Param(50, int, min=1),
        "batch_size": 1024,
    }

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        d = cfg.embedding_size
        self.modalities = list(data.features)
        self.user_emb = nn.Embedding(data.n_users, d)
        self.item_emb = nn.Embedding(data.n_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.register_buffer("adj", normalized_bipartite_adjacency(data.train), persistent=False)

        self.feats = nn.ParameterList()
        self.proj = nn.ModuleList()
        self.fixed = nn.ModuleList()  # EdgePattern per modality, values in buffers fixed_vals_<i>
        for m in self.modalities:
            raw = torch.tensor(data.features[m], dtype=torch.float32)
            self.feats.append(nn.Parameter(raw, requires_grad=bool(cfg.train_features)))
            self.proj.append(nn.Linear(raw.shape[1], cfg.feat_embed_dim))
            # The frozen graph: top-k cosine of the raw features, normalised once.
            cols, sims = cosine_topk(raw, cfg.knn_k)
            self.fixed.append(EdgePattern.from_knn(cols))
            self.register_buffer(f"fixed_vals_{len(self.fixed) - 1}", sym_normalize_knn(cols, sims),
                                 persistent=False)
        self.modal_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.learned = nn.ModuleList()  # EdgePattern per modality, rebuilt each epoch (values per batch)
        self._optimizers: list[torch.optim.Optimizer] = []
        self.rebuild_learned_graph()

    # ---- the item–item graphs -----------------------------------------------------------------
    def _projected(self, i: int) -> torch.Tensor:
        return F.normalize(self.proj[i](self.feats[i]), dim=1)

    @torch.no_grad()
    def rebuild_learned_graph(self) -> None:
        """New neighbour sets of the learned graphs from the current projections (no gradient)."""
        self.learned = nn.ModuleList(EdgePattern.from_knn(cosine_topk(self._projected(i), self.cfg.knn_k)[0])
                                     for i in range(len(self.modalities)))

    def fixed_graph(self, i: int) -> tuple[EdgePattern, torch.Tensor]:
        """(pattern, normalised values [n_items·k]) of modality i's frozen raw-feature graph."""
        return self.fixed[i], getattr(self, f"fixed_vals_{i}")

    def learned_graph(self, i: int) -> tuple[EdgePattern, torch.Tensor]:
        """(pattern, normalised values) of modality i's learned graph; the values carry autograd."""
        pattern = self.learned[i]
        xn = self._projected(i)
        cosines = pattern.dots(xn, xn).view(self.n_items, -1)  # edge-wise, no [I, k, d] gather
        return pattern, sym_normalize_knn(pattern.col.view(self.n_items, -1), cosines)

    def modality_weights(self) -> torch.Tensor:
        return torch.softmax(self.modal_logits, dim=0)

    def item_graph_conv(self, h: torch.Tensor) -> torch.Tensor:
        """h ← G^L h with G = Σ_m softmax(α)_m (λ S_m + (1 − λ) A_m), as sums of sparse products."""
        lam = self.cfg.lambda_coeff
        weights = self.modality_weights()
        graphs = [(self.fixed_graph(i), self.learned_graph(i)) for i in range(len(self.modalities))]
        for _ in range(self.cfg.n_item_layers):
            out = torch.zeros_like(h)
            for w, ((fc, fv), (lc, lv)) in zip(weights, graphs):
                out = out + w * (lam * fc.matmul(fv, h) + (1.0 - lam) * lc.matmul(lv, h))
            h = out
        return h

    # ---- forward / training ---------------------------------------------------------------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        out = propagate(self.adj, ego, self.cfg.n_layers)
        users, items = out[: self.n_users], out[self.n_users :]
        h = self.item_graph_conv(self.item_emb.weight)
        return users, items + F.normalize(h, dim=1)

    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        users, items = self.forward()
        u, i, j = users[batch.users], items[batch.pos], items[batch.neg]
        bpr = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        reg = self.cfg.reg_weight * l2_per_batch(u, i, j)
        return {"loss": bpr + reg, "bpr": bpr, "reg": reg}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        self._optimizers = super().configure_optimizers()
        return self._optimizers

    def on_epoch_start(self, epoch: int) -> None:
        # Step decay as a pure function of the epoch (so a resumed run gets the same rate).
        factor = self.cfg.lr_decay ** ((epoch - 1) / self.cfg.lr_decay_epochs)
        for opt in self._optimizers:
            for group in opt.param_groups:
                group["lr"] = self.cfg.lr * factor
        self.rebuild_learned_graph()

    # ---- scoring --------------------------------------------------------------------------------
    def begin_scoring(self) -> None:
        self.rebuild_learned_graph()  # the graph of the parameters being evaluated (as the original)
        super().begin_scoring()

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward()
