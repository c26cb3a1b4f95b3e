"""GRCN (Wei et al., ACM MM 2020): refine the user–item graph by pruning edges whose endpoints do not
agree in content, then run a GCN over ID embeddings with the refined edge weights.

Per modality m (the "graph refining layer"):
1. item content c_i = normalise(LeakyReLU(W_m f_i + b)) and a learnable user preference p_u (norm 1);
2. routing (3 rounds): p_u ← normalise(p_u + Σ_{i∈N(u)} softmax_i(p_u·c_i) c_i);
3. on the bidirectional graph with x = [p; c], per-edge attention a_{j→i} = softmax_{j∈N(i)}(x_i·x_j)
   and the modality representation z = x + Σ_j a_{j→i} x_j.
Refined weight of the message j→i: w = ReLU(max_m a^m_{j→i} · κ^m_j), with κ a learnable per-node,
per-modality confidence of the SENDING node; ReLU prunes edges that every modality distrusts.
ID branch: e = normalise(E_id), h_{l+1} = Σ_j w_{j→i} h_l[j] for 2 layers, output e + h_1 + h_2.
Final representation = concat(ID branch, z^1..z^M) (64·(1+M) dims); score = dot product.
Loss: BPR + `reg_weight` · (mean square of the batch's ID rows + of its users' preferences).

Everything edge-wise runs on the sparse edge list (a CSR pattern fixed at construction whose values
are recomputed with autograd); no dense users×items matrix. Because node vectors have norm 1, the
attention logits lie in [-1, 1] and the softmax needs no max-shift; nodes without edges keep their own
vector (empty softmax, zero message), so zero-degree users/items cannot produce NaN.

Choice vs the original code: confidences start at `conf_init` = 1 (no edge pruned before learning);
the original initialises them randomly, which prunes a random quarter to half of all senders at
start and, through the ReLU, keeps them pruned (no gradient reaches a dead sender).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.models.base import Batch, EmbeddingRecommender, bpr_loss, register
from mmbench.models.graph import bipartite_adjacency
from mmbench.models.knn import EdgePattern


@register("grcn")
class GRCN(EmbeddingRecommender):
    """Defaults: 64-d latent, 3 routing rounds, 2 ID-graph layers (as the paper/original code)."""

    uses_features = True
    defaults = {"n_routing": 3, "n_id_layers": 2, "reg_weight": 1e-4, "conf_init": 1.0}

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        d = cfg.embedding_size
        n = data.n_users + data.n_items
        self.modalities = list(data.features)
        self.ui = EdgePattern.from_scipy(data.train)  # users ← items, for routing
        self.graph = EdgePattern.from_scipy(bipartite_adjacency(data.train))  # both directions, rows = receivers
        self.id_emb = nn.Parameter(nn.init.xavier_normal_(torch.empty(n, d)))
        self.content = nn.ModuleList()
        self.preference = nn.ParameterList()
        for i, m in enumerate(self.modalities):
            feat = torch.tensor(data.features[m], dtype=torch.float32)
            self.register_buffer(f"feat_{i}", feat.clone(), persistent=False)
            self.content.append(nn.Linear(feat.shape[1], d))
            self.preference.append(nn.Parameter(nn.init.xavier_normal_(torch.empty(data.n_users, d))))
        self.confidence = nn.Parameter(torch.full((n, len(self.modalities)), float(cfg.conf_init)))

    def modality_branch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(z^m [U+I, d], edge attention a^m [n_edges]) for modality i."""
        content = F.normalize(F.leaky_relu(self.content[i](getattr(self, f"feat_{i}"))), dim=1)
        pref = F.normalize(self.preference[i], dim=1)
        for _ in range(self.cfg.n_routing):
            att = self.ui.row_softmax(self.ui.dots(pref, content))
            pref = F.normalize(pref + self.ui.matmul(att, content), dim=1)
        x = torch.cat([pref, content])
        att = self.graph.row_softmax(self.graph.dots(x, x))
        return x + self.graph.matmul(att, x), att

    def forward(self) -> torch.Tensor:
        """All node representations [U+I, d·(1+M)]; users first."""
        zs, atts = zip(*(self.modality_branch(i) for i in range(len(self.modalities))))
        weights = self.prune(atts)
        h = F.normalize(self.id_emb, dim=1)
        out = h
        for _ in range(self.cfg.n_id_layers):
            h = self.graph.matmul(weights, h)
            out = out + h
        return torch.cat([out, *zs], dim=1)

    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        rep = self.forward()
        items = batch.pos + self.n_users, batch.neg + self.n_users
        u, i, j = rep[batch.users], rep[items[0]], rep[items[1]]
        bpr = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        sq = (self.id_emb[batch.users].pow(2).mean() + self.id_emb[items[0]].pow(2).mean()
              + self.id_emb[items[1]].pow(2).mean())
        sq = sq + sum(p[batch.users].pow(2).mean() for p in self.preference)
        reg = self.cfg.reg_weight * sq
        return {"loss": bpr + reg, "bpr": bpr, "reg": reg}

    def prune(self, atts) -> torch.Tensor:
        """Refined edge weights ReLU(max_m a^m · κ^m_sender), in the CSR order of the bidirectional graph."""
        trust = torch.stack(list(atts), dim=1) * self.confidence[self.graph.col]  # [edges, M]
        return F.relu(trust.max(dim=1).values)

    def refined_weights(self) -> torch.Tensor:
        """The pruned edge weights of the current parameters (for tests and inspection)."""
        return self.prune(self.modality_branch(i)[1] for i in range(len(self.modalities)))

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        rep = self.forward()
        return rep[: self.n_users], rep[self.n_users :]
