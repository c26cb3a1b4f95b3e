"""Sparse graph utilities shared by graph models: no dense users×items or items×items matrices."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


class _SparseMatmul(torch.autograd.Function):
    """mat @ x whose backward is mat_t @ grad with a transpose built once: torch's own CSR backward
    re-sorts the transpose on every call, which costs as much as the product itself."""

    @staticmethod
    def forward(ctx, mat, mat_t, x):
        ctx.save_for_backward(mat_t)
        return mat @ x

    @staticmethod
    def backward(ctx, grad):
        (mat_t,) = ctx.saved_tensors
        return None, None, (mat_t @ grad if ctx.needs_input_grad[2] else None)


def spmm(mat: torch.Tensor, x: torch.Tensor, mat_t: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse CSR `mat` times dense `x`, differentiable in `x`. `mat_t` is mat's transpose in CSR;
    None means `mat` is symmetric (the normalised bipartite adjacency), so it is its own transpose."""
    return _SparseMatmul.apply(mat, mat if mat_t is None else mat_t, x)


@dataclass
class Graph:
    """A non-symmetric sparse operator with its transpose, both torch CSR, so that a product and its
    backward are one sparse×dense each."""

    mat: torch.Tensor
    mat_t: torch.Tensor

    @classmethod
    def from_scipy(cls, m: sp.spmatrix, device: torch.device) -> "Graph":
        m = sp.csr_matrix(m, dtype=np.float32)
        return cls(sparse_to_torch(m).to(device), sparse_to_torch(m.T.tocsr()).to(device))

    def to(self, device: torch.device) -> "Graph":
        return Graph(self.mat.to(device), self.mat_t.to(device))

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return spmm(self.mat, x, self.mat_t)

    def row_degree(self, rows: torch.Tensor) -> torch.Tensor:
        crow = self.mat.crow_indices()
        return crow[rows + 1] - crow[rows]


def sym_normalize(a: sp.spmatrix) -> sp.csr_matrix:
    """D^-½ A D^-½ for a square symmetric matrix; zero-degree rows stay zero (no NaN)."""
    a = sp.csr_matrix(a, dtype=np.float64)
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(deg)
    nz = deg > 0
    inv_sqrt[nz] = deg[nz] ** -0.5
    d = sp.diags(inv_sqrt)
    return sp.csr_matrix(d @ a @ d, dtype=np.float32)


def bipartite_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """The (U+I)×(U+I) symmetric user–item adjacency [[0, R], [Rᵀ, 0]]."""
    r = sp.csr_matrix(train, dtype=np.float32)
    return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)


def normalized_bipartite_adjacency(train: sp.csr_matrix) -> torch.Tensor:
    """Â = D^-½ A D^-½ of the user–item graph as a torch sparse CSR tensor.

    Zero-degree nodes (users or items without training interactions) get a zero row instead of a
    division by zero, so their propagated embedding is 0 after the first layer, never NaN.
    """
    return sparse_to_torch(sym_normalize(bipartite_adjacency(train)))


def sparse_to_torch(m: sp.spmatrix) -> torch.Tensor:
    """scipy sparse → torch sparse CSR (float32); products with it support autograd on the dense side."""
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data),
            size=m.shape,
            check_invariants=False,
        )
