"""The shared all-rank evaluator: every model is scored by this one code path.

Users are scored in chunks; the user's masked items (train, or train+valid for RecBole's
convention) get -inf; a tie-aware top-K (ties go to the lower item id) gives each user's ranked
list; the metrics are computed once, vectorised, from the [users, max K] hit matrix. The index
work that does not depend on the model (evaluated users, per-chunk mask positions, split keys)
is cached per (dataset fingerprint, split, mask, users), because the trainer calls this every epoch.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import scipy.sparse as sp
import torch

from mmbench.errors import ConfigError, DataError, MMBenchError
from mmbench.eval import metrics as M

EVAL_SPLITS = ("valid", "test")
MASKS = ("train", "train+valid")


class ProtocolError(ConfigError, ValueError):
    """A bad split, mask, K or users argument (a ConfigError for the CLI, a ValueError for callers)."""


@dataclass
class EvalResult:
    """Per-user metrics (aligned with `users`), their means, per-item hit counts, optional top-K."""

    users: np.ndarray
    per_user: dict[str, np.ndarray]
    mean: dict[str, float]
    item_hits: dict[int, np.ndarray]
    item_test_counts: np.ndarray
    topk: np.ndarray | None = None
    split: str = "test"
    mask: str = "train"
    ks: tuple[int, ...] = (10, 20, 50)

    def to_flat(self) -> dict[str, float]:
        """The mean metrics as a flat {"recall@20": ...} dict (what run records store)."""
        return dict(self.mean)


# --------------------------------------------------------------------------- protocol checks
def _protocol(split: str, mask: str, ks) -> tuple[str, str, tuple[int, ...]]:
    if split not in EVAL_SPLITS:
        raise ProtocolError(f"evaluation split must be one of {EVAL_SPLITS}, got {split!r}")
    if mask not in MASKS:
        raise ProtocolError(f"mask must be one of {MASKS}, got {mask!r}")
    try:
        ks_t = tuple(sorted({int(k) for k in ks}))
    except (TypeError, ValueError):
        raise ProtocolError(f"ks must be positive integers, got {ks!r}") from None
    if not ks_t or ks_t[0] < 1:
        raise ProtocolError(f"ks must be positive integers, got {ks!r}")
    # Valid items can only be masked when testing: validating masks the train items only.
    return split, ("train" if split == "valid" else mask), ks_t


# --------------------------------------------------------------------------- cached plan
class _Plan:
    """Model-independent index work for one (dataset, split, mask, users)."""

    def __init__(self, dataset, split: str, mask: str, users):
        self.n_items = int(dataset.n_items)
        target = dataset.split(split)
        n_pos_all = np.diff(target.indptr)
        eval_users = np.flatnonzero(n_pos_all > 0).astype(np.int64)
        if users is not None:
            eval_users = np.intersect1d(eval_users, users)
        self.users = eval_users
        self.n_pos = n_pos_all[eval_users].astype(np.int64)
        self.split_keys = M.csr_keys(target)
        self.item_test_counts = np.bincount(
            target[eval_users].indices, minlength=self.n_items
        ).astype(np.int64)
        m = dataset.train if mask == "train" else dataset.train + dataset.valid
        self.mask_csr = sp.csr_matrix(m)
        self._mask_keys = None
        self._chunks: dict[int, list] = {}
        self._on_device: dict[tuple, list] = {}

    @property
    def mask_keys(self) -> np.ndarray:
        if self._mask_keys is None:
            self._mask_keys = M.csr_keys(self.mask_csr)
        return self._mask_keys

    def chunks(self, chunk_size: int) -> list[tuple[int, int, np.ndarray]]:
        """(start, stop, flat index row * n_items + item of the chunk's masked items)."""
        if chunk_size not in self._chunks:
            out = []
            indptr, indices = self.mask_csr.indptr, self.mask_csr.indices
            for start in range(0, len(self.users), chunk_size):
                u = self.users[start:start + chunk_size]
                lo, hi = indptr[u], indptr[u + 1]
                counts = hi - lo
                rows = np.repeat(np.arange(len(u), dtype=np.int64), counts)
                offs = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
                cols = indices[np.repeat(lo, counts) + offs].astype(np.int64)
                out.append((start, start + len(u), rows * self.n_items + cols))
            self._chunks[chunk_size] = out
        return self._chunks[chunk_size]

    def user_tensors(self, chunk_size: int, device) -> list[torch.Tensor]:
        key = ("users", chunk_size, str(device))
        if key not in self._on_device:
            self._on_device[key] = [
                torch.as_tensor(self.users[a:b]).to(device) for a, b, _ in self.chunks(chunk_size)
            ]
        return self._on_device[key]

    def mask_index(self, chunk_size: int, c: int, device) -> torch.Tensor:
        key = ("mask", chunk_size, str(device))
        if key not in self._on_device:
            self._on_device[key] = [None] * len(self.chunks(chunk_size))
        cached = self._on_device[key]
        if cached[c] is None:
            cached[c] = torch.as_tensor(self.chunks(chunk_size)[c][2]).to(device)
        return cached[c]


_CACHE: OrderedDict[str, OrderedDict] = OrderedDict()  # fingerprint -> {(split, mask, users): plan}
_MAX_DATASETS, _MAX_PLANS = 4, 8


def _plan(dataset, split: str, mask: str, users) -> _Plan:
    """The cached plan for the dataset's CONTENT, keyed by its fingerprint.

    A Dataset is frozen, so a plan can never go stale, and two equal datasets built separately
    share one. An object without a fingerprint (not a mmbench Dataset) gets a fresh, uncached plan.
    """
    if users is not None:
        users = np.unique(np.asarray(users, dtype=np.int64).ravel())
        if len(users) and (users[0] < 0 or users[-1] >= dataset.n_users):
            raise ProtocolError(f"users must lie in [0, {dataset.n_users}); got ids outside it")
        digest = hashlib.blake2b(users.tobytes(), digest_size=16).hexdigest()
    else:
        digest = None
    fingerprint = getattr(dataset, "fingerprint", None)
    if not fingerprint:
        return _Plan(dataset, split, mask, users)
    plans = _CACHE.get(fingerprint)
    if plans is None:
        plans = _CACHE[fingerprint] = OrderedDict()
    _CACHE.move_to_end(fingerprint)
    while len(_CACHE) > _MAX_DATASETS:
        _CACHE.popitem(last=False)
    key = (split, mask, digest)
    if key not in plans:
        plans[key] = _Plan(dataset, split, mask, users)
        while len(plans) > _MAX_PLANS:
            plans.popitem(last=False)
    plans.move_to_end(key)
    return plans[key]


def clear_cache() -> None:
    """Drop every cached plan (tests; memory)."""
    _CACHE.clear()


# --------------------------------------------------------------------------- ranking
def topk_lower_id(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row ordered by (-score, item id): ties always go to the lower item id.

    `torch.topk(k + 1)` does the work; only rows with two equal adjacent values are fixed. When the
    k-th and (k+1)-th values tie, items outside the top-(k+1) may tie too, so those rows take every
    item above the boundary value plus the lowest-id items equal to it. Returns min(k, n) columns.
    """
    n = scores.shape[1]
    if k >= n:
        return torch.sort(scores, dim=1, descending=True, stable=True)
    vals, idx = torch.topk(scores, k + 1, dim=1, sorted=True)
    tie = vals[:, 1:] == vals[:, :-1]
    vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    rows = torch.nonzero(tie.any(dim=1)).squeeze(1)
    if rows.numel() == 0:
        return vals, idx
    brows = torch.nonzero(tie[:, k - 1]).squeeze(1)
    if brows.numel():
        s = scores[brows]
        t = vals[brows, k - 1:k]
        above = s > t
        equal = s == t
        need = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
        take = above | (equal & (torch.cumsum(equal, dim=1, dtype=torch.int32) <= need))
        cols = torch.nonzero(take)[:, 1].view(-1, k)  # row-major: ascending item id per row
        idx[brows] = cols
        vals[brows] = torch.gather(s, 1, cols)
    sub_idx, by_id = torch.sort(idx[rows], dim=1)
    sub_val = torch.gather(vals[rows], 1, by_id)
    sub_val, order = torch.sort(sub_val, dim=1, descending=True, stable=True)
    idx[rows] = torch.gather(sub_idx, 1, order)
    vals[rows] = sub_val
    return vals, idx


def _as_scores(s, n_users: int, n_items: int) -> torch.Tensor:
    if not isinstance(s, torch.Tensor):
        raise MMBenchError(f"scorer must return a torch.Tensor, got {type(s).__name__}")
    if tuple(s.shape) != (n_users, n_items):
        raise MMBenchError(
            f"scorer returned shape {tuple(s.shape)}, expected ({n_users}, {n_items}) = (users, items)"
        )
    if not s.is_floating_point():
        s = s.to(torch.float64)
    elif s.requires_grad or s._is_view() or not s.is_contiguous():
        s = s.detach().clone(memory_format=torch.contiguous_format)  # we mask in place
    return s


def _nonfinite_rows(s: torch.Tensor) -> np.ndarray:
    return (~torch.isfinite(s)).any(dim=1).cpu().numpy()


def evaluate(
    scorer: Callable[[torch.Tensor], torch.Tensor],
    dataset,
    split: str = "test",
    ks=(10, 20, 50),
    mask: str = "train",
    chunk_size: int = 2048,
    users=None,
    keep_topk: bool = False,
    device=None,
) -> EvalResult:
    """All-rank evaluation of `scorer` on `dataset`'s valid or test split.

    `scorer(users)` gets a LongTensor of user ids created on `device` (default CPU) and returns
    float scores [len(users), n_items] on any device; masking and top-K run on that device. The
    returned tensor is masked in place (views and grad-tracking tensors are copied first). Evaluated
    users are those with a non-empty list in `split` (ascending), optionally intersected with `users`.
    `mask="train+valid"` also hides valid items when testing. Non-finite scores are an error.
    Every user is ranked to depth max(max K, 50) (the legacy NDCG's ideal needs the top-50 whatever
    `ks` is); `result.topk` (keep_topk=True) holds the top max K, -1 where a user had fewer unmasked items.
    """
    split, mask, ks = _protocol(split, mask, ks)
    if int(chunk_size) < 1:
        raise ProtocolError(f"chunk_size must be >= 1, got {chunk_size!r}")
    chunk_size = int(chunk_size)
    plan = _plan(dataset, split, mask, users)
    n_items, depth = plan.n_items, M.ranking_depth(ks)
    topk = np.full((len(plan.users), depth), -1, dtype=np.int64)
    bad: list[np.ndarray] = []
    device = torch.device("cpu") if device is None else torch.device(device)
    with torch.no_grad():
        for c, (start, stop, _) in enumerate(plan.chunks(chunk_size)):
            s = _as_scores(scorer(plan.user_tensors(chunk_size, device)[c]), stop - start, n_items)
            lo, hi = torch.aminmax(s)
            if not bool(torch.isfinite(torch.stack((lo, hi))).all()):
                bad.append(plan.users[start:stop][_nonfinite_rows(s)])
            if bad:  # keep scanning only to report how many users are affected
                continue
            s.view(-1).index_fill_(0, plan.mask_index(chunk_size, c, s.device), float("-inf"))
            vals, idx = topk_lower_id(s, depth)
            idx = torch.where(torch.isneginf(vals), torch.full_like(idx, -1), idx)
            topk[start:stop, : idx.shape[1]] = idx.cpu().numpy()
    if bad:
        b = np.concatenate(bad)
        raise MMBenchError(
            f"scorer returned non-finite scores (NaN or inf) for {len(b)} users, e.g. user {int(b[0])}"
        )
    return _finish(plan, topk, split, mask, ks, keep_topk)


def _finish(plan: _Plan, topk: np.ndarray, split, mask, ks, keep_topk) -> EvalResult:
    hits = M.pair_in(plan.split_keys, plan.users, topk, plan.n_items)
    per_user = M.user_metrics(hits, plan.n_pos, ks)
    return EvalResult(
        users=plan.users.copy(),
        per_user=per_user,
        mean=M.mean_metrics(per_user),
        item_hits=M.item_hit_counts(topk, hits, ks, plan.n_items),
        item_test_counts=plan.item_test_counts.copy(),
        topk=np.ascontiguousarray(topk[:, :max(ks)]) if keep_topk else None,
        split=split,
        mask=mask,
        ks=ks,
    )


# --------------------------------------------------------------------------- external lists
def _ranked_arrays(topk_lists, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(users int64 [n], items int64 [n, L], -1 padded) from any accepted input form."""
    if isinstance(topk_lists, Mapping):
        us = np.fromiter((int(u) for u in topk_lists), dtype=np.int64, count=len(topk_lists))
        lists = [np.asarray(v, dtype=np.int64).ravel() for v in topk_lists.values()]
        width = max((len(x) for x in lists), default=0)
        items = np.full((len(lists), width), -1, dtype=np.int64)
        lens = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        if lens.sum():
            items[np.repeat(np.arange(len(lists)), lens), _ranks(lens)] = np.concatenate(lists)
        return us, items
    if isinstance(topk_lists, tuple) and len(topk_lists) == 2:
        us = np.asarray(topk_lists[0], dtype=np.int64).ravel()
        items = np.asarray(topk_lists[1], dtype=np.int64)
    else:
        items = np.asarray(topk_lists, dtype=np.int64)
        if items.ndim != 2 or items.shape[0] != n_users:
            raise ProtocolError("an array of ranked lists needs one row per dataset user")
        us = np.arange(n_users, dtype=np.int64)
    if items.ndim != 2 or items.shape[0] != len(us):
        raise ProtocolError("ranked items must be a 2-D array with one row per listed user")
    return us, items


def _ranks(lens: np.ndarray) -> np.ndarray:
    return np.arange(lens.sum(), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)


def evaluate_topk(
    topk_lists, dataset, split: str = "test", ks=(10, 20, 50), mask: str = "train",
    users=None, keep_topk: bool = False,
) -> EvalResult:
    """The evaluator's metrics for ranked lists produced elsewhere (another library, a file).

    `topk_lists` is {user: [item, ...]} in rank order, a pair (users, items [n, L] padded with -1),
    or an [n_users, L] array. Masked items (the user's train items, or train+valid, as in
    `evaluate`) and repeated items are dropped before truncation to max K, exactly as the evaluator
    never ranks them; shorter lists simply have fewer hits. Lists are read to max(max K, 50) items. Evaluated users without a list score 0.
    """
    split, mask, ks = _protocol(split, mask, ks)
    plan = _plan(dataset, split, mask, users)
    n_items, depth = plan.n_items, M.ranking_depth(ks)
    us, items = _ranked_arrays(topk_lists, dataset.n_users)
    if len(np.unique(us)) != len(us):
        raise DataError("ranked lists name a user more than once")
    if len(us) and (us.min() < 0 or us.max() >= dataset.n_users):
        raise DataError(f"ranked lists name users outside [0, {dataset.n_users})")
    if items.size and (items.min() < -1 or items.max() >= n_items):
        raise DataError(f"ranked lists name items outside [0, {n_items})")
    pos = np.searchsorted(plan.users, us)
    pos_c = np.minimum(pos, max(len(plan.users) - 1, 0))
    keep = (pos < len(plan.users)) & (plan.users[pos_c] == us) if len(plan.users) else pos < 0
    ranked = np.full((len(plan.users), items.shape[1]), -1, dtype=np.int64)
    ranked[pos[keep]] = items[keep]
    valid = (ranked >= 0) & ~M.pair_in(plan.mask_keys, plan.users, ranked, n_items)
    keys = plan.users[:, None] * n_items + ranked
    first = np.zeros(ranked.shape, dtype=bool)
    flat_valid = np.flatnonzero(valid.ravel())
    _, first_at = np.unique(keys.ravel()[flat_valid], return_index=True)
    first.ravel()[flat_valid[first_at]] = True
    ranked = np.where(first, ranked, -1)
    order = np.argsort(ranked < 0, axis=1, kind="stable")
    ranked = np.take_along_axis(ranked, order, axis=1)
    topk = np.full((len(plan.users), depth), -1, dtype=np.int64)
    width = min(depth, ranked.shape[1])
    topk[:, :width] = ranked[:, :width]
    return _finish(plan, topk, split, mask, ks, keep_topk)
