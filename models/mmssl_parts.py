"""Building blocks of MMSSL (Wei et al., WWW'23) shared by the paper variant and the official-code variant.

Every piece here is small and has one job: graph normalisation, the batch training mask, relation rows
(Eq. 3) in dense or factored (low-rank + sparse) form, the discriminator (Eq. 4), the Gumbel transform
(Eq. 5), the gradient penalty (Eq. 7), the semantic-neighbour graph (Eq. 8), the cross-modal attention
(Eq. 9) and the contrastive losses (Eq. 11). Nothing here ever forms a users×items or items×items
matrix; the largest tensors are [batch, n_items] rows and the discriminator's own weights.

The factored form is what makes training fast (spec §10.2). A relation row is `scale_b · (x_b · Yᵀ)`
with the user's training positives removed, plus a few sparse entries (`Rows`). The discriminator's
first layer `row · W₁ᵀ` then costs `x_b · (Yᵀ W₁ᵀ)` (rank d) plus one sparse×dense product for the
sparse entries of all row blocks together (`first_layers`), instead of a [rows, I] × [I, I/4] product;
dot products at the positives are sampled products (SDDMM), row norms come from the d×d Gram of Y. The
gradient penalty needs ‖W₁ᵀ δ_b‖ per row, computed through the symmetric Gram W₁W₁ᵀ when that is
cheaper (`row_sq_norms`). All of it is exact up to float rounding; the tests and
`benchmarks/mmssl_speed.py` check it against the dense computation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from mmbench.models.graph import Graph

# Gumbel-softmax entries below this are dropped from the factored real rows. A softmax row sums to 1,
# so the dropped mass is < n_items · 1e-20 relative to the row: far below float32 resolution (6e-8)
# for any realistic item count, i.e. the computed function is unchanged.
GUMBEL_SPARSE_TOL = 1e-20
# Use the sparse form of an extra term only while it is this sparse; denser terms stay dense.
MAX_SPARSE_FRACTION = 0.125


# --------------------------------------------------------------------------- graphs

def one_sided_norm(r: sp.spmatrix) -> sp.csr_matrix:
    """diag((deg + 1e-8)^-½) · R (scipy, float32).

    The official code's normalisation (spec §1.4): entry [u, i] = 1/√|N_u| (one-sided, not the
    symmetric LightGCN one). Duplicate coordinates are summed first (the rebuilt semantic graphs count a
    pair twice when it was collected twice). Zero-degree rows have no entries, so they stay zero (no NaN).
    """
    r = sp.csr_matrix(r, dtype=np.float64)
    r.sum_duplicates()
    deg = np.asarray(r.sum(axis=1)).ravel()
    d = sp.diags(np.power(deg + 1e-8, -0.5))
    return sp.csr_matrix(d @ r, dtype=np.float32)


def bipartite_pair(r: sp.spmatrix, device: torch.device) -> tuple[Graph, Graph]:
    """(Â_ui [U, I], Â_iu [I, U]): each side normalised by its own degree (spec §1.4, paper Eq. 10)."""
    r = sp.csr_matrix(r)
    return (Graph.from_scipy(one_sided_norm(r), device),
            Graph.from_scipy(one_sided_norm(r.T.tocsr()), device))


def coo_matrix(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape) -> sp.csr_matrix:
    """A [U, I] matrix from coordinate lists; duplicates are summed (as the official rebuild does)."""
    m = sp.coo_matrix((vals.astype(np.float64), (rows.astype(np.int64), cols.astype(np.int64))), shape=shape)
    return m.tocsr()


def batch_positions(indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(row in batch, item) of every training positive of the batch users, built on the device."""
    start, end = indptr[users], indptr[users + 1]
    deg = end - start
    rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), deg)
    offset = torch.arange(int(deg.sum()), device=users.device) - torch.repeat_interleave(
        torch.cumsum(deg, 0) - deg, deg)
    cols = indices[torch.repeat_interleave(start, deg) + offset]
    return rows, cols


def dense_mask(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_items: int) -> torch.Tensor:
    """The batch's dense binary training rows r_b as float32 [B, I] (built once per batch)."""
    m = torch.zeros(n_rows, n_items, device=rows.device)
    m[rows, cols] = 1.0
    return m


# --------------------------------------------------------------------------- relation rows (Eq. 3)

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

    Low-rank part: scale·(x (Yᵀ W)) with the [d, H] projection shared between blocks of the same Y.
    Sparse parts of all blocks: ONE sparse×dense product (and one in the backward).
    """
    outs, sparse, offset, proj = [], [], 0, {}
    for blk in blocks:
        key = id(blk.y)
        if key not in proj:
            proj[key] = blk.y.T @ weight_t
        low = blk.scale[:, None] * (blk.x @ proj[key])
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


def _masked_sq_norm(x: torch.Tensor, y: torch.Tensor, pos_rows: torch.Tensor, pos_dots: torch.Tensor
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
    n = _masked_sq_norm(x, y, pos[0], dots).clamp_min(1e-24).sqrt()  # = max(‖·‖, 1e-12), NaN-free grad
    return Rows(x, y, (1.0 / n).to(x.dtype), pos=pos, pos_dots=dots)


def cosine_rows_dense(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 3: per-entry cosine f_u·f_i / (‖f_u‖‖f_i‖) (zero vectors give 0)."""
    return rownorm(x) @ rownorm(y).T


def cosine_rows_factored(x: torch.Tensor, y: torch.Tensor) -> Rows:
    return Rows(rownorm(x), rownorm(y), torch.ones(len(x), device=x.device, dtype=x.dtype))


# --------------------------------------------------------------------------- Gumbel transform (Eq. 5)

def gumbel_noise(shape, device) -> torch.Tensor:
    """g = −log(−log(ξ + 1e-8) + 1e-8), ξ ~ U(0, 1) (the official code's guarded form)."""
    xi = torch.rand(shape, device=device)
    return -torch.log(-torch.log(xi + 1e-8) + 1e-8)


def gumbel_softmax_rows(mask: torch.Tensor, scale: float, tau: float) -> torch.Tensor:
    """softmax_i((r + scale·g) / τ): the 'transformation' term of Eq. 5, dense [B, I]."""
    g = gumbel_noise(mask.shape, mask.device)
    return torch.softmax((mask + scale * g) / tau, dim=1)


def sparsify(dense: torch.Tensor, tol: float = 0.0):
    """(rows, cols, vals) of the entries above `tol`, or None when too many (keep it dense)."""
    keep = dense > tol
    if int(keep.sum()) > MAX_SPARSE_FRACTION * dense.numel():
        return None
    r, c = keep.nonzero(as_tuple=True)
    return r, c, dense[r, c]


def official_real_rows_factored(h_rows: Rows, extra, extra_dense, zeta: float, mask: torch.Tensor) -> Rows:
    """Official real rows rownorm(extra + ζ·S^h) in factored form (S^h = `h_rows`, masked, unit norm).

    ‖extra + ζS‖² = ζ²‖S‖² + Σ_extra (e² + 2ζ e S); S at the extra positions is read from the factors
    (zero at training positives — the usual case: the Gumbel softmax sits on the positives).
    """
    x, y, s = h_rows.x, h_rows.y, h_rows.scale
    raw = _masked_sq_norm(x, y, h_rows.pos[0], h_rows.pos_dots)
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


# --------------------------------------------------------------------------- discriminator (Eq. 4)

def inverted_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, distributed exactly as F.dropout, with the mask drawn as `U(0,1) ≥ p`: torch's
    CPU `bernoulli_` costs about three uniform draws per element, and D drops ~4·B·I/4 entries per batch."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep


class Discriminator(nn.Module):
    """D(a) = scale · σ(L3(Γ₂(Γ₁(a)))), Γ = Dropout(BatchNorm(LeakyReLU(Linear(·)))), widths I/4, I/8.

    The official code writes `LeakyReLU(True)`, i.e. negative_slope = 1.0: the identity (`slope`); it
    scales the sigmoid by 100 (`out_scale`); linear weights are Kaiming-normal (fan-in, gain √2) with
    zero biases; dropouts 0.31 / 0.5. The first layer's weight is stored transposed ([I, I/4], same
    function) so that gathering item rows of it is contiguous. `tail` starts after the first Linear so
    that the fast path can feed it a first-layer activation computed without forming the input rows.
    """

    def __init__(self, n_items: int, drop1: float, drop2: float, slope: float, out_scale: float):
        super().__init__()
        h1, h2 = max(1, n_items // 4), max(1, n_items // 8)
        w1 = nn.init.kaiming_normal_(torch.empty(h1, n_items))  # fan-in = n_items
        self.w1t = nn.Parameter(w1.T.contiguous())
        self.b1 = nn.Parameter(torch.zeros(h1))
        self.l2, self.l3 = nn.Linear(h1, h2), nn.Linear(h2, 1)
        self.bn1, self.bn2 = nn.BatchNorm1d(h1), nn.BatchNorm1d(h2)
        self.drop1, self.drop2 = drop1, drop2
        self.slope, self.out_scale = slope, out_scale
        for lin in (self.l2, self.l3):
            nn.init.kaiming_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def act(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(z, self.slope)

    def tail(self, z1: torch.Tensor) -> torch.Tensor:
        """Everything after the first Linear: [rows, I/4] pre-activations → [rows] critic values."""
        z = inverted_dropout(self.bn1(self.act(z1)), self.drop1, self.training)
        z = inverted_dropout(self.bn2(self.act(self.l2(z))), self.drop2, self.training)
        return self.out_scale * torch.sigmoid(self.l3(z).squeeze(1))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.tail(torch.addmm(self.b1, rows, self.w1t))


def sym_gram(w: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """wᵀ w computing only the column blocks on and above the diagonal (the rest by symmetry)."""
    n = w.shape[1]
    if n < 256:
        return w.T @ w
    edges = [round(n * k / blocks) for k in range(blocks + 1)]
    out = torch.empty(n, n, dtype=w.dtype, device=w.device)
    for a in range(blocks):
        ca = slice(edges[a], edges[a + 1])
        for b in range(a, blocks):
            cb = slice(edges[b], edges[b + 1])
            blk = w[:, ca].T @ w[:, cb]
            out[ca, cb] = blk
            if a != b:
                out[cb, ca] = blk.T
    return out


class _GramSqNorms(torch.autograd.Function):
    """‖W δ_b‖² for every row b of δ [n, H], W [I, H], via G = WᵀW ([H, H], exact).

    Cheaper than forming δWᵀ ([n, I]) when H < n. Backward: ∂δ = 2c ⊙ (δG) (already computed in the
    forward), ∂W = 2 W (δᵀ diag(c) δ).
    """

    @staticmethod
    def forward(ctx, delta, weight_t):
        dg = delta @ sym_gram(weight_t)
        ctx.save_for_backward(delta, weight_t, dg)
        return (dg * delta).sum(1)

    @staticmethod
    def backward(ctx, grad):
        delta, weight_t, dg = ctx.saved_tensors
        g_delta = g_weight = None
        if ctx.needs_input_grad[0]:
            g_delta = 2.0 * grad[:, None] * dg
        if ctx.needs_input_grad[1]:
            g_weight = 2.0 * (weight_t @ ((delta * grad[:, None]).T @ delta))
        return g_delta, g_weight


def row_sq_norms(delta: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """‖∂D/∂x_b‖² = ‖W₁ᵀ δ_b‖² per row (δ = ∂D/∂z₁), by the cheaper exact route."""
    if weight_t.shape[1] < delta.shape[0]:
        return _GramSqNorms.apply(delta, weight_t)
    g = delta @ weight_t.T
    return (g * g).sum(1)


def gradient_penalty(norm_sq: torch.Tensor) -> torch.Tensor:
    """mean_b (‖∇D‖ − 1)²; the sqrt is guarded at 0 (a zero gradient row would give a NaN derivative)."""
    return (norm_sq.clamp_min(1e-24).sqrt() - 1.0).pow(2).mean()


# --------------------------------------------------------------------------- semantic graphs (Eq. 8)

def topk_pairs(users: torch.Tensor, top_items: torch.Tensor, official_pairing: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, item) pairs from per-user top-k item lists [B, k].

    Paper: each user with its own top-k items. Official code: the user list is tiled
    ([u1..uB, u1..uB, ...]) while the items are flattened row by row, so pair j is
    (u_{j mod B}, item_{⌊j/k⌋, j mod k}): wrong users for k > 1 (spec §4.1).
    """
    k = top_items.shape[1]
    items = top_items.reshape(-1)
    if official_pairing:
        return users.repeat(k), items
    return users.repeat_interleave(k), items


# --------------------------------------------------------------------------- attention (Eq. 9)

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
    and W_q only ever gets rounding-noise gradient. `literal=True` recomputes it the way the code does (W_q
    queries, 'keys' reshaped out of the permuted queries, softmax, broadcast, concat, W_cat); the fast
    path uses mean_m(E^m)·W_eff directly. W_k and W_v of the code are never used and are not allocated.
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

    def forward(self, stack: torch.Tensor, literal: bool = False) -> torch.Tensor:
        if not literal:
            return stack.mean(0) @ self.w_eff()
        m, n, d = stack.shape
        h, dh = self.heads, d // self.heads
        q = (stack @ self.wq).view(m, n, h, dh).permute(2, 0, 1, 3).contiguous()  # [H, M, N, dh]
        k = q.view(m, n, h, dh).permute(2, 0, 1, 3)  # the code's scrambled 'keys'
        logits = torch.einsum("hqnc,hknc->hqkn", q, k) / math.sqrt(dh)
        alpha = torch.softmax(logits, dim=2)  # over key modalities
        out = torch.einsum("hqkn,qnd->hqnd", alpha, stack)  # values indexed by the QUERY modality
        cat = out.permute(1, 2, 0, 3).reshape(m, n, h * d)
        return (cat @ self.wcat).mean(0)


# --------------------------------------------------------------------------- contrastive (Eq. 11)

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


# --------------------------------------------------------------------------- r/p-GAE (Table 3)

def gae_loss(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Graph-autoencoder reconstruction of the observed rows: weighted BCE with logits `scores`
    ([B, I]), positives up-weighted by (#negatives / #positives) per row (Kipf & Welling 2016)."""
    n_pos = mask.sum(1).clamp_min(1.0)
    w_pos = (mask.shape[1] - n_pos) / n_pos
    per = F.softplus(scores) * (1.0 - mask) + w_pos[:, None] * F.softplus(-scores) * mask
    return per.mean()
