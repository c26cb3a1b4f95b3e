"""FREEDOM (Zhou & Shen, "A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal
Recommendation", ACM MM 2023): a LightGCN backbone whose item side also convolves over an item–item
graph FROZEN before training (built once from the raw features), trained on a user–item graph that is
DENOISED each epoch by degree-sensitive edge pruning.

Equations implemented (paper notation; m = modality, e^m_i = raw feature of item i):
  (1) S^m_ij = cos(e^m_i, e^m_j)                                    `cosine_topk` on the raw features
  (2) Ŝ^m_ij = 1 if j ∈ top-k(S^m_i) else 0 (binary kNN, k = 10;   `frozen_item_graph`: weights 1
      the item itself is among its own top-k, as in the original)
  (3) S̃^m = D^-½ Ŝ^m D^-½, D_ii = Σ_j Ŝ^m_ij                       `sym_normalize_knn(cols, ones)`
  (4) S = Σ_m α_m S̃^m, frozen (α: `mm_weights`, rule below)         `frozen_item_graph` → `mm_adj`
  (5) h̃^l = S h̃^{l-1}, h̃^0 = item ID embeddings, l = 1..L_mm        `embeddings`: spmm(mm_adj, h)
  (6) degree-sensitive pruning: p_(u,i) ∝ 1/(√|N_u| √|N_i|) on the full training graph; keep
      ⌊(1−ρ)|E|⌋ edges sampled WITHOUT replacement ∝ p; Â_ρ = D^-½ A_ρ D^-½ with the degrees of
      the kept graph; resampled every epoch (`on_epoch_start` → `resample_graph`), the full graph
      Â at inference (`final_embeddings`)
  (7) h = (1/(L_ui+1)) Σ_l Â_ρ^l E (LightGCN mean over layers 0..L_ui)  `propagate(train_adj, …)`
  (8) ĥ_u = h_u,  ĥ_i = h_i + h̃_i^{L_mm} (not normalised)          `embeddings`
  (9) L_BPR = −mean log σ(ĥ_u·ĥ_i⁺ − ĥ_u·ĥ_i⁻)                      `bpr_loss`
 (10) L = L_BPR + λ Σ_m L^m_BPR, L^m_BPR the BPR of ĥ_u against the projected features
      W_m e^m_i + b_m of i⁺ and i⁻ (λ = `reg_weight`; no L2 term)   `calculate_loss`

Modality weights α (generalising the paper's image 0.1 / text 0.9 to any set of modalities):
`mm_weights` is a list of `name:weight` entries (default `image:0.1,text:0.9`, the authors'
`mm_image_weight` 0.1). If EVERY modality the model sees is named there, α_m is its weight divided by
the sum over the seen modalities (so a subset keeps the stated ratio, a single modality gets 1);
otherwise — some seen modality is not named, e.g. TikTok's audio, ML-100K's genre — every
modality gets α_m = 1/M: no weight is invented for a modality the authors never weighted. Named
modalities the data lacks are ignored. The resolved weights are `self.alphas`.

Deliberate differences from the paper / the authors' code (enoche/FREEDOM, MMRec's port):
- Any number of modalities, with the α rule above (the original handles image and/or text only).
- An item whose raw feature row is all zero has no edges in that modality's kNN graph (its row and
  column of Ŝ^m are empty), so it is not linked to arbitrary items; the original divides by a zero
  norm there (NaN similarities). Zero-degree users/items in the pruned or the full user–item graph
  get a zero row (the original adds 1e-7 to every degree: the same values up to that epsilon).
- The number of kept edges is ⌊(1−ρ)|E| + 1e-9⌋ (at least 1): the original's `int(|E|·(1.−ρ))`
  can lose an edge to floating-point rounding (e.g. 10·(1−0.8) = 1.999…).
- The edges are drawn from the global torch CPU generator (which the trainer seeds and checkpoints),
  so the graph of every epoch is the same on any device and after a resume.
- The modality BPR projects only the batch's items (the original projects the whole table and then
  indexes it: the same values). The projection's width is `embedding_size` (the original's
  `feat_embed_dim`, which must equal it for the dot product; both 64 there).
- Batches are our shared BPR sampler's (every training pair once per epoch, negatives outside the
  user's training items); the original's negatives are drawn from the items seen in training.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmbench.config import Param
from mmbench.errors import ConfigError
from mmbench.models.base import Batch, EmbeddingRecommender, bpr_loss, register
from mmbench.models.graph import normalized_bipartite_adjacency, sparse_to_torch, spmm
from mmbench.models.knn import cosine_topk, sym_normalize_knn
from mmbench.models.lightgcn import propagate
from mmbench.models.multimodal import FEATURE_NORMS, normalize_features


def modality_weights(spec: list[str], names: list[str]) -> list[float]:
    """α per modality of `names` (in that order) from `name:weight` entries; see the module doc."""
    named: dict[str, float] = {}
    for entry in spec:
        name, sep, value = str(entry).rpartition(":")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"freedom mm_weights: expected entries 'modality:weight' with a finite "
                              f"weight >= 0, got {entry!r}")
        if name in named:
            raise ConfigError(f"freedom mm_weights: modality {name!r} is listed twice")
        named[name] = weight
    if not names:
        return []
    if not all(m in named for m in names):
        return [1.0 / len(names)] * len(names)
    total = sum(named[m] for m in names)
    if total <= 0:
        raise ConfigError(f"freedom mm_weights: the weights of {names} sum to 0")
    return [named[m] / total for m in names]


@torch.no_grad()
def frozen_item_graph(features: list[np.ndarray], alphas: list[float], k: int) -> sp.csr_matrix:
    """S = Σ_m α_m D^-½ Ŝ^m D^-½ (eqs. 1-4) as a scipy CSR [n_items, n_items]: per modality the binary
    top-k cosine graph of the raw features (self included), symmetric-normalised with row sums."""
    n = int(features[0].shape[0])
    total = sp.csr_matrix((n, n), dtype=np.float64)
    for feat, alpha in zip(features, alphas):
        x = torch.from_numpy(np.array(feat, dtype=np.float32))  # a writable copy
        cols, _ = cosine_topk(x, k)
        has_feature = (x != 0).any(dim=1)
        ones = (has_feature.unsqueeze(1) & has_feature[cols]).to(torch.float32)  # binary kNN weights
        values = sym_normalize_knn(cols, ones)
        rows = np.repeat(np.arange(n), cols.shape[1])
        graph = sp.csr_matrix((values.numpy().ravel().astype(np.float64), (rows, cols.numpy().ravel())),
                              shape=(n, n))
        total = total + alpha * graph
    total = sp.csr_matrix(total)
    total.eliminate_zeros()
    return total


@register("freedom")
class FREEDOM(EmbeddingRecommender):
    """Defaults: the authors' FREEDOM.yaml (enoche/FREEDOM; the same in MMRec): knn_k 10,
    n_mm_layers 1, n_ui_layers 2 (weight_size [64, 64]), mm_image_weight 0.1 (→ `mm_weights`
    image:0.1,text:0.9), embedding 64; their overall.yaml: Adam, lr 1e-3, batch 2048, no weight decay;
    raw feature tables trainable (`nn.Embedding.from_pretrained(..., freeze=False)` in their code) and
    fed raw (`feature_norm` none). `dropout` (ρ) 0.8 and `reg_weight` (λ) 1e-4 are points of the
    authors' published grid (ρ ∈ {0.8, 0.9} × λ ∈ {0, 1e-5, 1e-4, 1e-3}); the code publishes no single
    value, and λ = 1e-4 is the grid's middle non-zero value, not a tuned one."""

    uses_features = True
    defaults = {
        "knn_k": Param(10, int, min=1, doc="neighbours per item in each modality's frozen kNN graph"),
        "n_mm_layers": Param(1, int, min=1, doc="convolutions over the frozen item-item graph"),
        "n_ui_layers": Param(2, int, min=0, doc="LightGCN layers over the user-item graph"),
        "dropout": Param(0.8, float, min=0, max=1, max_exclusive=True,
                         doc="ρ: fraction of user-item edges pruned each epoch (degree-sensitive)"),
        "reg_weight": Param(1e-4, float, min=0, doc="λ: weight of the modality BPR terms"),
        "mm_weights": Param(["image:0.1", "text:0.9"], list[str], min_len=1,
                            doc="modality:weight mixture of the item-item graphs; uniform unless every "
                                "modality seen is named"),
        "train_features": Param(True, bool, doc="raw feature tables are trainable (authors' code)"),
        "feature_norm": Param("none", str, choices=FEATURE_NORMS,
                              doc="normalisation of the features fed to the projections (not the graph)"),
        "lr": 1e-3,
        "batch_size": 2048,
    }

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        d = cfg.embedding_size
        self.modalities = list(data.features)
        if not self.modalities:
            raise ConfigError("freedom needs at least one item feature modality")
        self.user_emb = nn.Embedding(data.n_users, d)
        self.item_emb = nn.Embedding(data.n_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)

        # Trainable feature tables and their projections W_m e + b_m (the modality BPR, eq. 10).
        self.feats = nn.ParameterList()
        self.proj = nn.ModuleList()
        for m in self.modalities:
            table = torch.from_numpy(normalize_features(data.features[m], cfg.feature_norm))
            self.feats.append(nn.Parameter(table, requires_grad=bool(cfg.train_features)))
            self.proj.append(nn.Linear(table.shape[1], d))

        # The frozen item-item graph from the RAW features (eqs. 1-4); not symmetric, so with its transpose.
        self.alphas = modality_weights(list(cfg.mm_weights), self.modalities)
        raw = [data.features[m] for m in self.modalities]
        graph = frozen_item_graph(raw, self.alphas, cfg.knn_k)
        self.register_buffer("mm_adj", sparse_to_torch(graph), persistent=False)
        self.register_buffer("mm_adj_t", sparse_to_torch(graph.T.tocsr()), persistent=False)

        # The user-item graph: full for inference, pruned per epoch for training (eq. 6).
        train = sp.csr_matrix(data.train, dtype=np.float32, copy=True)
        train.eliminate_zeros()
        train.data[:] = 1.0
        train.sort_indices()
        self._train_shape = train.shape
        coo = train.tocoo()
        self._edge_users = coo.row.astype(np.int64)
        self._edge_items = coo.col.astype(np.int64)
        du = np.diff(train.indptr).astype(np.float64)
        di = np.bincount(train.indices, minlength=data.n_items).astype(np.float64)
        # p_(u,i) ∝ 1/(√|N_u| √|N_i|) of the full training graph (CPU data: sampling runs on the CPU).
        self.edge_weights = torch.from_numpy(1.0 / np.sqrt(du[self._edge_users] * di[self._edge_items]))
        self.register_buffer("adj", normalized_bipartite_adjacency(train), persistent=False)
        # Until the first `on_epoch_start`, training uses the full graph (no RNG is drawn when built).
        self.register_buffer("train_adj", self.adj, persistent=False)
        self.kept_edges = torch.arange(len(self._edge_users))

    # ---- the denoised user-item graph ---------------------------------------------------------
    def n_kept(self) -> int:
        """⌊(1−ρ)|E|⌋ edges kept per epoch (at least one when there are edges)."""
        n_edges = len(self._edge_users)
        return min(n_edges, max(1, int(math.floor(n_edges * (1.0 - self.cfg.dropout) + 1e-9))))

    def sample_kept_edges(self) -> torch.Tensor:
        """Indices (ascending) into the training edges of one degree-sensitive draw: ⌊(1−ρ)|E|⌋ edges
        without replacement, each draw ∝ 1/(√|N_u| √|N_i|), from the global torch CPU generator."""
        n_edges = len(self._edge_users)
        if self.cfg.dropout <= 0.0 or n_edges == 0:
            return torch.arange(n_edges)
        kept = torch.multinomial(self.edge_weights, self.n_kept(), replacement=False)
        return kept.sort().values

    def pruned_adjacency(self, kept: torch.Tensor) -> torch.Tensor:
        """D^-½ A_ρ D^-½ of the kept edges, degrees recomputed on the kept graph (torch CSR)."""
        idx = kept.numpy()
        r = sp.csr_matrix((np.ones(len(idx), dtype=np.float32), (self._edge_users[idx], self._edge_items[idx])),
                          shape=self._train_shape)
        return normalized_bipartite_adjacency(r)

    def resample_graph(self) -> None:
        self.kept_edges = self.sample_kept_edges()
        if len(self.kept_edges) == len(self._edge_users):
            self.train_adj = self.adj
        else:
            self.train_adj = self.pruned_adjacency(self.kept_edges).to(self.adj.device)

    def on_epoch_start(self, epoch: int) -> None:
        self.resample_graph()

    # ---- forward / training -------------------------------------------------------------------
    def embeddings(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ĥ_u, ĥ_i) of eqs. 5, 7, 8 over the user-item graph `adj`."""
        h = self.item_emb.weight
        for _ in range(self.cfg.n_mm_layers):
            h = spmm(self.mm_adj, h, self.mm_adj_t)
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        out = propagate(adj, ego, self.cfg.n_ui_layers)
        return out[: self.n_users], out[self.n_users :] + h

    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        users, items = self.embeddings(self.train_adj)
        u = users[batch.users]
        bpr = bpr_loss((u * items[batch.pos]).sum(-1), (u * items[batch.neg]).sum(-1))
        both = torch.cat([batch.pos, batch.neg])
        modal = u.new_zeros(())
        for table, proj in zip(self.feats, self.proj):
            p_pos, p_neg = proj(table[both]).split([len(batch.pos), len(batch.neg)])
            modal = modal + bpr_loss((u * p_pos).sum(-1), (u * p_neg).sum(-1))
        loss = bpr + self.cfg.reg_weight * modal
        return {"loss": loss, "bpr": bpr, "modal_bpr": modal}

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embeddings(self.adj)  # inference on the full graph
