"""The shared evaluator: hand-computed metrics, protocol switches, ties, chunking, external lists."""
from __future__ import annotations

import argparse
import math
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmbench.data.dataset import Dataset, to_csr
from mmbench.errors import ConfigError, DataError, MMBenchError
from mmbench.eval import EvalResult, evaluate, evaluate_topk
from mmbench.eval import metrics as M
from mmbench.eval.evaluator import topk_lower_id
from mmbench.eval.external import add_evaluate_parser, read_recs_file


def make_ds(n_users, n_items, train=(), valid=(), test=(), **kw) -> Dataset:
    def csr(pairs):
        pairs = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
        return to_csr(pairs[:, 0], pairs[:, 1], n_users, n_items)

    return Dataset("toy", n_users, n_items, csr(train), csr(valid), csr(test), **kw)


def matrix_scorer(S):
    S = torch.as_tensor(np.asarray(S))
    return lambda users: S[users.cpu()]


def idcg(n):
    return sum(1 / math.log2(r + 1) for r in range(1, n + 1))


def random_ds(seed, n_users=60, n_items=80, density=0.15):
    rng = np.random.default_rng(seed)
    label = rng.choice(4, size=(n_users, n_items), p=[1 - density, density * 0.6, density * 0.2, density * 0.2])
    pairs = {s: np.argwhere(label == code) for s, code in (("train", 1), ("valid", 2), ("test", 3))}
    return make_ds(n_users, n_items, *(map(tuple, pairs[s]) for s in ("train", "valid", "test")))


def brute_topk(S, masked, k):
    """Reference ranking: lexsort by (-score, id) over the unmasked items."""
    out = np.full((S.shape[0], k), -1, dtype=np.int64)
    for r in range(S.shape[0]):
        cand = np.flatnonzero(~masked[r])
        order = cand[np.lexsort((cand, -S[r, cand]))][:k]
        out[r, : len(order)] = order
    return out


# --------------------------------------------------------------------------- hand-computed metrics
def test_single_hit_at_rank_one_with_ten_test_items():
    n_items = 100
    ds = make_ds(1, n_items, test=[(0, i) for i in range(10)])
    S = np.zeros((1, n_items))
    S[0, 0] = 10.0
    S[0, 10:] = np.linspace(5, 1, 90)  # items 1..9 sit at the bottom (ranks 92..100)
    res = evaluate(matrix_scorer(S), ds)
    assert res.mean["ndcg@20"] == pytest.approx(0.22009, abs=1e-5)
    assert res.mean["ndcg@20"] == pytest.approx(1 / idcg(10))
    assert res.mean["ndcg_legacy@20"] == 1.0
    assert res.mean["recall@20"] == pytest.approx(0.1)
    assert res.mean["precision@20"] == pytest.approx(0.05)
    assert res.mean["hit@20"] == 1.0
    assert res.to_flat() == res.mean and isinstance(res, EvalResult)


def test_several_test_items_standard_vs_legacy():
    n_items = 100
    # user 0: test items 1, 4, 99 ranked 2, 5 and 100 (out of the top 50); user 1: no hit in the top 50
    ds = make_ds(2, n_items, test=[(0, 1), (0, 4), (0, 99), (1, 98)])
    S = np.tile(-np.arange(n_items, dtype=np.float64), (2, 1))
    res = evaluate(matrix_scorer(S), ds, ks=(3, 10, 50))
    u0 = {k: v[0] for k, v in res.per_user.items()}
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    assert u0["ndcg@10"] == pytest.approx(dcg / idcg(3))
    assert u0["ndcg_legacy@10"] == pytest.approx(dcg / idcg(2))
    assert u0["ndcg@3"] == pytest.approx((1 / math.log2(3)) / idcg(3))
    assert u0["ndcg_legacy@3"] == pytest.approx((1 / math.log2(3)) / idcg(2))
    assert u0["recall@3"] == pytest.approx(1 / 3) and u0["recall@10"] == pytest.approx(2 / 3)
    assert u0["precision@3"] == pytest.approx(1 / 3) and u0["precision@10"] == pytest.approx(0.2)
    assert u0["hit@3"] == 1.0
    u1 = {k: v[1] for k, v in res.per_user.items()}
    assert all(v == 0.0 for v in u1.values())
    assert res.mean["recall@10"] == pytest.approx((2 / 3 + 0) / 2)


def test_legacy_ndcg_is_zero_when_hits_are_only_below_k():
    ds = make_ds(1, 60, test=[(0, 30)])
    res = evaluate(matrix_scorer(-np.arange(60.0)[None]), ds, ks=(10, 50))
    assert res.per_user["ndcg_legacy@10"][0] == 0.0 and res.per_user["hit@10"][0] == 0.0
    assert res.per_user["ndcg_legacy@50"][0] == pytest.approx(1 / math.log2(32) / idcg(1))


def test_legacy_ndcg_ideal_comes_from_the_top_50_whatever_eval_ks_holds():
    # the user's hits sit at ranks 3, 30, 40 and 50: with eval_ks=(10, 20) the legacy ideal still counts
    # the four hits of the top-50 (capped at K), not the one hit of the top-20
    n_items = 120
    test_items = [2, 29, 39, 49, 100]
    ds = make_ds(1, n_items, test=[(0, i) for i in test_items])
    S = -np.arange(n_items, dtype=np.float64)[None]
    narrow = evaluate(matrix_scorer(S), ds, ks=(10, 20))
    wide = evaluate(matrix_scorer(S), ds, ks=(10, 20, 50))
    dcg = 1 / math.log2(4)  # rank 3
    for k in (10, 20):
        assert narrow.per_user[f"ndcg_legacy@{k}"][0] == pytest.approx(dcg / idcg(4))
        assert narrow.per_user[f"ndcg_legacy@{k}"][0] == wide.per_user[f"ndcg_legacy@{k}"][0]
        assert narrow.per_user[f"ndcg@{k}"][0] == pytest.approx(dcg / idcg(5))
    # external ranked lists follow the same definition
    lists = {0: list(range(n_items))}
    assert evaluate_topk(lists, ds, ks=(10, 20)).per_user["ndcg_legacy@20"][0] == pytest.approx(dcg / idcg(4))


def test_keys_and_shapes():
    ds = random_ds(0)
    res = evaluate(matrix_scorer(np.random.default_rng(0).random((60, 80))), ds, ks=(20, 5), keep_topk=True)
    assert res.ks == (5, 20) and res.split == "test" and res.mask == "train"
    assert list(res.per_user) == M.metric_keys((5, 20))
    assert res.users.dtype == np.int64 and np.all(np.diff(res.users) > 0)
    assert all(v.dtype == np.float64 and v.shape == res.users.shape for v in res.per_user.values())
    assert all(isinstance(v, float) for v in res.mean.values())
    assert res.topk.shape == (len(res.users), 20) and res.topk.dtype == np.int64
    assert set(res.item_hits) == {5, 20} and res.item_test_counts.dtype == np.int64


# --------------------------------------------------------------------------- protocol switches
def test_mask_conventions():
    # user 0: train item 0, valid item 1, test item 2; scores rank 1 > 0 > 2 > the rest
    ds = make_ds(1, 10, train=[(0, 0)], valid=[(0, 1)], test=[(0, 2)])
    S = np.array([[9.0, 10.0, 8.0] + [0.0] * 7])
    r_train = evaluate(matrix_scorer(S), ds, ks=(1, 2), mask="train", keep_topk=True)
    assert r_train.topk[0].tolist() == [1, 2]  # valid item stays in the ranking (MMSSL/MMRec)
    assert r_train.mean["hit@1"] == 0.0 and r_train.mean["hit@2"] == 1.0
    r_tv = evaluate(matrix_scorer(S), ds, ks=(1, 2), mask="train+valid", keep_topk=True)
    assert r_tv.topk[0].tolist() == [2, 3] and r_tv.mean["hit@1"] == 1.0 and r_tv.mask == "train+valid"
    r_valid = evaluate(matrix_scorer(S), ds, split="valid", ks=(1,), mask="train+valid")
    assert r_valid.mask == "train" and r_valid.mean["hit@1"] == 1.0


@pytest.mark.parametrize("kw", [{"split": "train"}, {"split": "dev"}, {"mask": "none"}, {"ks": ()},
                                {"ks": (0, 5)}, {"ks": ("a",)}, {"chunk_size": 0}, {"users": [99]}])
def test_bad_protocol_arguments(kw):
    ds = make_ds(2, 5, test=[(0, 1)])
    with pytest.raises(ConfigError) as err:
        evaluate(matrix_scorer(np.zeros((2, 5))), ds, **kw)
    assert isinstance(err.value, ValueError)


def test_users_without_split_items_are_skipped_and_users_restricts():
    ds = make_ds(5, 6, train=[(1, 0)], test=[(0, 1), (2, 2), (4, 3), (4, 4)])
    S = np.tile(-np.arange(6.0), (5, 1))
    res = evaluate(matrix_scorer(S), ds)
    assert res.users.tolist() == [0, 2, 4]
    assert evaluate(matrix_scorer(S), ds, users=[4, 1, 0, 4]).users.tolist() == [0, 4]
    assert evaluate(matrix_scorer(S), ds, split="valid").users.tolist() == []


def test_short_candidate_lists_never_count_masked_items():
    ds = make_ds(1, 5, train=[(0, 0), (0, 1), (0, 2)], test=[(0, 4)])
    res = evaluate(matrix_scorer([[5.0, 4, 3, 2, 1]]), ds, ks=(1, 10), keep_topk=True)
    assert res.topk[0].tolist() == [3, 4] + [-1] * 8
    assert res.per_user["precision@10"][0] == pytest.approx(0.1)
    assert res.per_user["hit@1"][0] == 0.0 and res.per_user["recall@10"][0] == 1.0


# --------------------------------------------------------------------------- ties and determinism
def test_constant_scores_rank_lowest_ids_first():
    ds = make_ds(3, 30, train=[(0, 0), (0, 3), (1, 29)], test=[(0, 5), (1, 6), (2, 7)])
    res = evaluate(lambda u: torch.zeros(len(u), 30), ds, ks=(5,), keep_topk=True)
    assert res.topk.tolist() == [[1, 2, 4, 5, 6], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("seed", range(4))
def test_ties_match_brute_force_lexsort(seed):
    ds = random_ds(seed)
    rng = np.random.default_rng(seed)
    S = rng.integers(0, 3 + seed, size=(60, 80)).astype(np.float32)
    res = evaluate(matrix_scorer(S), ds, ks=(3, 10), keep_topk=True)
    masked = ds.train.toarray()[res.users] > 0
    np.testing.assert_array_equal(res.topk, brute_topk(S[res.users], masked, 10))


@pytest.mark.parametrize("k", [1, 4, 9, 15, 30])
def test_topk_lower_id_matches_brute_force(k):
    rng = np.random.default_rng(k)
    S = rng.integers(0, 4, size=(50, 20)).astype(np.float64)
    S[::7] = 1.0  # some fully constant rows
    vals, idx = topk_lower_id(torch.as_tensor(S), k)
    ref = brute_topk(S, np.zeros(S.shape, dtype=bool), min(k, 20))
    np.testing.assert_array_equal(idx.numpy(), ref)
    np.testing.assert_array_equal(vals.numpy(), np.take_along_axis(S, ref, 1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_are_an_error(bad):
    ds = make_ds(6, 8, test=[(u, 1) for u in range(6)])
    S = np.random.default_rng(0).random((6, 8))
    S[3, 2] = bad
    S[5, 0] = bad
    with pytest.raises(MMBenchError, match="non-finite scores .* for 2 users, e.g. user 3"):
        evaluate(matrix_scorer(S), ds, chunk_size=2)


def test_wrong_score_shape_is_an_error():
    ds = make_ds(2, 5, test=[(0, 1)])
    with pytest.raises(MMBenchError, match="shape"):
        evaluate(lambda u: torch.zeros(len(u), 4), ds)


def test_chunking_invariance_and_scorer_tensor_untouched():
    ds = random_ds(7, n_users=50, n_items=40)
    S = torch.as_tensor(np.random.default_rng(7).integers(0, 5, size=(50, 40)).astype(np.float32))
    before = S.clone()
    runs = [evaluate(lambda u: S[u[0]:u[-1] + 1] if len(u) == u[-1] - u[0] + 1 else S[u], ds,
                     ks=(5, 10), chunk_size=c, keep_topk=True, device="cpu") for c in (1, 7, 2048)]
    assert torch.equal(S, before)  # slices (views) of the scorer's tensor are copied before masking
    for r in runs[1:]:
        np.testing.assert_array_equal(r.topk, runs[0].topk)
        for k in r.per_user:
            np.testing.assert_array_equal(r.per_user[k], runs[0].per_user[k])
        for k in r.item_hits:
            np.testing.assert_array_equal(r.item_hits[k], runs[0].item_hits[k])


def test_integer_scores_are_accepted():
    ds = make_ds(2, 4, test=[(0, 3), (1, 0)])
    res = evaluate(lambda u: torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])[u], ds, ks=(1,))
    assert res.mean["hit@1"] == 1.0


# --------------------------------------------------------------------------- per-item counts
def test_item_hits_and_test_counts():
    ds = make_ds(3, 6, train=[(0, 0)], test=[(0, 1), (0, 2), (1, 1), (2, 5)])
    S = np.tile(-np.arange(6.0), (3, 1))  # ranking 0,1,2,... (user 0 without item 0)
    res = evaluate(matrix_scorer(S), ds, ks=(1, 2))
    assert res.item_test_counts.tolist() == [0, 2, 1, 0, 0, 1]
    assert res.item_hits[1].tolist() == [0, 1, 0, 0, 0, 0]  # user 0's top-1 = item 1
    assert res.item_hits[2].tolist() == [0, 2, 1, 0, 0, 0]
    sub = evaluate(matrix_scorer(S), ds, ks=(2,), users=[1, 2])
    assert sub.item_test_counts.tolist() == [0, 1, 0, 0, 0, 1]


def test_item_hits_sum_to_user_hits():
    ds = random_ds(3)
    res = evaluate(matrix_scorer(np.random.default_rng(3).random((60, 80))), ds, ks=(5, 20))
    n_pos = np.diff(ds.test.indptr)[res.users]
    for k in (5, 20):
        assert res.item_hits[k].sum() == round((res.per_user[f"recall@{k}"] * n_pos).sum())
    assert res.item_test_counts.sum() == ds.test.nnz


# --------------------------------------------------------------------------- external rankings
def test_evaluate_topk_equals_evaluate():
    ds = random_ds(11)
    S = np.random.default_rng(11).integers(0, 6, size=(60, 80)).astype(np.float32)
    res = evaluate(matrix_scorer(S), ds, ks=(5, 20), mask="train+valid", keep_topk=True)
    # lists as deep as the evaluator ranks (the legacy NDCG's ideal reads the top 50)
    deep = evaluate(matrix_scorer(S), ds, ks=(5, 20, 50), mask="train+valid", keep_topk=True)
    lists = {int(u): [int(i) for i in row if i >= 0] for u, row in zip(deep.users, deep.topk)}
    # a train item, a valid item and a repeated item are dropped, like the evaluator never ranks them
    u0 = int(res.users[0])
    masked = list(ds.train[u0].indices[:1]) + list(ds.valid[u0].indices[:1])
    lists[u0] = masked + lists[u0][:3] + lists[u0][:1] + lists[u0][3:]
    for u in np.flatnonzero(np.diff(ds.test.indptr) == 0):  # users without test items are ignored
        lists[int(u)] = [0, 1, 2]
    for given in (lists, (deep.users, deep.topk)):
        ext = evaluate_topk(given, ds, ks=(5, 20), mask="train+valid", keep_topk=True)
        np.testing.assert_array_equal(ext.users, res.users)
        np.testing.assert_array_equal(ext.topk, res.topk)
        for k in res.per_user:
            np.testing.assert_allclose(ext.per_user[k], res.per_user[k], rtol=0, atol=1e-15)
        for k in res.item_hits:
            np.testing.assert_array_equal(ext.item_hits[k], res.item_hits[k])


def test_evaluate_topk_absent_users_and_bad_ids():
    ds = make_ds(3, 5, test=[(0, 1), (2, 3)])
    res = evaluate_topk({0: [1, 2]}, ds, ks=(1,))
    assert res.per_user["hit@1"].tolist() == [1.0, 0.0]
    with pytest.raises(DataError):
        evaluate_topk({0: [7]}, ds)
    with pytest.raises(DataError):
        evaluate_topk({5: [1]}, ds)


# --------------------------------------------------------------------------- recs file + CLI
def test_read_recs_file_dense_ids(tmp_path):
    ds = make_ds(3, 5, test=[(0, 1), (2, 3)])
    f = tmp_path / "recs.tsv"
    f.write_text("# user\titems\n0\t1,2\n\n2\t4, 3\n1\t\n")
    assert read_recs_file(f, ds) == {0: [1, 2], 2: [4, 3], 1: []}


def test_read_recs_file_original_tokens(tmp_path):
    ds = make_ds(2, 3, test=[(0, 1)], user_tokens=np.array([10, 20]), item_tokens=np.array([7, 8, 9]))
    f = tmp_path / "recs.tsv"
    f.write_text("20\t9,7\n10\t8\n")
    assert read_recs_file(f, ds) == {1: [2, 0], 0: [1]}


@pytest.mark.parametrize("body, line, what", [
    ("0\t1\n1 2\n", 2, "expected"),
    ("0\t1\nx\t2\n", 2, "not an integer"),
    ("0\t1\n9\t2\n", 2, "unknown user"),
    ("0\t1,5\n", 1, "unknown item"),
    ("0\t1,a\n", 1, "not an integer"),
    ("0\t1\n\n0\t2\n", 3, "already listed on line 1"),
    ("0\t1,1\n", 1, "more than once"),
])
def test_read_recs_file_errors(tmp_path, body, line, what):
    ds = make_ds(3, 5, test=[(0, 1)])
    f = tmp_path / "recs.tsv"
    f.write_text(body)
    with pytest.raises(DataError, match=f"recs.tsv:{line}: .*{what}"):
        read_recs_file(f, ds)
    with pytest.raises(DataError, match="cannot read"):
        read_recs_file(tmp_path / "missing.tsv", ds)


def test_evaluate_subcommand(tmp_path, monkeypatch, capsys):
    ds = make_ds(3, 5, train=[(0, 0)], test=[(0, 1), (2, 3)])
    calls = []
    stub = types.ModuleType("mmbench.data.registry")
    stub.load_dataset = lambda name, data_dir=None: calls.append((name, data_dir)) or ds
    monkeypatch.setitem(sys.modules, "mmbench.data.registry", stub)
    f = tmp_path / "recs.tsv"
    f.write_text("0\t0,1,2\n2\t4\n")
    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--dataset", "toy", "--recs", str(f), "--ks", "1,2",
                              "--data-dir", "/d"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert calls == [("toy", "/d")] and "with recommendations: 2" in out
    recall = next(line for line in out.splitlines() if line.startswith("recall"))
    assert recall.split()[1:] == ["0.5000", "0.5000"]  # user 0: item 0 masked, item 1 hits at rank 1
    args = parser.parse_args(["evaluate", "--dataset", "toy", "--recs", str(f), "--ks", "0"])
    with pytest.raises(ConfigError):
        args.func(args)


# --------------------------------------------------------------------------- RecBole agreement
@pytest.fixture
def recbole_metrics(monkeypatch):
    """RecBole 1.2.1's metric classes under numpy 2 (aliases set for this test only)."""
    for name, value in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_),
                        ("float", np.float64)):
        if name not in np.__dict__:
            monkeypatch.setattr(np, name, value, raising=False)
    if not hasattr(sp.dok_matrix, "_update"):
        monkeypatch.setattr(sp.dok_matrix, "_update", lambda self, d: self._dict.update(d), raising=False)
    return pytest.importorskip("recbole.evaluator.metrics")


def test_agrees_with_recbole_formulas(recbole_metrics):
    rng = np.random.default_rng(5)
    n, L = 300, 50
    pos_index = rng.random((n, L)) < rng.uniform(0.0, 0.3, size=(n, 1))
    pos_len = pos_index.sum(1) + rng.integers(0, 12, size=n)
    pos_len[pos_len == 0] = 1
    ks = list(range(1, L + 1))
    ours = M.user_metrics(pos_index, pos_len, ks)
    cfg = {"topk": ks, "metric_decimal_place": 6}
    theirs = {
        "recall": recbole_metrics.Recall(cfg).metric_info(pos_index, pos_len),
        "ndcg": recbole_metrics.NDCG(cfg).metric_info(pos_index, pos_len),
        "precision": recbole_metrics.Precision(cfg).metric_info(pos_index),
        "hit": recbole_metrics.Hit(cfg).metric_info(pos_index),
    }
    for name, table in theirs.items():
        mine = np.stack([ours[f"{name}@{k}"] for k in ks], axis=1)
        np.testing.assert_allclose(mine, table, rtol=1e-12, atol=1e-12, err_msg=name)


def test_plan_cache_is_keyed_by_the_fingerprint():
    import dataclasses

    from mmbench.eval import evaluator as ev

    ev.clear_cache()
    a = make_ds(2, 4, train=[(1, 2)], test=[(0, 1)])
    b = make_ds(2, 4, train=[(1, 2)], test=[(0, 1)])  # equal, built separately
    assert a is not b and a.fingerprint == b.fingerprint
    scorer = matrix_scorer(np.tile(-np.arange(4.0), (2, 1)))
    assert evaluate(scorer, a, ks=(1,)).mean["hit@1"] == 0.0
    plan = ev._plan(a, "test", "train", None)
    assert evaluate(scorer, b, ks=(1,)).mean["hit@1"] == 0.0
    assert ev._plan(b, "test", "train", None) is plan and list(ev._CACHE) == [a.fingerprint]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.test = to_csr([0, 1], [0, 0], 2, 4)  # a split cannot change under a cached plan
    c = a.replace(test=to_csr([0, 1], [0, 0], 2, 4))  # other content: its own plan
    res = evaluate(scorer, c, ks=(1,))
    assert res.users.tolist() == [0, 1] and res.mean["hit@1"] == 1.0
    assert ev._plan(c, "test", "train", None) is not plan and len(ev._CACHE) == 2
    for n_items in range(5, 5 + ev._MAX_DATASETS):  # least recently used datasets are dropped
        evaluate(matrix_scorer(np.zeros((2, n_items))), make_ds(2, n_items, test=[(0, 1)]), ks=(1,))
    assert len(ev._CACHE) == ev._MAX_DATASETS and a.fingerprint not in ev._CACHE


def test_duck_typed_datasets_are_evaluated_uncached():
    from mmbench.eval import evaluator as ev

    ev.clear_cache()
    ds = make_ds(2, 4, test=[(0, 1)])
    duck = types.SimpleNamespace(n_users=2, n_items=4, train=ds.train, valid=ds.valid, test=ds.test,
                                 split=ds.split)
    res = evaluate(matrix_scorer(np.tile(-np.arange(4.0), (2, 1))), duck, ks=(2,))
    assert res.mean["hit@2"] == 1.0 and not ev._CACHE
