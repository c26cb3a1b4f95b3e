"""Per-user top-K metrics from a ranked hit matrix, vectorised over users.

Everything here works on plain numpy arrays so that the evaluator (model scores) and
`evaluate_topk` (external ranked lists) share one definition of every metric.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

RECALL, PRECISION, NDCG, NDCG_LEGACY, HIT = "recall", "precision", "ndcg", "ndcg_legacy", "hit"
METRICS = (RECALL, PRECISION, NDCG, NDCG_LEGACY, HIT)
# The MMSSL/LATTICE/NGCF code builds `ndcg_legacy`'s ideal DCG from the hits in the top-50 list,
# whatever K is reported: every ranking is computed at least this deep.
LEGACY_IDEAL_DEPTH = 50


def metric_key(metric: str, k: int) -> str:
    """The result key of `metric` at cut-off `k`, e.g. metric_key(RECALL, 20) == "recall@20"."""
    return f"{metric}@{int(k)}"


def parse_metric_key(key: str) -> tuple[str, int]:
    """("recall", 20) from "recall@20"; ValueError for anything that is not <metric>@<K>."""
    name, sep, k = str(key).partition("@")
    if name not in METRICS or not sep or not k.isdigit() or int(k) < 1:
        raise ValueError(f"not a metric key: {key!r} (expected <{'|'.join(METRICS)}>@K)")
    return name, int(k)


def ranking_depth(ks) -> int:
    """How many ranked items every user needs: max K, and at least the legacy ideal's depth."""
    return max(max(int(k) for k in ks), LEGACY_IDEAL_DEPTH)


# Headline metrics of the reports and the CI gate (K = 20, the paper's cut-off).
RECALL_20, PRECISION_20, NDCG_20, NDCG_LEGACY_20 = (metric_key(m, 20) for m in (RECALL, PRECISION, NDCG, NDCG_LEGACY))


def metric_keys(ks) -> list[str]:
    """Result keys in a stable order: every metric at every K, e.g. "recall@20"."""
    return [metric_key(m, k) for k in ks for m in METRICS]


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

    `n_pos` is |P_u| (> 0). Lists shorter than `ranking_depth(ks)` count as misses beyond their end.
    `ndcg` uses the ideal DCG of min(|P_u|, K) hits; `ndcg_legacy` the MMSSL/LATTICE/NGCF code's
    ideal DCG of min(hits in the top-50 list, K) hits (0 when there is no hit), whatever `ks` holds.
    """
    ks = [int(k) for k in ks]
    depth = ranking_depth(ks)
    n = hits.shape[0]
    h = np.zeros((n, depth), dtype=np.float64)
    width = min(hits.shape[1], depth)
    h[:, :width] = hits[:, :width]
    cum_hits = np.cumsum(h, axis=1)
    cum_dcg = np.cumsum(h * discounts(depth), axis=1)
    idcg = idcg_table(depth)
    n_pos = np.asarray(n_pos, dtype=np.int64)
    hits_legacy = cum_hits[:, LEGACY_IDEAL_DEPTH - 1].astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hk = cum_hits[:, k - 1] if n else np.zeros(0)
        dcg = cum_dcg[:, k - 1] if n else np.zeros(0)
        ideal = idcg[np.minimum(n_pos, k)]
        ideal_legacy = idcg[np.minimum(hits_legacy, k)]
        out[metric_key(RECALL, k)] = hk / n_pos
        out[metric_key(PRECISION, k)] = hk / k
        out[metric_key(NDCG, k)] = dcg / ideal
        out[metric_key(NDCG_LEGACY, k)] = np.divide(dcg, ideal_legacy, out=np.zeros(n), where=ideal_legacy > 0)
        out[metric_key(HIT, k)] = (hk > 0).astype(np.float64)
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
