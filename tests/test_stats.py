"""mmbench.stats against hand-computed values and scipy/statsmodels."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from mmbench import stats
from mmbench.errors import MMBenchError


# --------------------------------------------------------------------------- paired tests
def test_ttest_by_hand_and_scipy():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([0.0, 2.0, 2.0, 2.0])
    r = stats.paired_test(a, b)
    # d = [1, 0, 1, 2]: mean 1, sd sqrt(2/3), se sqrt(2/3)/2, t = 1/se, df 3
    se = math.sqrt(2 / 3) / 2
    assert r.n == 4 and r.diff == pytest.approx(1.0)
    assert r.statistic == pytest.approx(1 / se)
    assert r.p == pytest.approx(2 * sps.t.sf(1 / se, 3))
    half = 3.182446305284263 * se  # t_{0.975, 3}
    assert (r.ci_low, r.ci_high) == pytest.approx((1 - half, 1 + half))
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert r.p == pytest.approx(ref.pvalue) and (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high))
    assert r.mean_a == pytest.approx(2.5) and r.mean_b == pytest.approx(1.5)
    assert r.rel_improvement == pytest.approx(1 / 1.5)


def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.random(60)
    b = a - 0.05 + rng.normal(0, 0.1, 60)
    r = stats.paired_test(a, b, "wilcoxon")
    ref = sps.wilcoxon(a, b)
    assert r.test == "wilcoxon"
    assert r.p == pytest.approx(ref.pvalue) and r.statistic == pytest.approx(ref.statistic)
    assert r.diff == pytest.approx(float(np.mean(a - b)))  # effect size is the mean difference either way


def test_degenerate_pairs():
    same = np.array([0.1, 0.0, 0.3])
    for t in stats.TESTS:
        r = stats.paired_test(same, same, t)
        assert r.p == 1.0 and r.diff == 0.0  # no evidence of a difference, not NaN
    one = stats.paired_test([0.5], [0.2])
    assert math.isnan(one.p) and one.diff == pytest.approx(0.3) and math.isnan(one.ci_low)
    shift = stats.paired_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])  # constant non-zero difference
    assert shift.p == 0.0
    with pytest.raises(MMBenchError):
        stats.paired_test([1.0, 2.0], [1.0, 2.0], "sign")
    with pytest.raises(ValueError):
        stats.paired_test([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- Holm
def test_holm_known_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    p = [0.01, 0.04, 0.03, 0.005]
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def test_holm_ignores_nan_and_caps_at_one():
    out = stats.holm([0.2, float("nan"), 0.5])
    assert math.isnan(out[1])
    assert out[0] == pytest.approx(0.4) and out[2] == pytest.approx(0.5)  # family of 2, not 3
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert len(stats.holm([])) == 0


# --------------------------------------------------------------------------- seeds
def test_seed_summary_and_seed_test():
    mean, std, n = stats.seed_summary([0.1, 0.2, 0.3])
    assert (mean, n) == (pytest.approx(0.2), 3) and std == pytest.approx(0.1)  # ddof = 1
    m1, s1, n1 = stats.seed_summary([0.25, float("nan")])
    assert (m1, n1) == (0.25, 1) and math.isnan(s1)
    r = stats.seed_test({1: 0.30, 2: 0.32, 3: 0.31, 9: 0.9}, {1: 0.20, 2: 0.21, 3: 0.23})
    assert r.n == 3  # seed 9 has no partner
    assert r.p == pytest.approx(sps.ttest_rel([0.30, 0.32, 0.31], [0.20, 0.21, 0.23]).pvalue)


def test_mean_over_seeds_and_align():
    s1 = (np.array([0, 1, 2, 5]), np.array([1.0, 2.0, 3.0, 4.0]))
    s2 = (np.array([5, 2, 1]), np.array([0.0, 1.0, 2.0]))  # other order, user 0 missing
    users, vals = stats.mean_over_seeds([s1, s2])
    assert users.tolist() == [1, 2, 5] and vals == pytest.approx([2.0, 2.0, 2.0])
    common, a, b = stats.align(np.array([3, 1, 2]), np.array([30.0, 10.0, 20.0]),
                               np.array([2, 3, 4]), np.array([2.0, 3.0, 4.0]))
    assert common.tolist() == [2, 3] and a.tolist() == [20.0, 30.0] and b.tolist() == [2.0, 3.0]


# --------------------------------------------------------------------------- buckets
def test_explicit_edges_paper_baby():
    b = stats.make_buckets(np.array([1]), "0,4,6,9,13")
    assert b.labels == ["[0,4]", "(4,6]", "(6,9]", "(9,13]", "(13,∞)"]
    deg = np.array([0, 1, 4, 5, 6, 7, 9, 10, 13, 14, 100])
    assert b.assign(deg).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    b2 = stats.make_buckets(deg, "2,3")
    assert b2.labels == ["[2,3]", "(3,∞)"] and b2.assign(np.array([1, 2, 3, 4])).tolist() == [-1, 0, 0, 1]


def test_quantile_heavy_ties_by_hand():
    # degree: users -> interactions: 1: 600 -> 600, 2: 300 -> 600, 3: 100 -> 300, 10: 20 -> 200, 40: 5 -> 200
    deg = np.repeat([1, 2, 3, 10, 40], [600, 300, 100, 20, 5])
    # cumulative 600, 1200, 1500, 1700, 1900; targets 380, 760, 1140, 1520 -> degrees 1, 1, 2, 3
    assert stats.equal_mass_edges(deg, 5) == (0, 1, 2, 3)
    b = stats.make_buckets(deg, "quantile:5")
    assert b.labels == ["[0,1]", "(1,2]", "(2,3]", "(3,∞)"]  # ties merge two groups: 4 buckets, none empty
    counts = np.bincount(b.assign(deg))
    assert counts.tolist() == [600, 300, 100, 25]


def test_quantile_tiktok_like_and_degenerate():
    rng = np.random.default_rng(1)
    deg = np.concatenate([rng.choice([1, 2, 3], 5000, p=[0.5, 0.3, 0.2]), rng.integers(4, 60, 800)])
    b = stats.make_buckets(deg, "quantile:5")
    idx = b.assign(deg)
    assert idx.min() == 0 and np.all(np.bincount(idx) > 0) and 2 <= len(b) <= 5
    assert list(b.edges) == sorted(set(b.edges))
    assert stats.make_buckets(np.ones(50, int), "quantile:4").edges == (0,)  # one open bucket [0,∞)
    assert stats.make_buckets(np.ones(50, int), "quantile:4").labels == ["[0,∞)"]
    assert stats.make_buckets(np.zeros(0, int), "quantile:3").edges == (0,)
    assert stats.make_buckets(np.zeros(5, int), "quantile:3").assign(np.zeros(5, int)).tolist() == [0] * 5


def test_quantile_equal_mass_without_ties():
    deg = np.arange(1, 201)  # one user per degree, total 20100 interactions
    b = stats.make_buckets(deg, "quantile:4")
    idx = b.assign(deg)
    mass = np.bincount(idx, weights=deg)
    assert len(b) == 4 and np.all(np.abs(mass / deg.sum() - 0.25) < 0.02)


def test_users_mode_on_tiktok_like_degrees():
    # TikTok: most users have 1-3 training items and a few have hundreds; equal-interaction groups
    # then isolate a handful of heavy users, equal-user groups split the 1/2/3 ties instead
    deg = np.concatenate([np.repeat([1, 2, 3], [3500, 3000, 2500]), np.arange(300, 600, 10)])
    assert stats.parse_buckets("users:4") == ("users", 4)
    b = stats.make_buckets(deg, "users:4")  # lower quartiles at positions ~2257, 4515, 6772: 1, 2, 3
    assert b.edges == (0, 1, 2, 3)
    assert np.bincount(b.assign(deg)).tolist() == [3500, 3000, 2500, 30]


@pytest.mark.parametrize("bad", ["quantile:x", "quantile:0", "users:-1", "4", "0,4,4", "5,3", "-1,2", "a,b", ""])
def test_bad_bucket_specs(bad):
    with pytest.raises(MMBenchError):
        stats.parse_buckets(bad)


def test_long_tail_threshold():
    deg = np.array([0, 1, 1, 2, 2, 3, 5, 8, 20, 100])
    t = stats.top_share_threshold(deg, 0.2)  # the 2 most popular items (20, 100) form the head
    assert t == 8 and np.sum(deg <= t) == 8


def test_equal_count_item_groups():
    deg = np.repeat([0, 1, 2, 5, 30], [10, 40, 20, 20, 10])  # 100 items
    # sorted positions 24.75, 49.5, 74.25 -> lower values 1, 1, 5: the tie at 1 merges two groups
    edges = stats.equal_count_edges(deg, 4)
    assert edges == (0, 1, 5)
    assert np.bincount(stats.Buckets(edges).assign(deg)).tolist() == [50, 40, 10]
    assert stats.equal_count_edges(np.zeros(0, int), 4) == (0,)
