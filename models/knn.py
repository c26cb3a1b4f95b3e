"""Sparse graphs with learnable edge weights: LATTICE-style kNN item graphs and edge-weighted products.

`cosine_topk` finds every row's k most cosine-similar rows block-wise (one [block, n] slab of
similarities at a time, never the dense n×n matrix). A graph with exactly k neighbours per row is two
[n, k] tensors, `cols` (ascending within a row) and `values`: a CSR matrix with row pointer 0, k, 2k…

`EdgePattern` multiplies a fixed sparsity pattern, whose values change every call and carry autograd,
with a dense matrix, and computes per-edge dot products. torch's own backward through sparse CSR
values is orders of magnitude slower on CPU (seconds per product on TikTok-sized graphs), and
gathering [n_edges, d] rows is ~20× slower than a sampled product, so both backwards are written out
with sampled dense×dense products (d/dvalues) and products with the pattern or its transpose (d/dx).
No atomics, so results are deterministic.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

# Elements of one similarity slab (block rows × n): 2**22 floats = 16 MiB.
BLOCK_ELEMENTS = 1 << 22


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def _sddmm(pattern: "EdgePattern", a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per edge (r, c) of the pattern: a[r] · b[c], as a sampled dense×dense product (no gathers)."""
    if pattern.n_edges == 0:
        return a.new_zeros(0)
    mask = _csr(pattern.crow, pattern.col, a.new_zeros(pattern.n_edges), pattern.shape)
    return torch.sparse.sampled_addmm(mask, a, b.T, beta=0.0).values()


class _EdgeDots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, pattern):
        ctx.save_for_backward(a, b)
        ctx.pattern = pattern
        return _sddmm(pattern, a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        p = ctx.pattern
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _csr(p.crow, p.col, grad, p.shape) @ b
        if ctx.needs_input_grad[1]:
            grad_b = _csr(p.crow_t, p.col_t, grad[p.perm], (p.shape[1], p.shape[0])) @ a
        return grad_a, grad_b, None


class _EdgeMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, x, pattern):
        ctx.save_for_backward(values, x)
        ctx.pattern = pattern
        return _csr(pattern.crow, pattern.col, values, pattern.shape) @ x

    @staticmethod
    def backward(ctx, grad):
        values, x = ctx.saved_tensors
        p = ctx.pattern
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_values = _sddmm(p, grad, x)
        if ctx.needs_input_grad[1]:
            grad_x = _csr(p.crow_t, p.col_t, values[p.perm], (p.shape[1], p.shape[0])) @ grad
        return grad_values, grad_x, None


class EdgePattern(nn.Module):
    """A fixed [n_rows, n_cols] sparsity pattern in CSR order (rows sorted, then columns)."""

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, shape: tuple[int, int]):
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        crow, col = crow.long(), col.long()
        row = torch.repeat_interleave(torch.arange(self.shape[0], device=col.device), crow.diff())
        perm = torch.argsort(col * self.shape[0] + row)  # CSR order of the transpose (keys are unique)
        counts = torch.bincount(col, minlength=self.shape[1])
        crow_t = torch.zeros(self.shape[1] + 1, dtype=torch.long, device=col.device)
        crow_t[1:] = counts.cumsum(0)
        for name, t in (("crow", crow), ("col", col), ("row", row), ("perm", perm),
                        ("crow_t", crow_t), ("col_t", row[perm])):
            self.register_buffer(name, t, persistent=False)

    @classmethod
    def from_scipy(cls, m: sp.spmatrix) -> "EdgePattern":
        m = sp.csr_matrix(m, dtype=np.float32)
        m.sum_duplicates()
        m.sort_indices()
        return cls(torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)), m.shape)

    @classmethod
    def from_knn(cls, cols: torch.Tensor, n_cols: int | None = None) -> "EdgePattern":
        n, k = cols.shape
        crow = torch.arange(0, n * k + 1, k, dtype=torch.long, device=cols.device)
        return cls(crow, cols.reshape(-1), (n, n if n_cols is None else n_cols))

    @property
    def n_edges(self) -> int:
        return self.col.numel()

    def matmul(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """S @ x, S = this pattern with `values` (one per edge, CSR order); gradients to both."""
        return _EdgeMatmul.apply(values.reshape(-1), x, self)

    def dots(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per edge (r, c): a[r] · b[c]; gradients to both."""
        return _EdgeDots.apply(a, b, self)

    def row_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax of edge logits over each row's edges. Logits must be bounded (e.g. cosines): no
        max-shift. Rows without edges have no entries, so nothing divides by zero."""
        ex = logits.exp()
        ones = torch.ones(self.shape[1], 1, dtype=ex.dtype, device=ex.device)
        denom = self.matmul(ex, ones).squeeze(1)
        return ex / denom[self.row]

    def to_scipy(self, values: torch.Tensor) -> sp.csr_matrix:
        return sp.csr_matrix((values.detach().reshape(-1).cpu().numpy(), self.col.cpu().numpy(),
                              self.crow.cpu().numpy()), shape=self.shape)


@torch.no_grad()
def cosine_topk(x: torch.Tensor, k: int, block_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most cosine-similar rows of `x` for every row (the row itself included, as in LATTICE).

    Returns (cols [n, k] int64 ascending per row, cosines [n, k]). Memory is O(block_rows × n).
    All-zero rows have cosine 0 to everything (F.normalize's eps), so they still get k entries.
    """
    n = x.shape[0]
    k = min(int(k), n)
    xn = F.normalize(x.float(), dim=1)
    block = int(block_rows) if block_rows else max(1, BLOCK_ELEMENTS // max(n, 1))
    cols = torch.empty((n, k), dtype=torch.long, device=x.device)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        cols[lo:hi] = (xn[lo:hi] @ xn.T).topk(k, dim=1).indices
    cols = cols.sort(dim=1).values
    return cols, edge_cosine(xn, cols)


def edge_cosine(xn: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Cosine of each stored edge, differentiable w.r.t. `xn` (rows already L2-normalised): [n, k]."""
    return (xn.unsqueeze(1) * xn[cols]).sum(-1)


def sym_normalize_knn(cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """D^-½ S D^-½ with D = row sums of S (LATTICE's normalisation of its non-symmetric kNN graph).

    Rows whose sum is not positive get a zero scale instead of NaN/inf (possible when cosines are
    negative or features are all zero).
    """
    deg = values.sum(dim=1)
    inv_sqrt = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))
    return inv_sqrt.unsqueeze(1) * values * inv_sqrt[cols]
