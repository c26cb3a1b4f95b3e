"""Per-user top-K metrics from a ranked hit matrix, vectorised over users.

Everything here works on plain numpy arrays so that the evaluator (model scores) and
`evaluate_topk` (external ranked lists) share one definition of every metric.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

METRICS = ("recall", "precision", "ndcg", "ndcg_legacy", "hit")


def metric_keys(ks) -> list[str]:
    """Result keys in a stable order: every metric at every K, e.g. "recall@20"."""
    return [f"{m}@{k}" for k in ks for m in METRICS]


def discounts(n: int) -> np.ndarray:
    """1 / log2(rank + 1) for ranks 1..n (the binary-gain DCG weights)."""
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def idcg_table(n: int) -> np.ndarray:
    """idcg[m] = DCG of m hits at ranks 1..m, for m = 0..n (idcg[0] = 0)."""
    return np.concatenate(([0.0], np.cumsum(discounts(n))))


def csr_keys(m: sp.csr_matrix) -> np.ndarray:
    """Sorted int64 keys row * n_cols + col of a CSR's nonzeros (one searchsorted finds any pair)."""
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    keys = rows * m.shape[1] + m.indices.astype(np.int64)
    return keys if np.all(keys[1:] >= keys[:-1]) else np.sort(keys)


def pair_in(keys: np.ndarray, users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """bool like `items` [n, L]: (users[r], items[r, j]) is a key; entries < 0 never are.

    Vectorised over all users at once, so hit detection needs no per-user loop.
    """
    q = np.asarray(users, dtype=np.int64)[:, None] * n_items + items
    if len(keys) == 0:
        return np.zeros(items.shape, dtype=bool)
    pos = np.searchsorted(keys, q)
    np.minimum(pos, len(keys) - 1, out=pos)
    return (keys[pos] == q) & (items >= 0)


def user_metrics(hits: np.ndarray, n_pos: np.ndarray, ks) -> dict[str, np.ndarray]:
    """All metrics for every K from a bool hit matrix [n, L] in rank order.

    `n_pos` is |P_u| (> 0). Lists shorter than max(ks) (L < max K) count as misses beyond L.
    `ndcg` uses the ideal DCG of min(|P_u|, K) hits; `ndcg_legacy` the MMSSL/LATTICE/NGCF code's
    ideal DCG of min(hits in the top-max(ks) list, K) hits (0 when there is no hit).
    """
    ks = [int(k) for k in ks]
    max_k = max(ks)
    n = hits.shape[0]
    h = np.zeros((n, max_k), dtype=np.float64)
    width = min(hits.shape[1], max_k)
    h[:, :width] = hits[:, :width]
    cum_hits = np.cumsum(h, axis=1)
    cum_dcg = np.cumsum(h * discounts(max_k), axis=1)
    idcg = idcg_table(max_k)
    n_pos = np.asarray(n_pos, dtype=np.int64)
    hits_all = cum_hits[:, -1].astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hk = cum_hits[:, k - 1] if n else np.zeros(0)
        dcg = cum_dcg[:, k - 1] if n else np.zeros(0)
        ideal = idcg[np.minimum(n_pos, k)]
        ideal_legacy = idcg[np.minimum(hits_all, k)]
        out[f"recall@{k}"] = hk / n_pos
        out[f"precision@{k}"] = hk / k
        out[f"ndcg@{k}"] = dcg / ideal
        out[f"ndcg_legacy@{k}"] = np.divide(dcg, ideal_legacy, out=np.zeros(n), where=ideal_legacy > 0)
        out[f"hit@{k}"] = (hk > 0).astype(np.float64)
    return {key: out[key] for key in metric_keys(ks)}


def item_hit_counts(topk: np.ndarray, hits: np.ndarray, ks, n_items: int) -> dict[int, np.ndarray]:
    """{K: int64 [n_items]}: how many users had item i in their top-K and in their split list."""
    return {
        int(k): np.bincount(topk[:, :k][hits[:, :k]], minlength=n_items).astype(np.int64)
        for k in ks
    }


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Average over users; NaN when no user was evaluated."""
    return {k: float(v.mean()) if len(v) else float("nan") for k, v in per_user.items()}
