"""Table 3's r/p-GAE: the adversarial L_G replaced by a graph-autoencoder reconstruction loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gae_loss(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Graph-autoencoder reconstruction of the observed rows: weighted BCE with logits `scores`
    ([B, I]), positives up-weighted by (#negatives / #positives) per row (Kipf & Welling 2016)."""
    n_pos = mask.sum(1).clamp_min(1.0)
    w_pos = (mask.shape[1] - n_pos) / n_pos
    per = F.softplus(scores) * (1.0 - mask) + w_pos[:, None] * F.softplus(-scores) * mask
    return per.mean()
