"""One training batch of (user, positive item, negative item) triples.

It lives here, not in `models/`, so imports point one way: models import from `mmbench.train`
(the batch and the shared sampler), never the other way round."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One training batch of (user, positive item, negative item) triples."""

    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.users.to(device), self.pos.to(device), self.neg.to(device))

    def __len__(self) -> int:
        return len(self.users)
