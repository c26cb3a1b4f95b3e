"""BM3 (Zhou, Zhou, Liu, Zeng, Miao, Wang, You and Jiang, "Bootstrap Latent Representations for
Multi-modal Recommendation", WWW 2023, arXiv 2207.05969): a self-supervised multi-modal recommender
without negative samples and without a target network. The contrastive "target" view of a
representation is the representation itself, detached and perturbed by dropout; the "online" view is
a shared one-layer predictor applied to it; every objective is one minus a cosine similarity.

Notation (d = `embedding_size`): Â = D^-½ A D^-½ of the user–item graph; E_u, E_i ID embeddings.
    Backbone      H = mean(E, ÂE, …, Â^L E)  (LightGCN, `propagate`);  h_u = H_u,  h_i = H_i + E_i
                  (the ego item embedding added back, as in the authors' code)          (`forward`)
    Modalities    h_i^m = W_m f_i^m + b_m, one linear projection per modality m          (`project`)
    Online view   h̃ = f_p(h) = W_p h + b_p, ONE predictor shared by users, items and modalities
    Target view   ḣ = Dropout_p(sg(h))  (stop-gradient, then dropout with rate p = `dropout`)
    C(a, b)       = 1 − cos(a, b), averaged over the batch's (u, i) training pairs     (`one_minus_cos`)
    Graph reconstruction     L_rec   = C(h̃_u, ḣ_i) + C(h̃_i, ḣ_u)
    Inter-modality alignment L_align = Σ_m C(h̃_i^m, ḣ_i)
    Intra-modality masking   L_mask  = Σ_m C(h̃_i^m, ḣ_i^m)
    L = L_rec + cl_weight·(L_align + L_mask) + reg_weight·(‖H_u‖_F + ‖h_I‖_F) / n_items
The regulariser is the authors' (MMRec's EmbLoss on the full user and item outputs: Frobenius norms,
not squared, divided by the number of items). Score: s(u, i) = h̃_u · h̃_i (`final_embeddings`).
The terms and their names follow the paper's §3 (converter, contrastive view generator, multi-modal
contrastive loss); where the paper leaves a detail open, the authors' code decides it.

Sampling: BM3 uses positive pairs only. The shared BPR sampler's batches are used as they come
(every training pair once per epoch, batch 2048 as MMRec's); their negatives are ignored.

Deliberate differences from the paper/authors' code (enoche/BM3, MMRec's BM3):
- Item features are row-normalised first (`feature_norm: l2`, the convention of every multimodal
  model here); the authors feed the raw features (`feature_norm: none` reproduces that). As in their
  code, the feature tables are trainable parameters initialised from the files (`train_features`).
- The predictor and the dropout are applied to the batch's rows only (the original applies them to
  every row and then gathers): the same objective at a fraction of the cost; a user or item that
  occurs twice in a batch gets two independent dropout masks instead of one.
- Any number of modalities (the original has image + text).
- (Not a difference, a property.) An item without training interactions is never in a batch, so its
  ID embedding is trained only by the regulariser: BM3 scores such items (TikTok: 465 items, 449 of
  the 6,130 test pairs) with near-random vectors, as the original does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.config import Param
from mmbench.models.base import Batch, EmbeddingRecommender, register
from mmbench.models.graph import normalized_bipartite_adjacency
from mmbench.models.lightgcn import propagate
from mmbench.models.multimodal import FEATURE_NORMS, ItemFeatures


def one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C(a, b) = 1 − mean cosine over rows (eps-guarded: a zero row gives cosine 0, never NaN)."""
    return 1.0 - F.cosine_similarity(a, b, dim=-1).mean()


@register("bm3")
class BM3(EmbeddingRecommender):
    """Defaults: the authors' best setting for Baby (enoche/BM3 README: 1 layer, dropout 0.5,
    reg_weight 0.1), cl_weight 2.0 and embedding 64 (MMRec's BM3.yaml), lr 1e-3 and batch 2048
    (MMRec's overall.yaml, also the trainer's defaults). The `sports` preset is their best Sports
    setting (reg_weight 0.01; layers and dropout as Baby's)."""

    uses_features = True
    defaults = {
        "n_layers": Param(1, int, min=0, doc="LightGCN layers"),
        "dropout": Param(0.5, float, min=0, max=1, max_exclusive=True,
                         doc="dropout rate that perturbs the detached target views"),
        "reg_weight": Param(0.1, float, min=0, doc="weight of the embedding-norm regulariser"),
        "cl_weight": Param(2.0, float, min=0, doc="weight of the inter- and intra-modality losses"),
        "train_features": Param(True, bool, doc="feature tables trainable, initialised from the files"),
        "feature_norm": Param("l2", str, choices=FEATURE_NORMS),
    }
    presets = {"sports": {"reg_weight": 0.01}}  # enoche/BM3 README, best Sports setting

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        d = cfg.embedding_size
        self.user_emb = nn.Embedding(data.n_users, d)
        self.item_emb = nn.Embedding(data.n_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)
        feats = ItemFeatures(data.features, cfg.feature_norm)
        self.n_modalities = len(feats)
        if cfg.train_features:
            self.tables = nn.ParameterList(nn.Parameter(t.clone()) for t in feats.all())
        else:
            self.features = feats
        self.projections = nn.ModuleList(nn.Linear(dim, d) for dim in feats.dims)
        for proj in self.projections:
            nn.init.xavier_normal_(proj.weight)
        self.register_buffer("adj", normalized_bipartite_adjacency(data.train), persistent=False)

    def feature_table(self, m: int) -> torch.Tensor:
        return self.tables[m] if self.cfg.train_features else self.features[m]

    def project(self, m: int, items: torch.Tensor) -> torch.Tensor:
        """h_i^m for the given items."""
        return self.projections[m](self.feature_table(m)[items])

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_u for all users, h_i for all items): LightGCN mean over layers, ego item embedding added."""
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        out = propagate(self.adj, ego, self.cfg.n_layers)
        return out[: self.n_users], out[self.n_users :] + self.item_emb.weight

    def target(self, h: torch.Tensor) -> torch.Tensor:
        """ḣ = Dropout(sg(h)), drawn from the global torch RNG."""
        return F.dropout(h.detach(), p=self.cfg.dropout, training=True)

    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        users_all, items_all = self.forward()
        h_u, h_i = users_all[batch.users], items_all[batch.pos]  # batch.neg is not used
        t_u, t_i = self.target(h_u), self.target(h_i)
        rec = one_minus_cos(self.predictor(h_u), t_i) + one_minus_cos(self.predictor(h_i), t_u)
        align = h_u.new_zeros(())
        mask = h_u.new_zeros(())
        for m in range(self.n_modalities):
            h_m = self.project(m, batch.pos)
            online = self.predictor(h_m)
            align = align + one_minus_cos(online, t_i)
            mask = mask + one_minus_cos(online, self.target(h_m))
        norms = torch.linalg.matrix_norm(users_all) + torch.linalg.matrix_norm(items_all)  # Frobenius
        reg = cfg.reg_weight * norms / self.n_items
        loss = rec + cfg.cl_weight * (align + mask) + reg
        return {"loss": loss, "rec": rec, "align": align, "mask": mask, "reg": reg}

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.forward()
        return self.predictor(users), self.predictor(items)
