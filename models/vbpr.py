"""VBPR (He & McAuley, AAAI 2016): matrix factorisation whose items also carry a content factor,
a learned linear projection of their (pre-extracted) multimodal features.

    score(u, i) = β_i + γ_u·γ_i + θ_u·(E f_i) + β'·f_i

The global and user biases of the paper cancel in BPR's pairwise difference and are left out.
Choices (documented, each a switch):
- f_i is ALL modalities concatenated (each row-normalised first, `feature_norm`), as in the MMSSL/MMRec
  variant, not the paper's single visual CNN feature.
- The paper's item bias β_i and visual bias β'·f_i are kept (`item_bias`, `visual_bias`); MMRec
  drops both. E has no bias term (a bias would add a per-user constant, which BPR cannot see).
- d = `embedding_size` ID factors + `embedding_size` content factors, as in MMRec (64 + 64).
- L2: `reg_weight`·½Σ‖·‖²/batch over the batch's γ, θ and β_i; `reg_content`·½(‖E‖² + ‖β'‖²) per
  batch for the shared content parameters (the paper's separate λ_E).
- Defaults are generic: `reg_weight` 1e-4 (the value of the other baselines here) and `reg_content`
  0, the λ_E of Cornac's faithful VBPR (reference/baselines.md §4). The `tiktok` preset holds the
  value our wave-1 runs chose on TikTok VALID R@20 from {0, 1e-2, 1e-1, 1} (0.031, 0.049, 0.054,
  0.049): `reg_content` 0.1 — unregularised, the shared E and β' fit TikTok's training pairs within
  two epochs; `reg_weight` barely mattered there (1e-4..1e-1). Any other search is `mmbench tune`'s
  (space: models/spaces/vbpr.yaml).
- Adam with lr 1e-3 (the paper used SGD; Adam is what every baseline here uses).
"""
from __future__ import annotations

import torch
from torch import nn

from mmbench.config import Param
from mmbench.models.base import Batch, Recommender, bpr_loss, l2_per_batch, register
from mmbench.models.multimodal import FEATURE_NORMS, ItemFeatures


@register("vbpr")
class VBPR(Recommender):
    defaults = {"reg_weight": 1e-4, "reg_content": 0.0, "item_bias": True, "visual_bias": True,
                "feature_norm": Param("l2", str, choices=FEATURE_NORMS)}
    presets = {"tiktok": {"reg_content": 0.1}}  # chosen on TikTok VALID (module docstring)
    uses_features = True

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        d = cfg.embedding_size
        self.features = ItemFeatures(data.features, cfg.feature_norm)
        n_feat = sum(self.features.dims)
        self.gamma_user = nn.Embedding(data.n_users, d)
        self.theta_user = nn.Embedding(data.n_users, d)
        self.gamma_item = nn.Embedding(data.n_items, d)
        self.project = nn.Linear(n_feat, d, bias=False)  # E
        for w in (self.gamma_user.weight, self.theta_user.weight, self.gamma_item.weight, self.project.weight):
            nn.init.xavier_uniform_(w)
        # Biases start at 0 (no preference before any evidence).
        self.beta_item = nn.Parameter(torch.zeros(data.n_items)) if cfg.item_bias else None
        self.beta_visual = nn.Parameter(torch.zeros(n_feat)) if cfg.visual_bias else None
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def items(self, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Item vectors [γ_i ‖ E f_i] and item biases β_i + β'·f_i (all items when idx is None)."""
        feats = self.features.concat()
        gamma = self.gamma_item.weight
        if idx is not None:
            feats, gamma = feats[idx], gamma[idx]
        vec = torch.cat([gamma, self.project(feats)], dim=1)
        bias = torch.zeros(len(vec), device=vec.device, dtype=vec.dtype)
        if self.beta_item is not None:
            bias = bias + (self.beta_item if idx is None else self.beta_item[idx])
        if self.beta_visual is not None:
            bias = bias + feats @ self.beta_visual
        return vec, bias

    def users(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.gamma_user(idx), self.theta_user(idx)], dim=1)

    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        u = self.users(batch.users)
        i, bi = self.items(batch.pos)
        j, bj = self.items(batch.neg)
        bpr = bpr_loss((u * i).sum(-1) + bi, (u * j).sum(-1) + bj)
        factors = [self.gamma_user(batch.users), self.theta_user(batch.users),
                   self.gamma_item(batch.pos), self.gamma_item(batch.neg)]
        if self.beta_item is not None:
            factors += [self.beta_item[batch.pos], self.beta_item[batch.neg]]
        reg = self.cfg.reg_weight * l2_per_batch(*factors)
        if self.cfg.reg_content > 0:
            content = self.project.weight.pow(2).sum()
            if self.beta_visual is not None:
                content = content + self.beta_visual.pow(2).sum()
            reg = reg + self.cfg.reg_content * 0.5 * content
        return {"loss": bpr + reg, "bpr": bpr, "reg": reg}

    def begin_scoring(self) -> None:
        self._cache = self.items()

    def end_scoring(self) -> None:
        self._cache = None

    def score(self, users: torch.Tensor) -> torch.Tensor:
        vec, bias = self._cache if self._cache is not None else self.items()
        return self.users(users) @ vec.T + bias
