"""Native multimodal baselines VBPR, LightGCN-M and MMGCN: shapes, zero-degree safety, determinism,
any number of modalities, and a short training run that must beat a random scorer."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmbench.data.dataset import TrainData
from mmbench.data.synthetic import make_synthetic
from mmbench.errors import ConfigError
from mmbench.models.base import Batch
from mmbench.models.multimodal import ItemFeatures, mean_bipartite_adjacency, normalize_features
from mmbench.runner import train_one
from model_helpers import CPU, MODALITY_SETS, build, cfg, loss_and_scores_are_finite, random_recall, tiny

MODELS = ("vbpr", "lightgcn-m", "mmgcn")


@pytest.fixture(scope="module")
def synth3():
    return make_synthetic(n_users=300, n_items=200, modalities=MODALITY_SETS[3], seed=3)


# --------------------------------------------------------------------------- shapes and safety

@pytest.mark.parametrize("n_mod", [1, 2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_shapes_losses_and_gradients(name, n_mod):
    data = tiny(n_mod)
    model = build(name, data)
    losses = loss_and_scores_are_finite(model, atol=1e-6)
    assert set(losses) >= {"loss", "bpr", "reg"}


@pytest.mark.parametrize("name", MODELS)
def test_features_are_buffers_not_checkpoint_state(name):
    model = build(name, tiny(2))
    assert not any("_feat" in k for k in model.state_dict())
    assert len(model.features) == 2


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_model_and_training(name, synth3):
    a = build(name, synth3.train_view(), seed=5)
    b = build(name, synth3.train_view(), seed=5)
    c = build(name, synth3.train_view(), seed=6)
    users = torch.arange(20)
    with torch.no_grad():
        assert torch.equal(a.score(users), b.score(users))
        assert not torch.equal(a.score(users), c.score(users))
    config = cfg(name, "epochs=2", "patience=2")
    r1 = train_one(name, synth3, config, 11, CPU, None, progress=False)
    r2 = train_one(name, synth3, config, 11, CPU, None, progress=False)
    assert r1["test"] == r2["test"] and r1["valid"] == r2["valid"]
    assert [h["losses"] for h in r1["history"]] == [h["losses"] for h in r2["history"]]


# --------------------------------------------------------------------------- learning

# MMGCN learns slowly at its paper lr (5e-4) on this tiny problem; a larger lr keeps the test short.
FAST = {"mmgcn": ["lr=5e-3"]}


@pytest.mark.parametrize("name", MODELS)
def test_short_training_beats_random(name, synth3):
    rec = train_one(name, synth3, cfg(name, "epochs=25", "patience=25", *FAST.get(name, [])), 1, CPU, None,
                    progress=False)
    for split, got in (("valid", rec["valid"]["recall@20"]), ("test", rec["test"]["recall@20"])):
        base = random_recall(synth3, split)
        assert got > 1.5 * base, f"{name} {split} recall@20 {got:.3f} vs random {base:.3f}"


@pytest.mark.parametrize("modalities", [["audio"], ["image", "audio"]])
def test_modality_selection_reaches_the_model(modalities, synth3):
    """`--set modalities=...` decides how many feature blocks a model sees (and trains with them)."""
    c = cfg("mmgcn", "epochs=1", f"modalities={','.join(modalities)}")
    assert c.modalities == modalities
    rec = train_one("mmgcn", synth3, c, 1, CPU, None, progress=False)
    assert rec.dataset.modalities == modalities
    assert np.isfinite(rec["valid"]["recall@20"])


# --------------------------------------------------------------------------- model-specific

def test_mmgcn_id_and_preference_are_trained():
    """The authors' code leaves them unregistered (frozen at init); ours must learn them."""
    data = tiny(2)
    model = build("mmgcn", data)
    names = {n for n, _ in model.named_parameters()}
    assert "id_emb" in names and {"branches.0.preference", "branches.1.preference"} <= names
    before = model.id_emb.detach().clone(), model.branches[0].preference.detach().clone()
    opt = model.configure_optimizers()
    model.train_step(Batch(torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([5, 6])), opt)
    assert not torch.equal(before[0], model.id_emb.detach())
    assert not torch.equal(before[1], model.branches[0].preference.detach())


def test_mmgcn_combine_modes_and_layers():
    data = tiny(2)
    for sets in (("combine=add",), ("n_layers=1",), ("n_layers=3", "latent_size=16")):
        model = build("mmgcn", data, *sets)
        with torch.no_grad():
            assert torch.isfinite(model.score(torch.arange(10))).all()
    with pytest.raises(ConfigError):
        build("mmgcn", data, "combine=max")


def test_vbpr_switches_and_score_decomposition():
    data = tiny(2)
    model = build("vbpr", data)
    with torch.no_grad():
        model.beta_item.fill_(0.5)
        model.beta_visual.normal_()
        u, i = torch.tensor([3]), torch.tensor([4])
        f = model.features.concat()[i]
        expect = (0.5 + model.gamma_user(u) @ model.gamma_item(i).T
                  + model.theta_user(u) @ model.project(f).T + f @ model.beta_visual)
        assert torch.allclose(model.score(u)[:, 4], expect.ravel(), atol=1e-5)
    plain = build("vbpr", data, "item_bias=false", "visual_bias=false", "reg_content=0.01")
    assert plain.beta_item is None and plain.beta_visual is None
    loss = plain.calculate_loss(Batch(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    assert torch.isfinite(loss["loss"]) and loss["reg"] > 0


def test_lightgcn_m_features_enter_the_item_input():
    """Same IDs, different features => different item embeddings (the content is propagated)."""
    data = tiny(1)
    other = TrainData(data.n_users, data.n_items, data.train,
                      {k: np.roll(v, 1, axis=0) for k, v in data.features.items()}, "tiny")
    a, b = build("lightgcn-m", data), build("lightgcn-m", other)
    with torch.no_grad():
        assert not torch.allclose(a.forward()[1], b.forward()[1])


# --------------------------------------------------------------------------- helpers

def test_normalize_features_guards_zero_rows_and_columns():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 4.0]], dtype=np.float32)
    l2 = normalize_features(x, "l2")
    assert np.allclose(np.linalg.norm(l2, axis=1), [1, 0, 1])
    z = normalize_features(np.array([[1.0, 2.0, 5.0], [1.0, 4.0, 6.0], [1.0, 0.0, 9.0]]), "zscore")
    assert np.isfinite(z).all() and np.allclose(z[:, 0], 0)  # a constant column stays 0, no NaN
    assert np.allclose(z.mean(0), 0, atol=1e-6)
    assert np.isclose((z[:, 1:] ** 2).sum(1).mean(), 2 / 3)  # variance 1/d per non-constant column
    assert np.array_equal(normalize_features(x, "none"), x)
    with pytest.raises(ConfigError):
        normalize_features(x, "minmax")
    with pytest.raises(ConfigError):
        ItemFeatures({"image": x}, "l2", modalities=["text"])


def test_mean_adjacency_averages_neighbours_and_keeps_isolated_rows_empty():
    train = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32))
    adj = mean_bipartite_adjacency(train).to_dense()
    sums = adj.sum(1)
    assert adj.shape == (6, 6)
    assert torch.allclose(sums, torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0]))
    assert torch.allclose(adj[4, :3], torch.tensor([0.5, 0.5, 0.0]))  # item 1 averages users 0 and 1


def test_sparse_matmul_with_cached_transpose_matches_dense_gradients():
    """spmm (symmetric Â reused as its own transpose) and Graph (explicit transpose) give torch's
    dense products and gradients."""
    from mmbench.models.graph import Graph, normalized_bipartite_adjacency, spmm

    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((7, 5)) < 0.4).astype(np.float32))
    adj = normalized_bipartite_adjacency(train)
    rect = sp.csr_matrix(rng.random((7, 5)) * (rng.random((7, 5)) < 0.5), dtype=np.float32)
    cases = [(lambda x: spmm(adj, x), adj.to_dense(), 12),
             (lambda x: Graph.from_scipy(rect, CPU) @ x, torch.from_numpy(rect.toarray()), 5)]
    for product, dense, n_cols in cases:
        x = torch.randn(n_cols, 3, requires_grad=True)
        w = torch.randn(len(dense), 3)
        (g_sparse,) = torch.autograd.grad((product(x) * w).sum(), x)
        (g_dense,) = torch.autograd.grad(((dense @ x) * w).sum(), x)
        assert torch.allclose(product(x), dense @ x, atol=1e-6)
        assert torch.allclose(g_sparse, g_dense, atol=1e-6)
