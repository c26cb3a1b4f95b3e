"""Cross-modal attention (Eq. 9): the paper's multi-head attention over modalities, and what the
authors' code computes instead (a linear map, spec §2.4)."""
from __future__ import annotations

import math

import torch
from torch import nn


class ModalityAttention(nn.Module):
    """Paper Eq. 9: multi-head attention across modalities, per node.

    Per head h: α^h_{m,m'} = softmax_{m'}((e^m W^Q_h)·(e^{m'} W^K_h)/√(d/H)); head output
    Σ_{m'} α^h_{m,m'} e^{m'} (no value projection, as in Eq. 9); the H head outputs are concatenated and
    mapped back to d by W_cat (the paper's "Π_h" read as concatenation, spec §2.4). Returns the mean over
    modalities of the refined embeddings (ẽ = Σ_m ẽ^m / |M|).
    """

    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"embedding_size {d} must be divisible by n_heads {heads}")
        self.heads = heads
        self.wq = nn.Parameter(torch.empty(d, d))
        self.wk = nn.Parameter(torch.empty(d, d))
        self.wcat = nn.Parameter(torch.empty(heads * d, d))
        for p in (self.wq, self.wk, self.wcat):
            nn.init.xavier_uniform_(p)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        m, n, d = stack.shape
        h, dh = self.heads, d // self.heads
        q = (stack @ self.wq).view(m, n, h, dh)
        k = (stack @ self.wk).view(m, n, h, dh)
        logits = torch.einsum("anhc,bnhc->hnab", q, k) / math.sqrt(dh)  # [H, N, M_q, M_k]
        alpha = torch.softmax(logits, dim=-1)
        heads = torch.einsum("hnab,bnd->anhd", alpha, stack)  # [M, N, H, d]
        return (heads.reshape(m, n, h * d) @ self.wcat).mean(0)


class OfficialAttention(nn.Module):
    """The official code's Eq. 9, which collapses to a linear map (spec §2.4, finding 1).

    Values are broadcast along the query-modality axis and the softmax weights are summed over the key
    axis, so they cancel: the output for modality m is e^m · W_eff with W_eff = Σ_h W_cat[h-th d×d block],
    and W_q only ever gets rounding-noise gradient. So this computes mean_m(E^m)·W_eff directly; W_q is
    kept as a parameter (the code has it, and AdamW decays it), W_k and W_v of the code are never used
    and are not allocated. tests/mmssl_oracle.py keeps the code's literal computation as the reference.
    """

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.wq = nn.Parameter(torch.empty(d, d))
        self.wcat = nn.Parameter(torch.empty(heads * d, d))
        nn.init.xavier_uniform_(self.wq)
        nn.init.xavier_uniform_(self.wcat)

    def w_eff(self) -> torch.Tensor:
        d = self.wcat.shape[1]
        return self.wcat.view(self.heads, d, d).sum(0)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        return stack.mean(0) @ self.w_eff()
