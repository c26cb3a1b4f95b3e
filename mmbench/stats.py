"""Statistics for the reports: paired per-user tests with effect sizes, Holm–Bonferroni, seed
summaries, and user/item sparsity buckets by TRAINING degree.

Why per-user and paired: every model is evaluated on the same test users of the same split, so the
honest comparison is the per-user difference, not two unrelated means. With several seeds, each
user's metric is first averaged over the seeds (one number per user and model), so the test
compares models rather than seeds; the spread across seeds is reported separately (mean ± std, and
a separately labelled paired t-test over the per-seed means).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from mmbench.errors import ConfigError

TESTS = ("ttest", "wilcoxon")
TEST_NAMES = {"ttest": "two-sided paired t-test", "wilcoxon": "two-sided Wilcoxon signed-rank test"}


class BucketSpecError(ConfigError, ValueError):
    """A malformed `--buckets` value (a ConfigError for the CLI, a ValueError for callers)."""


# --------------------------------------------------------------------------- paired tests
@dataclass(frozen=True)
class PairedResult:
    """One paired comparison a − b: effect size (mean difference, 95% CI) and a two-sided p-value."""

    test: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    statistic: float
    p: float

    @property
    def rel_improvement(self) -> float:
        """(mean_a − mean_b) / mean_b; NaN when mean_b is 0."""
        return self.diff / self.mean_b if self.mean_b else float("nan")


def mean_ci(d: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `d` and its t-based confidence interval (NaN bounds when n < 2)."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(d.mean())
    if n < 2:
        return m, float("nan"), float("nan")
    half = float(sps.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return m, m - half, m + half


def paired_test(a: Sequence[float], b: Sequence[float], test: str = "ttest") -> PairedResult:
    """Paired two-sided test of a against b (aligned arrays, e.g. per-user NDCG@20 of two models).

    Identical samples (every difference 0) get p = 1: there is no evidence of a difference, where
    scipy would return NaN (t-test) or refuse (Wilcoxon). A constant non-zero difference has zero
    variance, so the t-test gives p = 0. Fewer than 2 pairs give p = NaN.
    """
    if test not in TESTS:
        raise ConfigError(f"unknown test {test!r}; choose from {', '.join(TESTS)}")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be aligned 1-d arrays, got {a.shape} and {b.shape}")
    n = len(a)
    d = a - b
    diff, lo, hi = mean_ci(d)
    mean_a = float(a.mean()) if n else float("nan")
    mean_b = float(b.mean()) if n else float("nan")
    if n < 2:
        stat, p = float("nan"), float("nan")
    elif not np.any(d):
        stat, p = 0.0, 1.0
    elif test == "ttest" and np.all(d == d[0]):  # constant non-zero difference: zero variance
        stat, p = math.copysign(math.inf, d[0]), 0.0
    elif test == "ttest":
        r = sps.ttest_rel(a, b)
        stat, p = float(r.statistic), float(r.pvalue)
    else:
        r = sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        stat, p = float(r.statistic), float(r.pvalue)
    return PairedResult(test, n, mean_a, mean_b, diff, lo, hi, stat, p)


def align(users_a: np.ndarray, values_a: np.ndarray, users_b: np.ndarray,
          values_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The users both runs evaluated, with each run's values in that common order."""
    users_a, users_b = np.asarray(users_a), np.asarray(users_b)
    common, ia, ib = np.intersect1d(users_a, users_b, assume_unique=True, return_indices=True)
    return common, np.asarray(values_a)[ia], np.asarray(values_b)[ib]


def mean_over_seeds(per_seed: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user mean over seeds: [(users, values), ...] -> (common users, mean values).

    The split never depends on the seed, so the user sets normally coincide; if they do not, only
    the users every seed evaluated are kept.
    """
    if not per_seed:
        return np.zeros(0, np.int64), np.zeros(0)
    users = per_seed[0][0]
    for u, _ in per_seed[1:]:
        users = np.intersect1d(users, u, assume_unique=True)
    stacked = []
    for u, v in per_seed:
        _, idx, _ = np.intersect1d(u, users, assume_unique=True, return_indices=True)
        stacked.append(np.asarray(v, dtype=np.float64)[idx])
    return users, np.mean(stacked, axis=0)


def seed_summary(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n) over seeds; std is NaN with a single seed."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def seed_test(a: Mapping[int, float], b: Mapping[int, float]) -> PairedResult:
    """Paired t-test over the seeds both models ran (per-seed mean metrics, matched by seed).

    Always a t-test: with 2–5 seeds a rank test cannot reach small p-values at all.
    """
    seeds = sorted(set(a) & set(b))
    return paired_test([a[s] for s in seeds], [b[s] for s in seeds], "ttest")


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values over the finite entries (the family); NaN stays NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


# --------------------------------------------------------------------------- sparsity buckets
@dataclass(frozen=True)
class Buckets:
    """Degree intervals [e0,e1], (e1,e2], …, (e_{m-1},e_m], (e_m, ∞) from edges e0 < … < e_m.

    A single edge (e0,) is one bucket [e0, ∞).
    """

    edges: tuple[int, ...]

    @property
    def labels(self) -> list[str]:
        e = self.edges
        if len(e) == 1:
            return [f"[{e[0]},∞)"]
        out = [f"[{e[0]},{e[1]}]"]
        out += [f"({lo},{hi}]" for lo, hi in zip(e[1:-1], e[2:])]
        out.append(f"({e[-1]},∞)")
        return out

    def __len__(self) -> int:
        return len(self.edges)

    def assign(self, degrees: np.ndarray) -> np.ndarray:
        """Bucket index per degree; -1 for degrees below the first edge."""
        d = np.asarray(degrees)
        e = np.asarray(self.edges)
        # side="left": a degree equal to an edge belongs to the interval that edge closes
        idx = np.searchsorted(e[1:], d, side="left") if len(e) > 1 else np.zeros(len(d), np.int64)
        idx = idx.astype(np.int64)
        idx[d < e[0]] = -1
        return idx


def parse_buckets(spec: str) -> tuple[str, object]:
    """`quantile:N` -> ("quantile", N) (equal total interactions, NGCF); `users:N` -> ("users", N)
    (equal numbers of users); `0,4,6,9,13` -> ("edges", (0, 4, 6, 9, 13))."""
    text = str(spec).strip()
    for kind in ("quantile", "users"):
        if text.startswith(kind + ":"):
            try:
                n = int(text.split(":", 1)[1])
            except ValueError:
                raise BucketSpecError(f"--buckets {spec!r}: expected {kind}:N with an integer N") from None
            if n < 1:
                raise BucketSpecError(f"--buckets {spec!r}: N must be at least 1")
            return kind, n
    try:
        edges = tuple(int(x) for x in text.split(",") if x.strip() != "")
    except ValueError:
        raise BucketSpecError(f"--buckets {spec!r}: expected quantile:N, users:N or comma-separated "
                              "integer edges such as 0,4,6,9,13") from None
    if len(edges) < 2:
        raise BucketSpecError(f"--buckets {spec!r}: give at least two edges (e.g. 0,4,6,9,13)")
    if edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise BucketSpecError(f"--buckets {spec!r}: edges must be non-negative and strictly increasing")
    return "edges", edges


def equal_mass_edges(degrees: np.ndarray, n: int) -> tuple[int, ...]:
    """NGCF-style edges: n groups of about equal TOTAL interactions, last group open-ended.

    Users with the same degree always share a group, so heavy ties (TikTok: most users have 1–3
    training items) may merge groups: the result then has fewer than n buckets, never an empty one.
    Each inner edge is the degree whose cumulative interaction count is nearest to k/n of the total.
    """
    d = np.asarray(degrees, dtype=np.int64)
    d = d[d >= 0]
    if len(d) == 0 or n <= 1:
        return (0,)
    vals, counts = np.unique(d, return_counts=True)
    cum = np.cumsum(vals * counts)
    total = cum[-1]
    if total == 0:
        return (0,)
    inner = set()
    for k in range(1, n):
        target = total * k / n
        e = int(vals[int(np.argmin(np.abs(cum - target)))])
        if 0 < e < vals[-1]:  # an edge at the maximum degree would leave the open bucket empty
            inner.add(e)
    return (0, *sorted(inner)) if inner else (0,)


def equal_count_edges(degrees: np.ndarray, n: int) -> tuple[int, ...]:
    """Edges splitting items (or users) into n groups of about equal COUNT by degree (quantiles).

    For item-sparsity views, where equal-interaction groups would put most items in one group.
    Equal degrees share a group, so ties may give fewer than n groups; the last is open-ended.
    """
    d = np.asarray(degrees, dtype=np.int64)
    d = d[d >= 0]
    if len(d) == 0 or n <= 1:
        return (0,)
    qs = np.quantile(d, [k / n for k in range(1, n)], method="lower")
    inner = sorted({int(q) for q in qs if 0 < q < d.max()})
    return (0, *inner)


def make_buckets(degrees: np.ndarray, spec: str | tuple = "quantile:5") -> Buckets:
    """Buckets from a `--buckets` spec; quantile/users edges are computed from `degrees`."""
    kind, val = parse_buckets(spec) if isinstance(spec, str) else ("edges", tuple(spec))
    if kind == "quantile":
        return Buckets(equal_mass_edges(degrees, int(val)))
    if kind == "users":
        return Buckets(equal_count_edges(degrees, int(val)))
    return Buckets(tuple(int(x) for x in val))


def top_share_threshold(degrees: np.ndarray, head_fraction: float = 0.2) -> int:
    """Degree above which an item belongs to the head (the `head_fraction` most popular items).

    Items with degree <= the returned value form the long tail.
    """
    d = np.sort(np.asarray(degrees, dtype=np.int64))
    if len(d) == 0:
        return 0
    cut = int(math.floor(len(d) * (1 - head_fraction)))
    cut = min(max(cut, 1), len(d)) - 1
    return int(d[cut])
