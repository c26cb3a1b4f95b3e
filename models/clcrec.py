"""CLCRec (Wei, Wang, Li, Nie, Li, Li and Chua, "Contrastive Learning for Cold-Start Recommendation",
ACM MM 2021, arXiv 2107.05315): ID embeddings for users and items, a content encoder that maps an
item's features into the same space, and two contrastive (InfoNCE) objectives that lower-bound the
paper's two mutual-information terms.

Notation: e_u, e_i the ID embeddings (one (U+I)×d table); f_i the item's features, every modality
row-L2-normalised and concatenated (the authors normalise each modality, then concatenate);
v_i = g(f_i) = W2·LeakyReLU(W1·f_i + b1) + b2 the encoded content (hidden width 256, the authors'
encoder). For one training pair (u, i) with N sampled negatives j_1..j_N (K = {i, j_1..j_N}):

    InfoNCE(a, {c_k}, τ) = −log( exp(a·c_i / τ) / Σ_{k∈K} exp(a·c_k / τ) )      (`info_nce_logits`)
    R-E:  L_RE = InfoNCE( e_i/‖e_i‖, {v_k/‖v_k‖}_k, τ )       item ID embedding vs content (cosine)
    U-I:  L_UI = InfoNCE( e_u, {h_k}_k, τ ),   h_k = v_k with probability ρ, else e_k
          (the paper's hybrid item representation: every candidate's collaborative embedding is
          replaced by its content representation with probability ρ, so that content vectors learn to
          score like ID embeddings — what makes them usable for items without interactions)
    L = λ·L_RE + (1 − λ)·L_UI + reg_weight · ½ (mean_batch ‖e_u‖ + mean_{batch,K} ‖e_k‖)

`CLCRec.losses` computes all three for given candidates and mixing mask; `calculate_loss` draws the
negatives (`sample_negatives`) and the mask from the global torch RNG (seeded and checkpointed by the
trainer, so a resumed run draws the same). The regulariser is the authors' code's: the mean
Euclidean (not squared) norm of the batch's user and candidate-item ID embeddings, halved.

Scoring (the authors' `result` matrix): s(u, i) = e_u·e_i for items with training interactions
(warm) and s(u, i) = e_u·v_i for items with none (cold, `cold_scoring: content`). Every valid/test
item that occurs in training is therefore scored with its ID embedding; the items that never occur in
training (on TikTok 465 items: 449 of the 6,130 test pairs and 223 of the 3,051 valid pairs) are
scored with their encoded content, which is exactly where CLCRec's content path helps.
`cold_scoring: id` scores them with their (untrained, random) ID embedding instead, for an ablation.

Negatives: N per training pair, uniform over the warm items (the authors sample from the non-cold
items only), redrawn when they are among the user's TRAINING items (`MAX_REDRAWS` rounds; a user who
interacted with every warm item keeps the last draw).

Deliberate differences from the authors' code (weiyinwei/CLCRec, commit 3670e14):
- Negatives are drawn WITH replacement (the original samples N distinct items per pair, in Python)
  and rejected against the user's training items only; the original rejects every item the user
  interacted with in train, valid AND test, which leaks held-out items into training.
- The hybrid mask replaces each candidate independently with probability ρ; the original picks
  ρ·B·(N+1) row indices with replacement (`randint`), so it replaces ≈ 1 − e^(−ρ) ≈ 39 % of the rows
  for ρ = 0.5, not 50 %.
- Scores come from the current parameters (the original ranks with embeddings cached during the
  last training batch, one optimiser step stale). "Cold" means zero TRAINING degree here (the
  original reads a fixed cold-item list of its own split).
- The unused parts of the original (an attention block, an MLP and TikTok word-level text
  embeddings) are left out; any number of modalities is accepted.
The paper's text was not available here in full; the equations above follow its description as
realised in the authors' code, which is what we cite for every default.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmbench.config import Param
from mmbench.models.base import Batch, EmbeddingRecommender, register
from mmbench.models.multimodal import FEATURE_NORMS, ItemFeatures

# Rejection rounds for negatives that hit a user's training items (each round redraws only those).
MAX_REDRAWS = 100


def info_nce_logits(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −log softmax(logits)[0] for logits [B, K] (already divided by τ) whose
    column 0 is the positive. Computed with logsumexp, so large logits never overflow (the original
    exponentiates directly)."""
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


@register("clcrec")
class CLCRec(EmbeddingRecommender):
    """Defaults are the authors' published Movielens command (README of weiyinwei/CLCRec: lr 1e-3,
    reg_weight 0.1, num_neg 128, lr_lambda 0.5, temp_value 2.0, num_sample 0.5, all three
    modalities), the closest of their two commands to our micro-video / multi-modal data; batch 256,
    embedding 64 and the 256-unit encoder are the defaults of their main.py / model. Their other
    published command (Amazon, visual only: reg_weight 1e-3, num_neg 512, lr_lambda 0.9,
    temp_value 1) lies inside the search space (models/spaces/clcrec.yaml)."""

    uses_features = True
    defaults = {
        "lr": 1e-3,
        "batch_size": 256,
        "num_neg": Param(128, int, min=1, doc="sampled negatives per training pair (authors: num_neg)"),
        "temperature": Param(2.0, float, min=0, min_exclusive=True,
                             doc="τ of both InfoNCE objectives (authors: temp_value)"),
        "lambda_re": Param(0.5, float, min=0, max=1,
                           doc="λ: weight of the R-E loss, U-I gets 1 − λ (authors: lr_lambda)"),
        "mix_rate": Param(0.5, float, min=0, max=1,
                          doc="ρ: chance a U-I candidate enters by its content vector (authors: num_sample)"),
        "reg_weight": Param(0.1, float, min=0, doc="weight of the mean ID-embedding norm"),
        "encoder_hidden": Param(256, int, min=1, doc="hidden width of the content encoder"),
        "cold_scoring": Param("content", str, choices=("content", "id"),
                              doc="items without training interactions: score by content or by ID"),
        "feature_norm": Param("l2", str, choices=FEATURE_NORMS),
    }

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        d = cfg.embedding_size
        self.features = ItemFeatures(data.features, cfg.feature_norm)
        self.id_emb = nn.Parameter(nn.init.xavier_normal_(torch.empty(data.n_users + data.n_items, d)))
        self.encoder = nn.Sequential(nn.Linear(sum(self.features.dims), cfg.encoder_hidden),
                                     nn.LeakyReLU(), nn.Linear(cfg.encoder_hidden, d))
        train = data.train.tocsr()
        degree = np.bincount(train.indices, minlength=data.n_items)
        warm = np.flatnonzero(degree > 0)
        if len(warm) == 0:  # no interactions at all: nothing is cold relative to anything else
            warm = np.arange(data.n_items)
        self.register_buffer("warm_items", torch.from_numpy(warm.astype(np.int64)), persistent=False)
        self.register_buffer("cold", torch.from_numpy(degree == 0), persistent=False)
        coo = train.tocoo()
        keys = np.sort(coo.row.astype(np.int64) * data.n_items + coo.col.astype(np.int64))
        self.register_buffer("train_keys", torch.from_numpy(keys), persistent=False)

    # ---- pieces -------------------------------------------------------------------------------
    def encode(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """v = g(f): content vectors of `items` [n] (all items when None)."""
        feats = self.features.concat()
        return self.encoder(feats if items is None else feats[items])

    def is_train_pair(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if len(self.train_keys) == 0:
            return torch.zeros_like(items, dtype=torch.bool)
        keys = users * self.n_items + items
        pos = torch.searchsorted(self.train_keys, keys).clamp(max=len(self.train_keys) - 1)
        return self.train_keys[pos] == keys

    def sample_negatives(self, users: torch.Tensor) -> torch.Tensor:
        """[B, num_neg] warm items from the global torch RNG; a draw that is a training item of its
        row's user is redrawn (only those draws are redrawn and rechecked, round after round)."""
        pool = self.warm_items
        neg = pool[torch.randint(len(pool), (len(users), self.cfg.num_neg), device=pool.device)]
        rows = users.unsqueeze(1).expand_as(neg).reshape(-1)
        flat = neg.view(-1)
        bad = torch.nonzero(self.is_train_pair(rows, flat)).squeeze(1)
        for _ in range(MAX_REDRAWS):
            if bad.numel() == 0:
                break
            fresh = pool[torch.randint(len(pool), (bad.numel(),), device=pool.device)]
            flat[bad] = fresh
            bad = bad[self.is_train_pair(rows[bad], fresh)]
        return neg

    def losses(self, users: torch.Tensor, items: torch.Tensor, mix: torch.Tensor) -> dict[str, torch.Tensor]:
        """The objective for users [B], candidates items [B, 1+N] (positive first) and the hybrid
        mask mix [B, 1+N] (True: the candidate enters U-I with its content vector).

        Each distinct candidate of the batch is embedded and encoded once; the batch's users (and
        positive-item anchors) are scored against all of them with one product, and each row then
        picks its own 1+N columns: the same logits as scoring [B, 1+N, d] gathered vectors, without
        materialising them (`tests/test_models_clcrec_bm3.py` checks against that brute force)."""
        cfg = self.cfg
        uniq, inverse = torch.unique(items, return_inverse=True)  # inverse: [B, 1+N] columns of uniq
        ids = self.id_emb[self.n_users + uniq]
        content = self.encode(uniq)
        user = self.id_emb[users]
        anchor = F.normalize(self.id_emb[self.n_users + items[:, 0]], dim=-1)
        re_logits = torch.gather(anchor @ F.normalize(content, dim=-1).T, 1, inverse)
        l_re = info_nce_logits(re_logits / cfg.temperature)
        by_id = torch.gather(user @ ids.T, 1, inverse)
        by_content = torch.gather(user @ content.T, 1, inverse)
        l_ui = info_nce_logits(torch.where(mix, by_content, by_id) / cfg.temperature)
        item_norms = torch.linalg.vector_norm(ids, dim=-1)[inverse]
        reg = cfg.reg_weight * 0.5 * (torch.linalg.vector_norm(user, dim=-1).mean() + item_norms.mean())
        loss = cfg.lambda_re * l_re + (1.0 - cfg.lambda_re) * l_ui + reg
        return {"loss": loss, "re": l_re, "ui": l_ui, "reg": reg}

    # ---- training -----------------------------------------------------------------------------
    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        # The shared sampler's single negative (batch.neg) is not used: CLCRec needs num_neg per pair.
        neg = self.sample_negatives(batch.users)
        items = torch.cat([batch.pos.unsqueeze(1), neg], dim=1)
        mix = torch.rand(items.shape, device=items.device) < self.cfg.mix_rate
        return self.losses(batch.users, items, mix)

    # ---- scoring ------------------------------------------------------------------------------
    def item_vectors(self) -> torch.Tensor:
        """ID embeddings of warm items; content vectors of items without training interactions."""
        items = self.id_emb[self.n_users :]
        if self.cfg.cold_scoring == "content" and bool(self.cold.any()):
            items = torch.where(self.cold.unsqueeze(1), self.encode(), items)
        return items

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.id_emb[: self.n_users], self.item_vectors()
