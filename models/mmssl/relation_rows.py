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


class _FactoredFirstLayer(torch.autograd.Function):
    """Z = [scale_k ⊙ (x_k P_{y(k)})]_k + S W, P = [Y₁ … Y_m]ᵀ W: a stack of factored row blocks times W.

    One node for the whole first layer, so that its gradients are assembled without [I, H] temporaries:
    ∂W = Y_cat ∂P + Sᵀ ∂Z in ONE buffer (the sparse part added in place), ∂Y_cat = W ∂Pᵀ, ∂x_k, ∂scale_k
    as autograd would compute them, ∂vals = (∂Z Wᵀ) sampled at S's pattern (`sampled_addmm`). Nothing
    [n, I], [nnz, H] or [I, I/4]-sized besides ∂W is ever formed. `spans` = (first row, row count, first
    column of its Y in Y_cat, d) per block; S is given by row-major sorted unique (rows, cols).
    """

    @staticmethod
    def forward(ctx, weight_t, y_cat, x_cat, scale_cat, vals, rows, cols, spans):
        proj = y_cat.T @ weight_t
        low = [scale_cat[r0:r0 + n, None] * (x_cat[r0:r0 + n] @ proj[c0:c0 + d]) for r0, n, c0, d in spans]
        z = torch.cat(low) if len(low) > 1 else low[0]
        has_sparse = len(rows) > 0
        if has_sparse:
            z = torch.addmm(z, _csr(rows, cols, vals.detach(), (len(x_cat), len(weight_t))), weight_t)
        ctx.save_for_backward(weight_t, y_cat, x_cat, scale_cat, vals, rows, cols, proj)
        ctx.spans, ctx.has_sparse = spans, has_sparse
        return z

    @staticmethod
    def backward(ctx, grad):
        weight_t, y_cat, x_cat, scale_cat, vals, rows, cols, proj = ctx.saved_tensors
        need_w, need_y, need_x, need_s, need_v = ctx.needs_input_grad[:5]
        g_proj = torch.zeros_like(proj) if (need_w or need_y) else None
        g_x = torch.zeros_like(x_cat) if need_x else None
        g_s = torch.zeros_like(scale_cat) if need_s else None
        for r0, n, c0, d in ctx.spans:
            g = grad[r0:r0 + n]
            x, p, sc = x_cat[r0:r0 + n], proj[c0:c0 + d], scale_cat[r0:r0 + n, None]
            if need_s:
                g_s[r0:r0 + n] = (g * (x @ p)).sum(1)
            gs = g * sc
            if need_x:
                g_x[r0:r0 + n] = gs @ p.T
            if g_proj is not None:
                g_proj[c0:c0 + d] += x.T @ gs
        g_w = g_y = g_v = None
        if need_w:
            g_w = y_cat @ g_proj
            if ctx.has_sparse:
                order = torch.argsort(cols * len(x_cat) + rows)
                st = _csr(cols[order], rows[order], vals.detach()[order], (len(weight_t), len(x_cat)))
                g_w.addmm_(st, grad)
        if need_y:
            g_y = weight_t @ g_proj.T
        if need_v and ctx.has_sparse:
            pattern = _csr(rows, cols, torch.zeros_like(vals), (len(x_cat), len(weight_t)))
            g_v = torch.sparse.sampled_addmm(pattern, grad.contiguous(), weight_t.T, beta=0.0).values()
        return g_w, g_y, g_x, g_s, g_v, None, None, None


def first_layers(blocks: list[Rows], weight_t: torch.Tensor) -> torch.Tensor:
    """`block @ weight_t` for every block, stacked ([Σ_k B_k, H]), without forming any row: one
    `_FactoredFirstLayer` for the low-rank parts (one [d·m, H] projection for the m distinct Ys) and the
    sparse entries of all blocks together; a dense fallback term (`extra_dense`, rare) is added by a
    plain product."""
    distinct: dict[int, tuple[int, torch.Tensor]] = {}
    col = 0
    for blk in blocks:
        if id(blk.y) not in distinct:
            distinct[id(blk.y)] = (col, blk.y)
            col += blk.y.shape[1]
    ys = [y for _, y in distinct.values()]
    y_cat = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)
    spans, sparse, offset = [], [], 0
    for blk in blocks:
        spans.append((offset, len(blk.x), distinct[id(blk.y)][0], blk.y.shape[1]))
        terms = blk.sparse_terms()
        if terms is not None:
            sparse.append((terms[0] + offset, terms[1], terms[2]))
        offset += len(blk.x)
    x_cat = torch.cat([blk.x for blk in blocks]) if len(blocks) > 1 else blocks[0].x
    scale_cat = torch.cat([blk.scale for blk in blocks]) if len(blocks) > 1 else blocks[0].scale
    if sparse:
        rows, cols, vals = (torch.cat(part) for part in zip(*sparse))
    else:
        rows = cols = torch.zeros(0, dtype=torch.long, device=weight_t.device)
        vals = weight_t.new_zeros(0)
    z = _FactoredFirstLayer.apply(weight_t, y_cat, x_cat, scale_cat, vals, rows, cols, spans)
    if any(blk.extra_dense is not None for blk in blocks):
        z = z + torch.cat([blk.extra_dense @ weight_t if blk.extra_dense is not None
                           else weight_t.new_zeros(len(blk.x), weight_t.shape[1]) for blk in blocks])
    return z


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
