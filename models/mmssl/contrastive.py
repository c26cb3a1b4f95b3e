"""The cross-modal contrastive loss (Eq. 11): the paper's reading (other users as negatives), the literal
reading of its printed subscripts, and the authors' code's GRACE-style loss (spec §5)."""
from __future__ import annotations

import math

import torch

from mmbench.models.mmssl.relation_rows import rownorm


# The fixed shift of `paper_contrastive` needs exp(−2/τ) representable in float32 (τ > ≈ 0.023); below
# this margin it falls back to stable logsumexps.
FIXED_SHIFT_MIN_TAU = 0.05


def _row_and_col_lse(block: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row- and column-wise logsumexp of block/τ for a block of cosines (entries in [−1, 1]).

    Shifting by the bound 1/τ keeps every exp in [e^{−2/τ}, 1], so one exp serves both directions;
    very small τ falls back to two stable logsumexps.
    """
    if tau < FIXED_SHIFT_MIN_TAU:
        return torch.logsumexp(block / tau, dim=1), torch.logsumexp(block / tau, dim=0)
    e = torch.exp((block - 1.0) / tau)
    return e.sum(1).log() + 1.0 / tau, e.sum(0).log() + 1.0 / tau


def paper_contrastive(h: torch.Tensor, modal: list[torch.Tensor], tau: float) -> torch.Tensor:
    """Paper Eq. 11 over the batch users: anchor h_u, positive e_u^m; negatives e^m of the other users
    and the other modalities' e^{m'} of every batch user (scored against e_u^m). Mean over users (the
    code's choice; Eq. 11 sums), summed over modalities.

    The denominator for modality m is logsumexp over [h·e^m | e^m·e^{m'} for m' ≠ m]; each cross block
    e^m·e^{m'} is computed once and read row-wise for m and column-wise for m'.
    """
    q = rownorm(h)
    keys = [rownorm(e) for e in modal]
    n_mod = len(keys)
    parts: list[list[torch.Tensor]] = [[] for _ in range(n_mod)]
    positives = []
    for m, k in enumerate(keys):
        same = q @ k.T  # [B, B]; the diagonal is the positive
        parts[m].append(torch.logsumexp(same / tau, dim=1))
        positives.append(same.diagonal() / tau)
    for m in range(n_mod):
        for o in range(m + 1, n_mod):
            rows, cols = _row_and_col_lse(keys[m] @ keys[o].T, tau)
            parts[m].append(rows)
            parts[o].append(cols)
    total = h.new_zeros(())
    for m in range(n_mod):
        denom = torch.logsumexp(torch.stack(parts[m]), dim=0)
        total = total + (denom - positives[m]).mean()
    return total


def literal_contrastive(h: torch.Tensor, modal: list[torch.Tensor], tau: float) -> torch.Tensor:
    """Eq. 11 with its subscripts as printed: anchor h_u, positive e_u^m, and in the denominator
    Σ_{u'} (exp s(h_u, e_u^m) + exp s(e_u^m, e_u^{m'})), where nothing depends on u' — so the only
    negatives are the same user's other modalities (summed over m' ≠ m) and the sum over u' is the
    constant factor |U| (here the batch size: log B added, no gradient). Mean over users."""
    q = rownorm(h)
    keys = [rownorm(e) for e in modal]
    log_b = math.log(len(h))
    total = h.new_zeros(())
    for m, k in enumerate(keys):
        pos = (q * k).sum(1) / tau
        terms = [pos] + [(k * o).sum(1) / tau for j, o in enumerate(keys) if j != m]
        total = total + (log_b + torch.logsumexp(torch.stack(terms), dim=0) - pos).mean()
    return total


def official_contrastive(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """The code's loss (spec §5): anchor z1 = e^m_u, positive z2 = h_u, GRACE-style in-batch negatives
    (same-view others + every cross-view z2), `−log(ratio + 1e-8)`, mean over the batch."""
    a, b = rownorm(z1), rownorm(z2)
    refl = torch.exp(a @ a.T / tau)
    betw = torch.exp(a @ b.T / tau)
    ratio = betw.diagonal() / (refl.sum(1) - refl.diagonal() + betw.sum(1))
    return -torch.log(ratio + 1e-8).mean()


def official_contrastive_constant(batch: int, like: torch.Tensor) -> torch.Tensor:
    """The value of `official_contrastive` when every anchor is zero: −log(1/(2B−1) + 1e-8)."""
    one = torch.ones((), dtype=like.dtype, device=like.device)
    return -torch.log(one / (2.0 * batch - 1.0) + 1e-8)
