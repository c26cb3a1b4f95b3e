"""The "real" rows of the adversarial game (Eq. 5): a Gumbel-softmax transformation of the observed rows
plus ζ × the final embeddings' relation rows, in the factored form of `relation_rows`.

The transformation is dense by nature (one Gumbel draw per entry), but at the temperatures used
(τ ≈ 0.002–0.02) its mass sits on a handful of entries per row; those are kept as sparse entries and the
rest (below 1e-20 of a row that sums to 1, i.e. below float32 resolution) is dropped.
"""
from __future__ import annotations

import torch

from mmbench.models.mmssl.relation_rows import Rows, masked_sq_norm, sampled_dots


# Gumbel-softmax entries below this are dropped from the factored real rows. A softmax row sums to 1,
# so the dropped mass is < n_items · 1e-20 relative to the row: far below float32 resolution (6e-8)
# for any realistic item count, i.e. the computed function is unchanged.
GUMBEL_SPARSE_TOL = 1e-20


# Use the sparse form of an extra term only while it is this sparse; denser terms stay dense.
MAX_SPARSE_FRACTION = 0.125


def gumbel_softmax_rows(mask: torch.Tensor, scale: float, tau: float) -> torch.Tensor:
    """softmax_i((r + scale·g) / τ), g = −log(−log(ξ + 1e-8) + 1e-8), ξ ~ U(0, 1) (the official code's
    guarded Gumbel noise): the 'transformation' term of Eq. 5, dense [B, I]. Computed in place in one
    buffer (the same operations, in the same order, as the textbook expression)."""
    g = torch.rand(mask.shape, device=mask.device)
    g.add_(1e-8).log_().neg_().add_(1e-8).log_().neg_()
    return torch.softmax(g.mul_(scale).add_(mask).div_(tau), dim=1)


def sparsify(dense: torch.Tensor, tol: float = 0.0):
    """(rows, cols, vals) of the entries above `tol`, or None when too many (keep it dense)."""
    r, c = (dense > tol).nonzero(as_tuple=True)
    if len(r) > MAX_SPARSE_FRACTION * dense.numel():
        return None
    return r, c, dense[r, c]


def official_real_rows_factored(h_rows: Rows, extra, extra_dense, zeta: float, mask: torch.Tensor) -> Rows:
    """Official real rows rownorm(extra + ζ·S^h) in factored form (S^h = `h_rows`, masked, unit norm).

    ‖extra + ζS‖² = ζ²‖S‖² + Σ_extra (e² + 2ζ e S); S at the extra positions is read from the factors
    (zero at training positives — the usual case: the Gumbel softmax sits on the positives).
    """
    x, y, s = h_rows.x, h_rows.y, h_rows.scale
    raw = masked_sq_norm(x, y, h_rows.pos[0], h_rows.pos_dots)
    sq = zeta ** 2 * raw * s.double() ** 2
    if extra_dense is not None:
        sq = ((extra_dense + zeta * h_rows.dense()).double() ** 2).sum(1)
    elif extra is not None and len(extra[0]):
        r, c, e = extra
        s_at = sampled_dots(x, y, r, c) * s[r] * (1.0 - mask[r, c])
        e64, s64 = e.double(), s_at.double()
        sq = sq.index_add(0, r, e64 * e64 + 2 * zeta * e64 * s64)
    inv = (1.0 / sq.clamp_min(1e-24).sqrt()).to(x.dtype)
    new_extra = None
    if extra is not None and extra_dense is None:
        r, c, e = extra
        new_extra = (r, c, e * inv[r])
    return Rows(x, y, zeta * s * inv, pos=h_rows.pos, pos_dots=h_rows.pos_dots, extra=new_extra,
                extra_dense=None if extra_dense is None else extra_dense * inv[:, None])
