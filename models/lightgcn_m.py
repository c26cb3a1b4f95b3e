"""LightGCN-M (the MMSSL paper's baseline, WWW 2023 §4.1.3): LightGCN whose item input also carries
the item's multimodal content, so the features take part in the graph message passing.

Item ego embedding = ID embedding + W·f_i, where f_i is every modality concatenated (each normalised
first, `feature_norm`) and W a linear map without bias (one linear map of the concatenation is the
sum of one linear map per modality). User ego = ID embedding. Propagation, layer mean, BPR and the
regulariser (on the ID ego rows of the batch) are LightGCN's; W is left unregularised.
The paper gives no more detail than "incorporate multi-modal item features during the graph-based
message passing", so this is our reading of it.

`feature_norm` defaults to `l2` (each row to unit length, the generic choice VBPR and MMGCN make here
too). The `tiktok` preset uses `zscore` (centred columns), chosen by our wave-1 runs on TikTok VALID:
`l2` rows (all TikTok image rows share one dominant direction) peaked at R@20 0.052 by epoch 3, zscore
kept improving to 0.077 (epoch 77). Any other search is `mmbench tune`'s (models/spaces/lightgcn-m.yaml).
"""
from __future__ import annotations

import torch
from torch import nn

from mmbench.config import Param
from mmbench.models.base import register
from mmbench.models.lightgcn import LightGCN, propagate
from mmbench.models.multimodal import FEATURE_NORMS, ItemFeatures


@register("lightgcn-m")
class LightGCNM(LightGCN):
    defaults = {**LightGCN.defaults, "feature_norm": Param("l2", str, choices=FEATURE_NORMS)}
    presets = {"tiktok": {"feature_norm": "zscore"}}  # chosen on TikTok VALID (module docstring)
    uses_features = True

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        self.features = ItemFeatures(data.features, cfg.feature_norm)
        self.project = nn.Linear(sum(self.features.dims), cfg.embedding_size, bias=False)
        nn.init.xavier_uniform_(self.project.weight)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        items = self.item_emb.weight + self.project(self.features.concat())
        out = propagate(self.adj, torch.cat([self.user_emb.weight, items]), self.cfg.n_layers)
        return out[: self.n_users], out[self.n_users :]
