"""CLCRec and BM3: shapes and finite losses/gradients/scores on `tiny()` (zero-degree user and items,
an all-zero feature row) for 1..3 modalities; each model's mechanics against a brute-force reference
on small inputs; defaults equal to the cited author values; the search spaces hold the defaults."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmbench.models.base import Batch
from mmbench.tune import load_space
from model_helpers import build, cfg, dense_normalized_adjacency, loss_and_scores_are_finite, tiny

BATCH = Batch(torch.tensor([0, 1, 2, 9, 4]), torch.tensor([1, 2, 3, 10, 5]), torch.tensor([6, 7, 8, 9, 0]))


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("n_mod", [1, 2, 3])
@pytest.mark.parametrize("name", ["clcrec", "bm3"])
def test_shapes_gradients_and_zero_degree_nodes(name, n_mod):
    losses = loss_and_scores_are_finite(build(name, tiny(n_mod)), atol=1e-5)
    assert set(losses) >= {"loss", "reg"}


# --------------------------------------------------------------------------- CLCRec

def clcrec_bruteforce(model, users, items, mix):
    """The objective written out per candidate with gathered [B, K, d] vectors (no unique/gather
    trick), in the model's parameters, so values and gradients can be compared."""
    c = model.cfg
    feats = model.features.concat()
    e_u = model.id_emb[users]                                  # [B, d]
    e_k = model.id_emb[model.n_users + items]                  # [B, K, d]
    v_k = model.encoder(feats[items])                          # [B, K, d]
    total_re, total_ui = 0.0, 0.0
    for b in range(len(users)):
        a = e_k[b, 0] / e_k[b, 0].norm()
        cand = v_k[b] / v_k[b].norm(dim=1, keepdim=True)
        s = cand @ a / c.temperature
        total_re = total_re - torch.log(torch.exp(s[0]) / torch.exp(s).sum())
        h = torch.stack([v_k[b, k] if mix[b, k] else e_k[b, k] for k in range(items.shape[1])])
        s = h @ e_u[b] / c.temperature
        total_ui = total_ui - torch.log(torch.exp(s[0]) / torch.exp(s).sum())
    re, ui = total_re / len(users), total_ui / len(users)
    reg = c.reg_weight * 0.5 * (e_u.norm(dim=1).mean() + e_k.norm(dim=2).mean())
    return {"loss": c.lambda_re * re + (1 - c.lambda_re) * ui + reg, "re": re, "ui": ui, "reg": reg}


def test_clcrec_objective_and_gradients_equal_bruteforce():
    data = tiny(3)
    model = build("clcrec", data, "num_neg=4", "temperature=0.7", "lambda_re=0.3", "reg_weight=0.05")
    torch.manual_seed(1)
    users = torch.tensor([0, 1, 2, 9, 4])
    items = torch.randint(0, 12, (5, 5))  # duplicates within and across rows, cold items 10/11 too
    items[:, 0] = BATCH.pos
    mix = torch.rand(5, 5) < 0.5
    got = model.losses(users, items, mix)
    got["loss"].backward()
    g_model = grads(model)
    model.zero_grad()
    want = clcrec_bruteforce(model, users, items, mix)
    want["loss"].backward()
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-5), key
    g_ref = grads(model)
    assert g_model.keys() == g_ref.keys() and len(g_model) == 5  # id table + encoder's 2 weights, 2 biases
    for n in g_ref:
        assert torch.allclose(g_model[n], g_ref[n], atol=1e-5), n


def test_clcrec_mixing_rate_switches_item_representation():
    """ρ = 0: U-I uses ID embeddings only; ρ = 1: content only (so item IDs then get gradient from
    R-E and the regulariser alone)."""
    data = tiny(2)
    for rho in (0.0, 1.0):
        model = build("clcrec", data, f"mix_rate={rho}", "num_neg=6")
        torch.manual_seed(3)
        got = model.calculate_loss(BATCH)
        torch.manual_seed(3)
        neg = model.sample_negatives(BATCH.users)
        items = torch.cat([BATCH.pos[:, None], neg], 1)
        want = model.losses(BATCH.users, items, torch.full(items.shape, rho == 1.0))
        assert torch.allclose(got["ui"], want["ui"]) and torch.allclose(got["loss"], want["loss"])
    model = build("clcrec", data, "mix_rate=0.5", "num_neg=6")
    torch.manual_seed(3)
    a = model.calculate_loss(BATCH)["loss"]
    torch.manual_seed(3)
    assert torch.equal(a, model.calculate_loss(BATCH)["loss"]), "same global RNG state, same loss"
    other = Batch(BATCH.users, BATCH.pos, torch.tensor([11, 11, 11, 11, 11]))
    torch.manual_seed(3)
    assert torch.equal(a, model.calculate_loss(other)["loss"]), "the shared sampler's negative is unused"


def test_clcrec_negatives_are_warm_non_train_items_from_the_global_rng():
    data = tiny(2)
    model = build("clcrec", data, "num_neg=50")
    train = data.train.toarray() > 0
    warm = set(np.flatnonzero(train.any(0)).tolist())
    users = torch.arange(10)
    torch.manual_seed(0)
    neg = model.sample_negatives(users)
    assert neg.shape == (10, 50)
    for u in range(10):
        row = neg[u].tolist()
        assert set(row) <= warm, "never an item without training interactions"
        assert not any(train[u, i] for i in row), "never one of the user's training items"
    torch.manual_seed(0)
    assert torch.equal(neg, model.sample_negatives(users))
    assert not torch.equal(neg, model.sample_negatives(users))
    # a user who interacted with every warm item: the redraws stop, the draws stay warm items
    full = data.train.tolil()
    full[0, sorted(warm)] = 1.0
    saturated = type(data)(data.n_users, data.n_items, full.tocsr(), data.features, "tiny")
    greedy = build("clcrec", saturated, "num_neg=5")
    assert set(greedy.sample_negatives(torch.tensor([0])).flatten().tolist()) <= warm


@pytest.mark.parametrize("cold_scoring", ["content", "id"])
def test_clcrec_scores_warm_items_by_id_and_cold_items_by_content(cold_scoring):
    data = tiny(2)
    model = build("clcrec", data, f"cold_scoring={cold_scoring}")
    cold = ~(data.train.toarray() > 0).any(0)
    assert cold.tolist() == [False] * 10 + [True, True]
    with torch.no_grad():
        model.begin_scoring()
        scores = model.score(torch.arange(10)).numpy()
        model.end_scoring()
        e = model.id_emb.numpy().astype(np.float64)
        content = model.encoder(model.features.concat()).numpy().astype(np.float64)
    items = e[10:].copy()
    if cold_scoring == "content":
        items[cold] = content[cold]
    assert np.allclose(scores, e[:10] @ items.T, atol=1e-5)


def test_clcrec_defaults_are_the_authors_movielens_command():
    c = cfg("clcrec")
    assert (c.lr, c.batch_size, c.embedding_size) == (1e-3, 256, 64)
    assert (c.num_neg, c.temperature, c.lambda_re, c.mix_rate, c.reg_weight) == (128, 2.0, 0.5, 0.5, 0.1)
    assert (c.encoder_hidden, c.cold_scoring, c.feature_norm) == (256, "content", "l2")


# --------------------------------------------------------------------------- BM3

@pytest.mark.parametrize("n_layers", [1, 2])
def test_bm3_backbone_equals_dense_lightgcn_plus_ego(n_layers):
    data = tiny(2)
    model = build("bm3", data, f"n_layers={n_layers}")
    a = dense_normalized_adjacency(data.train)
    with torch.no_grad():
        ego = torch.cat([model.user_emb.weight, model.item_emb.weight]).double().numpy()
        users, items = model.forward()
    layers, x = [ego], ego
    for _ in range(n_layers):
        x = a @ x
        layers.append(x)
    h = np.mean(layers, axis=0)
    assert np.allclose(users.numpy(), h[:10], atol=1e-5)
    assert np.allclose(items.numpy(), h[10:] + ego[10:], atol=1e-5)


def bm3_bruteforce(model, batch):
    """The objective without dropout, targets detached explicitly, every term written out."""
    c = model.cfg
    users_all, items_all = model.forward()
    h_u, h_i = users_all[batch.users], items_all[batch.pos]
    t_u, t_i = h_u.detach(), h_i.detach()

    def cmean(a, b):
        return 1 - torch.stack([a[r] @ b[r] / (a[r].norm() * b[r].norm()) for r in range(len(a))]).mean()

    rec = cmean(model.predictor(h_u), t_i) + cmean(model.predictor(h_i), t_u)
    align = mask = 0.0
    for m in range(model.n_modalities):
        h_m = model.projections[m](model.tables[m][batch.pos])
        align = align + cmean(model.predictor(h_m), t_i)
        mask = mask + cmean(model.predictor(h_m), h_m.detach())
    reg = c.reg_weight * (users_all.pow(2).sum().sqrt() + items_all.pow(2).sum().sqrt()) / model.n_items
    loss = rec + c.cl_weight * (align + mask) + reg
    return {"loss": loss, "rec": rec, "align": align, "mask": mask, "reg": reg}


def test_bm3_objective_and_gradients_equal_bruteforce_without_dropout():
    data = tiny(3)
    model = build("bm3", data, "dropout=0", "reg_weight=0.3", "cl_weight=1.5")
    got = model.calculate_loss(BATCH)
    got["loss"].backward()
    g_model = grads(model)
    model.zero_grad()
    want = bm3_bruteforce(model, BATCH)
    want["loss"].backward()
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-5), key
    g_ref = grads(model)
    assert g_model.keys() == g_ref.keys()
    assert {"tables.0", "tables.1", "tables.2", "predictor.weight", "user_emb.weight"} <= set(g_ref)
    for n in g_ref:
        assert torch.allclose(g_model[n], g_ref[n], atol=1e-5), n


def test_bm3_targets_are_dropout_perturbed_from_the_global_rng_and_negatives_unused():
    data = tiny(2)
    model = build("bm3", data)
    torch.manual_seed(4)
    a = model.calculate_loss(BATCH)
    torch.manual_seed(4)
    b = model.calculate_loss(Batch(BATCH.users, BATCH.pos, torch.tensor([11, 11, 11, 11, 11])))
    assert all(torch.equal(a[k], b[k]) for k in a), "same RNG state: same loss, whatever batch.neg says"
    c = model.calculate_loss(BATCH)
    assert not torch.equal(a["rec"], c["rec"]), "a new dropout mask perturbs the targets"
    clean = build("bm3", data, "dropout=0").calculate_loss(BATCH)
    assert not torch.equal(a["rec"], clean["rec"])
    # the target of a vector is the vector with a random half of its entries zeroed (and rescaled)
    h = torch.randn(200, 64)
    t = model.target(h)
    kept = t != 0
    assert torch.allclose(t[kept], 2.0 * h[kept]) and 0.4 < kept.float().mean() < 0.6 and not t.requires_grad


def test_bm3_scores_are_predicted_user_dot_predicted_item():
    data = tiny(2)
    model = build("bm3", data)
    with torch.no_grad():
        users, items = model.forward()
        w, bias = model.predictor.weight.double(), model.predictor.bias.double()
        want = (users.double() @ w.T + bias) @ (items.double() @ w.T + bias).T
        model.begin_scoring()
        got = model.score(torch.arange(10))
        model.end_scoring()
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_bm3_feature_tables_are_trainable_or_plain_buffers():
    data = tiny(2)
    model = build("bm3", data)
    assert [tuple(t.shape) for t in model.tables] == [(12, 24), (12, 12)]
    assert torch.allclose(model.tables[0][0].norm(), torch.tensor(1.0)), "initialised row-normalised"
    frozen = build("bm3", data, "train_features=false")
    assert not any(k.startswith(("tables", "features")) for k in frozen.state_dict())
    loss_and_scores_are_finite(frozen, atol=1e-5)


def test_bm3_defaults_are_the_authors_presets():
    c = cfg("bm3")
    assert (c.n_layers, c.dropout, c.reg_weight, c.cl_weight) == (1, 0.5, 0.1, 2.0)
    assert (c.lr, c.batch_size, c.embedding_size, c.train_features) == (1e-3, 2048, 64, True)
    from mmbench.runner import model_config

    assert model_config("bm3", "sports").reg_weight == 0.01


# --------------------------------------------------------------------------- search spaces

@pytest.mark.parametrize("name", ["clcrec", "bm3"])
def test_search_space_holds_the_defaults(name):
    c = cfg(name)
    for dim in load_space(name).dims:
        value = getattr(c, dim.name)
        if dim.kind == "categorical":
            assert value in dim.choices, dim.name
        else:
            assert dim.low <= value <= dim.high, dim.name
