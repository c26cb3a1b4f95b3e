"""FREEDOM and the two floors (mostpop, itemknn): FREEDOM's frozen item–item graph and its pruned
user–item graph equal dense brute-force references on small inputs, the edge sampling follows
1/√(d_u d_i), the epoch's graph is deterministic under the seed and the same after a resume, and the
loss is the paper's; the floors' scores equal dense references, ties go to the lower item id, and
every default is the cited one. Generic checks (learning, identical reruns, kill -9) are in
tests/test_models_wave2.py."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmbench.data.synthetic import make_synthetic
from mmbench.errors import ConfigError
from mmbench.eval.evaluator import topk_lower_id
from mmbench.models.base import Batch
from mmbench.models.floors import item_knn_graph, positive_topk
from mmbench.models.freedom import FREEDOM, modality_weights
from mmbench.runner import model_config, train_one
from model_helpers import CPU, build, cfg, interrupted_then_resumed, loss_and_scores_are_finite, tiny


def dense_sym_norm(a: np.ndarray) -> np.ndarray:
    """D^-½ A D^-½ with row sums, zero rows stay zero (dense, small inputs only)."""
    deg = a.sum(1)
    d = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
    return d[:, None] * a * d[None, :]


def dense_bipartite(r: np.ndarray) -> np.ndarray:
    n_u, n_i = r.shape
    a = np.zeros((n_u + n_i, n_u + n_i))
    a[:n_u, n_u:] = r
    a[n_u:, :n_u] = r.T
    return a


# =========================================================================== FREEDOM

@pytest.mark.parametrize("n_mod", [1, 2, 3])
def test_freedom_shapes_gradients_and_zero_degree_nodes(n_mod):
    model = build("freedom", tiny(n_mod))
    loss_and_scores_are_finite(model, atol=1e-5)  # full graph (before any epoch)
    model.zero_grad()
    model.on_epoch_start(1)  # a pruned graph: more zero-degree nodes
    loss_and_scores_are_finite(model, atol=1e-5)


def test_freedom_frozen_item_graph_equals_dense_reference():
    """Per modality: brute-force cosine of the RAW features, the k largest per row (the item itself
    included), binary weights, D^-½ Ŝ D^-½ with row sums; then 0.1·image + 0.9·text. The all-zero
    feature row (item 39 of `image`) has no edges in that modality."""
    data = tiny(2, n_items=40)
    model = build("freedom", data, "knn_k=5")
    assert model.alphas == pytest.approx([0.1, 0.9]) and model.modalities == ["image", "text"]
    want = np.zeros((40, 40))
    for alpha, m in zip((0.1, 0.9), ("image", "text")):
        x = data.features[m].astype(np.float64)
        nz = np.abs(x).sum(1) > 0
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = xn @ xn.T
        s = np.zeros((40, 40))
        for i in np.flatnonzero(nz):
            top = np.argsort(-sims[i], kind="stable")[:5]
            assert i in top
            s[i, top] = 1.0
        s[:, ~nz] = 0.0
        want += alpha * dense_sym_norm(s)
    got = model.mm_adj.to_dense().numpy()
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(model.mm_adj_t.to_dense().numpy(), want.T, atol=1e-6)
    image_only = build("freedom", data, "knn_k=5", "mm_weights=image:1,text:0").mm_adj.to_dense()
    assert torch.all(image_only[39] == 0) and torch.all(image_only[:, 39] == 0)
    assert torch.all(image_only.sum(1)[:39] > 0)


def test_freedom_item_branch_is_one_product_with_the_frozen_graph():
    data = tiny(2, n_items=40)
    model = build("freedom", data, "knn_k=5")
    with torch.no_grad():
        users, items = model.final_embeddings()
        ego = torch.cat([model.user_emb.weight, model.item_emb.weight]).double()
        adj = torch.from_numpy(dense_sym_norm(dense_bipartite(data.train.toarray())))
        out = (ego + adj @ ego + adj @ adj @ ego) / 3.0  # LightGCN mean over layers 0..2
        h = model.mm_adj.to_dense().double() @ model.item_emb.weight.double()  # one layer, not normalised
    assert torch.allclose(users.double(), out[:10], atol=1e-5)
    assert torch.allclose(items.double(), out[10:] + h, atol=1e-5)


def test_freedom_modality_weight_rule():
    assert modality_weights(["image:0.1", "text:0.9"], ["image", "text"]) == pytest.approx([0.1, 0.9])
    assert modality_weights(["image:0.1", "text:0.9"], ["text"]) == pytest.approx([1.0])
    assert modality_weights(["image:0.1", "text:0.9"], ["text", "image"]) == pytest.approx([0.9, 0.1])
    # a modality the authors never weighted (TikTok's audio, ML-100K's genre): uniform
    assert modality_weights(["image:0.1", "text:0.9"], ["image", "audio"]) == pytest.approx([0.5, 0.5])
    assert modality_weights(["image:0.1", "text:0.9"], ["text", "genre"]) == pytest.approx([0.5, 0.5])
    assert modality_weights(["image:1", "audio:3"], ["image", "audio"]) == pytest.approx([0.25, 0.75])
    assert build("freedom", tiny(3)).alphas == pytest.approx([1 / 3] * 3)
    assert build("freedom", tiny(3), "mm_weights=image:2,text:1,audio:1").alphas == pytest.approx([0.5, 0.25, 0.25])
    for bad in (["image"], ["image:x"], ["image:-1"], ["image:1", "image:2"], [":1"]):
        with pytest.raises(ConfigError, match="mm_weights"):
            modality_weights(bad, ["image"])
    with pytest.raises(ConfigError, match="sum to 0"):
        modality_weights(["image:0", "text:0"], ["image", "text"])


def test_freedom_pruned_graph_equals_dense_reference_and_inference_uses_the_full_graph():
    data = tiny(2, n_items=40)
    model = build("freedom", data)
    n_edges = data.train.nnz
    with torch.no_grad():
        model.begin_scoring()
        before = model.score(torch.arange(10))
        model.end_scoring()
    torch.manual_seed(3)
    model.on_epoch_start(1)
    kept = model.kept_edges
    assert len(kept) == int(np.floor(n_edges * (1 - 0.8) + 1e-9)) == model.n_kept()
    assert len(set(kept.tolist())) == len(kept), "without replacement"
    coo = data.train.tocoo()
    r = np.zeros((10, 40))
    r[coo.row[kept.numpy()], coo.col[kept.numpy()]] = 1.0
    assert r.sum() == len(kept)
    want = dense_sym_norm(dense_bipartite(r))  # degrees of the KEPT graph
    assert np.allclose(model.train_adj.to_dense().numpy(), want, atol=1e-6)
    full = dense_sym_norm(dense_bipartite(data.train.toarray()))
    assert np.allclose(model.adj.to_dense().numpy(), full, atol=1e-6)
    with torch.no_grad():
        model.begin_scoring()
        after = model.score(torch.arange(10))
        model.end_scoring()
    assert torch.equal(before, after), "scoring uses the full graph, not the epoch's pruned one"


def test_freedom_edges_are_drawn_proportional_to_inverse_sqrt_degrees():
    data = tiny(2)
    coo = data.train.tocoo()
    du = np.bincount(coo.row, minlength=10)
    di = np.bincount(coo.col, minlength=12)
    model = build("freedom", data, "dropout=0.96")  # ⌊27 · 0.04⌋ = 1 edge per draw
    p = 1.0 / np.sqrt(du[coo.row] * di[coo.col])
    assert np.allclose(model.edge_weights.numpy(), p)
    assert model.n_kept() == 1
    torch.manual_seed(0)
    counts = np.bincount([int(model.sample_kept_edges()) for _ in range(4000)], minlength=len(p))
    assert np.abs(counts / 4000 - p / p.sum()).max() < 0.02
    # Keeping many: low-degree edges are kept more often than high-degree ones.
    model = build("freedom", data, "dropout=0.5")
    torch.manual_seed(0)
    freq = np.bincount(torch.cat([model.sample_kept_edges() for _ in range(2000)]).numpy(), minlength=len(p))
    assert np.corrcoef(freq, p)[0, 1] > 0.8


def test_freedom_epoch_graph_is_deterministic_under_the_seed():
    model = build("freedom", tiny(2, n_items=40))
    graphs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        model.on_epoch_start(1)
        first = model.kept_edges.clone()
        model.on_epoch_start(2)
        graphs.append((first, model.kept_edges.clone()))
    assert all(torch.equal(a, b) for a, b in zip(graphs[0], graphs[1]))
    assert not torch.equal(graphs[0][0], graphs[0][1]), "a new graph every epoch"
    assert not torch.equal(graphs[0][0], graphs[2][0])


def test_freedom_resumed_run_draws_the_same_epoch_3_graph(tmp_path, monkeypatch):
    """Interrupted in epoch 3 (checkpoint of epoch 2), then resumed: the graph drawn for epoch 3 (and
    4) equals the uninterrupted run's, because it comes from the global torch RNG the trainer
    checkpoints; the histories and test metrics are equal too."""
    seen: dict[str, dict[int, torch.Tensor]] = {}
    tag = {"run": ""}
    orig = FREEDOM.on_epoch_start

    def record(self, epoch):
        orig(self, epoch)
        seen.setdefault(tag["run"], {})[epoch] = self.kept_edges.clone()

    monkeypatch.setattr(FREEDOM, "on_epoch_start", record)
    data = make_synthetic(n_users=60, n_items=40, seed=1)
    c = model_config("freedom", "synthetic", "full", None,
                     ["epochs=4", "patience=100", "batch_size=64", "checkpoint_every=0"])
    tag["run"] = "full"
    full = train_one("freedom", data, c, 3, CPU, tmp_path / "full", progress=False)

    def run():
        tag["run"] = "resumed" if "interrupted" in seen else "interrupted"
        return train_one("freedom", data, c, 3, CPU, tmp_path / "resumed", progress=False)

    resumed = interrupted_then_resumed(monkeypatch, run)
    assert sorted(seen["interrupted"]) == [1, 2, 3] and sorted(seen["resumed"]) == [3, 4]
    assert torch.equal(seen["resumed"][3], seen["full"][3])
    assert torch.equal(seen["resumed"][4], seen["full"][4])
    assert not torch.equal(seen["full"][3], seen["full"][2])
    assert [h["losses"] for h in resumed["history"]] == [h["losses"] for h in full["history"]]
    assert resumed["test"] == full["test"]


def test_freedom_loss_is_bpr_plus_weighted_modality_bpr():
    data = tiny(2)
    model = build("freedom", data, "reg_weight=0.3")
    batch = Batch(torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 11]))
    losses = model.calculate_loss(batch)
    with torch.no_grad():
        users, items = model.embeddings(model.train_adj)
        u = users[batch.users]

        def bpr(pos, neg):
            return -torch.log(torch.sigmoid((u * pos).sum(-1) - (u * neg).sum(-1))).mean()

        main = bpr(items[batch.pos], items[batch.neg])
        modal = 0.0
        for m, lin in zip(model.modalities, model.proj):
            proj = torch.from_numpy(data.features[m]) @ lin.weight.T + lin.bias  # W_m e^m + b_m
            modal = modal + bpr(proj[batch.pos], proj[batch.neg])
    assert losses["bpr"].item() == pytest.approx(main.item(), rel=1e-5)
    assert losses["modal_bpr"].item() == pytest.approx(float(modal), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(main.item() + 0.3 * float(modal), rel=1e-5)
    losses["loss"].backward()
    assert model.feats[0].grad is not None and model.feats[0].grad[[1, 2, 3, 4, 5, 6, 7, 11]].abs().sum() > 0
    assert model.feats[0].grad[[0, 8, 9, 10]].abs().sum() == 0  # only the batch's items


def test_freedom_defaults_follow_the_authors():
    c = cfg("freedom")
    assert (c.knn_k, c.n_mm_layers, c.n_ui_layers, c.dropout) == (10, 1, 2, 0.8)
    assert c.reg_weight in (0.0, 1e-5, 1e-4, 1e-3)  # a point of the authors' grid
    assert (c.lr, c.batch_size, c.embedding_size, c.weight_decay) == (1e-3, 2048, 64, 0.0)
    assert list(c.mm_weights) == ["image:0.1", "text:0.9"] and c.train_features and c.feature_norm == "none"


# =========================================================================== MostPop

def test_mostpop_scores_are_training_counts_and_ties_go_to_the_lower_id():
    data = tiny(2)
    model = build("mostpop", data)
    assert model.configure_optimizers() == [] and model.state_dict() == {}
    counts = np.bincount(data.train.indices, minlength=12)
    with torch.no_grad():
        model.begin_scoring()
        s = model.score(torch.tensor([9, 0, 3]))  # 9: a user without training items
        model.end_scoring()
    assert s.shape == (3, 12) and torch.isfinite(s).all()
    assert all(torch.equal(row, torch.from_numpy(counts.astype(np.float32))) for row in s)
    _, idx = topk_lower_id(s.clone(), 12)
    want = sorted(range(12), key=lambda i: (-counts[i], i))
    assert len(set(counts.tolist())) < 12, "the fixture has tied counts"
    assert idx[0].tolist() == want


# =========================================================================== ItemKNN

def dense_itemknn(r: np.ndarray, k: int, shrink: float) -> np.ndarray:
    """Brute force W[j, i]: cosine of the binary columns with shrink, no self, top-k by (−sim, j)."""
    r = (r > 0).astype(np.float64)
    n = r.shape[1]
    norms = np.sqrt(r.sum(0))
    sims = (r.T @ r) / (norms[:, None] * norms[None, :] + shrink + (1e-300 if shrink == 0 else 0))
    np.fill_diagonal(sims, 0.0)
    w = np.zeros((n, n))
    for i in range(n):
        order = sorted(range(n), key=lambda j: (-sims[i, j], j))
        for j in order[:k]:
            if sims[i, j] > 0:
                w[j, i] = sims[i, j]
    return w


@pytest.fixture(scope="module")
def knn_data():
    rng = np.random.default_rng(4)
    r = (rng.random((30, 25)) < 0.2).astype(np.float64)
    r[:, 7] = r[:, 3]  # identical columns: exact similarity ties
    r[:, 11] = r[:, 3]
    r[:, 20] = 0.0  # an item nobody trained on
    r[5] = 0.0  # a user without training items
    return r


@pytest.mark.parametrize("shrink", [0.0, 2.0])
@pytest.mark.parametrize("block", [None, 1, 7])
def test_itemknn_graph_equals_dense_bruteforce(knn_data, shrink, block):
    got = item_knn_graph(sp.csr_matrix(knn_data), k=4, shrink=shrink, block=block).toarray()
    assert np.allclose(got, dense_itemknn(knn_data, 4, shrink), atol=1e-12)


def test_itemknn_scores_equal_dense_reference(knn_data):
    from mmbench.data.dataset import TrainData

    data = TrainData(30, 25, sp.csr_matrix(knn_data), {}, "knn")
    model = build("itemknn", data, "knn_k=4", "shrink=2")
    assert model.configure_optimizers() == [] and model.state_dict() == {}
    w = dense_itemknn(knn_data, 4, 2.0)
    assert np.allclose(model.similarity().toarray(), w, atol=1e-6)
    users = torch.tensor([5, 0, 29, 3, 3])
    with torch.no_grad():
        model.begin_scoring()
        s = model.score(users)
        model.end_scoring()
    assert s.shape == (5, 25) and torch.isfinite(s).all() and torch.all(s[0] == 0)
    assert np.allclose(s.numpy(), knn_data[users.numpy()] @ w, atol=1e-5)
    assert torch.all(s[:, 20] == 0)


def test_positive_topk_keeps_only_positive_entries_in_value_then_id_order():
    s = torch.tensor([[0.5, 0.2, 0.5, 0.0, 0.2, 0.2],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                      [0.1, 0.3, 0.0, 0.3, 0.3, 0.9]], dtype=torch.float64)
    vals, idx = positive_topk(s, 4)
    assert idx[0].tolist() == [0, 2, 1, 4] and vals[0].tolist() == [0.5, 0.5, 0.2, 0.2]
    assert torch.all(vals[1] == 0)
    assert idx[2].tolist() == [5, 1, 3, 4]


def test_itemknn_defaults_follow_dacrema_et_al():
    c = cfg("itemknn")
    assert (c.knn_k, c.shrink) == (50, 100.0)
    assert c.epochs == 1


def test_spaces_of_freedom_and_itemknn_are_valid_and_hold_the_defaults():
    from mmbench import tune

    for name in ("freedom", "itemknn"):
        space = tune.load_space(name)
        c = cfg(name)
        for d in space.dims:
            if d.kind == "categorical":
                assert c[d.name] in d.choices
            else:
                assert d.low <= c[d.name] <= d.high
