"""Relation rows (Eq. 3) of the batch users, kept factored so the discriminator never sees a [B, I] row.

A relation row is `scale_b · (x_b · Yᵀ)` with the user's training positives removed, plus a few sparse
entries (`Rows`). The discriminator's first layer `row · W₁ᵀ` then costs `x_b · (Yᵀ W₁ᵀ)` (rank d) plus one
sparse×dense product for the sparse entries of all row blocks together (`first_layers`), instead of a
[rows, I] × [I, I/4] product; dot products at the positives are sampled products (SDDMM), row norms come
from the d×d Gram of Y (spec §10.2 item 5). Exact up to float rounding; tests/mmssl_oracle.py is the
dense reference it is checked against.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def coalesce(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_cols: int):
    """Sort (row, col) entries row-major and sum duplicates (differentiable in `vals`)."""
    key = rows * n_cols + cols
    key_sorted, order = torch.sort(key)
    uniq, inverse = torch.unique_consecutive(key_sorted, return_inverse=True)
    summed = vals.new_zeros(len(uniq)).index_add(0, inverse, vals[order])
    return uniq // n_cols, uniq % n_cols, summed


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape) -> torch.Tensor:
    """CSR from row-major sorted, duplicate-free entries."""
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(counts, 0)
    return torch.sparse_csr_tensor(crow, cols, vals, size=shape, check_invariants=False)


class _SparseRowsMatmul(torch.autograd.Function):
    """S @ W for a sparse S [n, I] given by sorted unique (rows, cols, vals) and a dense W [I, H].

    Backward: ∂vals = (ḡ Wᵀ) sampled at S's pattern (`sampled_addmm`), ∂W = Sᵀ ḡ (a CSR of the transpose).
    Neither ever forms an [n, I] or an [nnz, H] tensor.
    """

    @staticmethod
    def forward(ctx, rows, cols, vals, weight, n_rows):
        s = _csr(rows, cols, vals.detach(), (n_rows, weight.shape[0]))
        ctx.save_for_backward(rows, cols, vals, weight)
        ctx.n_rows = n_rows
        return s @ weight

    @staticmethod
    def backward(ctx, grad):
        rows, cols, vals, weight = ctx.saved_tensors
        g_vals = g_weight = None
        if ctx.needs_input_grad[2]:
            pattern = _csr(rows, cols, torch.zeros_like(vals), (ctx.n_rows, weight.shape[0]))
            g_vals = torch.sparse.sampled_addmm(pattern, grad.contiguous(), weight.T, beta=0.0).values()
        if ctx.needs_input_grad[3]:
            order = torch.argsort(cols * ctx.n_rows + rows)
            st = _csr(cols[order], rows[order], vals.detach()[order], (weight.shape[0], ctx.n_rows))
            g_weight = st @ grad
        return None, None, g_vals, g_weight, None


def sampled_dots(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x_r · y_c for row-major sorted unique (r, c): (x Yᵀ) sampled at a sparse pattern (SDDMM),
    differentiable, without forming [nnz, d] gathers or the [B, I] product."""
    if len(rows) == 0:
        return x.new_zeros(0)
    pattern = _csr(rows, cols, x.new_zeros(len(rows)), (len(x), len(y)))
    return torch.sparse.sampled_addmm(pattern, x, y.T, beta=0.0).values()


@dataclass
class Rows:
    """A [B, I] block of rows kept factored: scale_b · (x_b · Yᵀ) [positives removed] + sparse extra.

    `pos` (the batch users' training positives, row-major sorted, when given): the low-rank value is
    removed there, as the official code does (it multiplies by 1 − r); `pos_dots` caches x_b·y_i at
    those positions. `extra` = (rows, cols, vals) adds sparse entries (the Gumbel softmax support or the
    observed interactions); `extra_dense` is the fallback for a dense term.
    """

    x: torch.Tensor
    y: torch.Tensor
    scale: torch.Tensor
    pos: tuple[torch.Tensor, torch.Tensor] | None = None
    pos_dots: torch.Tensor | None = None
    extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    extra_dense: torch.Tensor | None = None

    def sparse_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """All sparse entries, row-major sorted and unique: −(low-rank value) at the masked positives,
        plus `extra` (merged without a sort when it sits exactly on the positives)."""
        have_pos = self.pos is not None and len(self.pos[0]) > 0
        have_extra = self.extra is not None and len(self.extra[0]) > 0
        if have_pos:
            r, c = self.pos
            dots = self.pos_dots if self.pos_dots is not None else sampled_dots(self.x, self.y, r, c)
            v = -self.scale[r] * dots
            if not have_extra:
                return r, c, v
            er, ec, ev = self.extra
            if len(er) == len(r) and torch.equal(er, r) and torch.equal(ec, c):
                return r, c, v + ev
            return coalesce(torch.cat([r, er]), torch.cat([c, ec]), torch.cat([v, ev]), len(self.y))
        return self.extra if have_extra else None

    def dense(self) -> torch.Tensor:
        """The rows as a dense [B, I] tensor (tests and the rare dense fallback)."""
        out = self.scale[:, None] * (self.x @ self.y.T)
        terms = self.sparse_terms()
        if terms is not None:
            r, c, v = terms
            out = out.index_put((r, c), v, accumulate=True)
        if self.extra_dense is not None:
            out = out + self.extra_dense
        return out


def first_layers(blocks: list[Rows], weight_t: torch.Tensor) -> list[torch.Tensor]:
    """`block @ weight_t` ([B_k, H]) for each block without forming any row.

    Low-rank part: scale·(x (Yᵀ W)); the [d, H] projections of all distinct Y come from ONE product
    [Y₁ … Y_k]ᵀ W (and so do their gradients, one product each for W and for the Ys).
    Sparse parts of all blocks: ONE sparse×dense product (and one in the backward).
    """
    ys: dict[int, int] = {}
    for blk in blocks:
        ys.setdefault(id(blk.y), len(ys))
    distinct = list({id(blk.y): blk.y for blk in blocks}.values())
    y_cat = distinct[0] if len(distinct) == 1 else torch.cat(distinct, dim=1)
    proj = (y_cat.T @ weight_t).split([y.shape[1] for y in distinct])
    outs, sparse, offset = [], [], 0
    for blk in blocks:
        low = blk.scale[:, None] * (blk.x @ proj[ys[id(blk.y)]])
        if blk.extra_dense is not None:
            low = low + blk.extra_dense @ weight_t
        outs.append(low)
        terms = blk.sparse_terms()
        if terms is not None:
            sparse.append((terms[0] + offset, terms[1], terms[2]))
        offset += len(blk.x)
    if sparse:
        r, c, v = (torch.cat(p) for p in zip(*sparse))
        corr = _SparseRowsMatmul.apply(r, c, v, weight_t, offset)
        outs = list(torch.split(torch.cat(outs) + corr, [len(b.x) for b in blocks]))
    return outs


def rownorm(x: torch.Tensor) -> torch.Tensor:
    """x / max(‖x‖₂, 1e-12) per row: zero rows stay zero."""
    return F.normalize(x, dim=1)


def masked_rows_dense(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Official Eq. 3: rownorm((x Yᵀ) ⊙ (1 − r)) — a masked dot product, row-normalised over items."""
    return rownorm((x @ y.T) * (1.0 - mask))


def masked_sq_norm(x: torch.Tensor, y: torch.Tensor, pos_rows: torch.Tensor, pos_dots: torch.Tensor
                    ) -> torch.Tensor:
    """‖(x Yᵀ) ⊙ (1 − r)‖² per row = x (YᵀY) xᵀ − Σ_pos (x·y_i)², combined in float64."""
    xd, yd = x.double(), y.double()
    total = ((xd @ (yd.T @ yd)) * xd).sum(1)
    if len(pos_rows):
        pv = pos_dots.double()
        total = total.index_add(0, pos_rows, -pv * pv)
    return total


def masked_rows_factored(x: torch.Tensor, y: torch.Tensor, pos) -> Rows:
    """Official Eq. 3 in factored form; the row norm comes from the d×d Gram of Y (exact)."""
    dots = sampled_dots(x, y, *pos)
    n = masked_sq_norm(x, y, pos[0], dots).clamp_min(1e-24).sqrt()  # = max(‖·‖, 1e-12), NaN-free grad
    return Rows(x, y, (1.0 / n).to(x.dtype), pos=pos, pos_dots=dots)


def cosine_rows_dense(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 3: per-entry cosine f_u·f_i / (‖f_u‖‖f_i‖) (zero vectors give 0)."""
    return rownorm(x) @ rownorm(y).T


def cosine_rows_factored(x: torch.Tensor, y: torch.Tensor) -> Rows:
    return Rows(rownorm(x), rownorm(y), torch.ones(len(x), device=x.device, dtype=x.dtype))
