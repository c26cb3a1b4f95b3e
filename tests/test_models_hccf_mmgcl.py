"""HCCF and MMGCL: shapes, finite losses/gradients/scores on zero-degree nodes and zero feature rows,
the model-specific mechanics against small dense brute-force references (HCCF's local and hypergraph
views, edge dropout and cross-view InfoNCE; MMGCL's re-normalised edge-dropped graphs, LightGCN
branches and fusion, modality masking, modality-perturbed negatives and contrastive loss), that the
augmentations draw from the global torch RNG (so runs are reproducible and resumable), and that the
defaults are the cited values."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from mmbench.errors import ConfigError
from mmbench.models.base import Batch
from mmbench.models.graph import normalized_bipartite_adjacency
from mmbench.models.mmgcl import info_nce_with_negatives
from model_helpers import build, cfg, dense_normalized_adjacency, loss_and_scores_are_finite, tiny

BATCH = Batch(torch.tensor([0, 1, 2, 3, 1, 9]), torch.tensor([1, 2, 3, 4, 5, 0]), torch.tensor([6, 7, 8, 9, 10, 11]))


def leaky(x: torch.Tensor, slope: float) -> torch.Tensor:
    return torch.where(x > 0, x, slope * x)


def loop_info_nce(anchor, positive, negatives, tau, exclude_self=False) -> float:
    """−log exp(cos(a_i, p_i)/τ) / (exp(cos(a_i, p_i)/τ)·[exclude_self] + Σ_j exp(cos(a_i, n_j)/τ)), meaned."""
    cos = lambda x, y: float(x @ y / (max(np.linalg.norm(x), 1e-12) * max(np.linalg.norm(y), 1e-12)))
    a, p, n = (t.detach().double().numpy() for t in (anchor, positive, negatives))
    out = []
    for i in range(len(a)):
        pos = np.exp(cos(a[i], p[i]) / tau)
        negs = [np.exp(cos(a[i], n[j]) / tau) for j in range(len(n)) if not (exclude_self and j == i)]
        out.append(-np.log(pos / ((pos if exclude_self else 0.0) + sum(negs))))
    return float(np.mean(out))


# =========================================================================== HCCF

def test_hccf_shapes_gradients_and_zero_degree_nodes():
    # scores reach ~1e2 on tiny's few nodes (xavier init is wide there): compare cached scores loosely
    losses = loss_and_scores_are_finite(build("hccf", tiny(2)), atol=1e-4)
    assert set(losses) == {"loss", "main", "ssl", "reg"}


def test_hccf_forward_matches_dense_reference():
    """What is checked: without dropout, the embeddings equal a float64 dense evaluation of the paper's
    equations: Z_l = σ(Ā E_{l-1}) with the dense D^-½ A D^-½; H = E₀ W per side; Γ_l = σ(H Ψ^c(σ(Hᵀ
    E_{l-1}))) with Ψ(X) = σ(V X) + X and each (layer, side) its own V's; E_l = Z_l + Γ_l + E_{l-1};
    output Σ_l E_l; and the local/global lists are the per-layer Z_l and Γ_l."""
    data = tiny(1, n_items=14)
    model = build("hccf", data, "hyper_num=5", "n_layers=2", "hyper_mapping_layers=2").double()
    with torch.no_grad():
        emb, local, glob = model.forward(train=False)
    a = torch.from_numpy(dense_normalized_adjacency(data.train))
    s = model.cfg.leaky
    e = torch.cat([model.user_emb, model.item_emb]).detach()
    hs = [model.user_emb.detach() @ model.user_hyper.detach(), model.item_emb.detach() @ model.item_hyper.detach()]
    nu, c = data.n_users, 2
    layers = [e]
    for l in range(2):
        prev = layers[-1]
        z = leaky(a @ prev, s)
        parts = []
        for side, (h, x) in enumerate(zip(hs, (prev[:nu], prev[nu:]))):
            lat = leaky(h.T @ x, s)
            for v in list(model.mapping)[(2 * l + side) * c:(2 * l + side + 1) * c]:
                lat = leaky(v.detach() @ lat, s) + lat
            parts.append(leaky(h @ lat, s))
        g = torch.cat(parts)
        assert torch.allclose(local[l], z) and torch.allclose(glob[l], g)
        layers.append(z + g + prev)
    assert torch.allclose(emb, sum(layers))
    assert torch.all(local[0][9] == 0), "zero-degree user 9 has no local message"


def test_hccf_linear_hypergraph_equals_dense_dependency_matrix():
    """With σ = identity and no mapping layers, Γ⁽ᵘ⁾ = H⁽ᵘ⁾H⁽ᵘ⁾ᵀ E⁽ᵘ⁾: the dense U×U (and I×I)
    hypergraph-induced dependency matrix, computed here explicitly, never by the model."""
    data = tiny(1)
    model = build("hccf", data, "leaky=1", "hyper_mapping_layers=0", "hyper_num=7").double()
    hu, hi = (h.detach() for h in model._hyper_matrices())
    x = torch.randn(data.n_users + data.n_items, model.cfg.embedding_size, dtype=torch.float64)
    uu, ii = hu @ hu.T, hi @ hi.T  # dense dependency matrices, test only
    assert uu.shape == (data.n_users, data.n_users) and ii.shape == (data.n_items, data.n_items)
    with torch.no_grad():
        assert torch.allclose(model._global(hu, x[: data.n_users], []), uu @ x[: data.n_users])
        assert torch.allclose(model._global(hi, x[data.n_users :], []), ii @ x[data.n_users :])


def test_hccf_edge_dropout_on_graph_and_hypergraph():
    """Training products use Ā with each stored entry kept w.p. keep and scaled by 1/keep, the two
    directions of an edge dropped independently (so the dropped operator is not symmetric), and its
    transpose in the backward; scoring uses no dropout and is deterministic."""
    data = tiny(1, n_items=30)
    model = build("hccf", data, "keep_rate=0.5").double()
    vals = model.adj_values
    torch.manual_seed(3)
    dropped = model._dropout(vals, True)
    kept = dropped != 0
    assert torch.allclose(dropped[kept], vals[kept] / 0.5) and 0.3 < kept.double().mean() < 0.7
    dense = torch.from_numpy(model.graph.to_scipy(dropped).toarray())
    full = torch.from_numpy(dense_normalized_adjacency(data.train))
    assert torch.allclose(torch.where(dense != 0, full / 0.5, torch.zeros_like(full)), dense)
    assert not torch.allclose(dense, dense.T), "user←item and item←user are dropped independently"
    x = torch.randn(dense.shape[0], 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(dense.shape[0], 4, dtype=torch.float64)
    (model.graph.matmul(dropped, x) * w).sum().backward()
    assert torch.allclose(x.grad, dense.T @ w)
    h = torch.ones(50, 8, dtype=torch.float64)
    hd = model._dropout(h, True)
    assert set(hd.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(model._dropout(h, False), h)
    with torch.no_grad():
        a, b = model.final_embeddings(), model.final_embeddings()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_hccf_losses_match_bruteforce():
    """L_s = Σ_l InfoNCE(local, global) over the batch's distinct users and distinct positive items
    (cosine, τ; checked with loops); main = BPR or hinge; reg = λ₂ Σ‖θ‖²; and the same RNG state
    gives the same dropped graphs (the loss is reproducible and resumable)."""
    model = build("hccf", tiny(1), "temperature=0.5", "reg_weight=1e-3")
    torch.manual_seed(11)
    state = torch.get_rng_state()
    emb, local, glob = model.forward(train=True)
    torch.set_rng_state(state)
    losses = model.calculate_loss(BATCH)
    nu = model.n_users
    users = sorted(set(BATCH.users.tolist()))
    items = [i + nu for i in sorted(set(BATCH.pos.tolist()))]
    want = sum(loop_info_nce(z[users], g[users], g[users], 0.5) + loop_info_nce(z[items], g[items], g[items], 0.5)
               for z, g in zip(local, glob))
    assert losses["ssl"].item() == pytest.approx(want, rel=1e-4)
    u, i, j = emb[BATCH.users], emb[BATCH.pos + nu], emb[BATCH.neg + nu]
    diff = ((u * i).sum(-1) - (u * j).sum(-1)).detach().double()
    assert losses["main"].item() == pytest.approx(float(-F.logsigmoid(diff).mean()), rel=1e-4)
    reg = 1e-3 * sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())
    assert losses["reg"].item() == pytest.approx(reg, rel=1e-4)
    torch.set_rng_state(state)
    again = model.calculate_loss(BATCH)
    assert torch.equal(again["loss"], losses["loss"])
    torch.manual_seed(12)
    assert not torch.equal(model.calculate_loss(BATCH)["loss"], losses["loss"])

    hinge = build("hccf", tiny(1), "main_loss=hinge")
    torch.manual_seed(5)
    emb, _, _ = hinge.forward(train=True)
    torch.manual_seed(5)
    got = hinge.calculate_loss(BATCH)["main"].detach()
    u, i, j = (t.detach() for t in (emb[BATCH.users], emb[BATCH.pos + nu], emb[BATCH.neg + nu]))
    hinge_ref = torch.clamp(1 - (u * i).sum(-1) + (u * j).sum(-1), min=0).mean()
    assert got.item() == pytest.approx(float(hinge_ref), rel=1e-5)


def test_hccf_ssl_stops_the_gradient_through_the_local_view():
    """`ssl_detach_local` (the authors' torch code): L_s pulls the global view towards a fixed local
    view; without it the gradient also flows through the local view, so the gradients differ."""
    grads = []
    for flag in ("true", "false"):
        model = build("hccf", tiny(1), f"ssl_detach_local={flag}")
        torch.manual_seed(0)
        model.calculate_loss(BATCH)["ssl"].backward()
        assert model.user_hyper.grad.abs().sum() > 0  # the hypergraph side always learns from L_s
        grads.append(model.item_emb.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_hccf_learning_rate_decays_per_epoch():
    model = build("hccf", tiny(1))
    (opt,) = model.configure_optimizers()
    model.on_epoch_start(3)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.96**2)
    model.on_epoch_start(1)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_hccf_defaults_are_the_authors_values():
    c = cfg("hccf")
    assert (c.hyper_num, c.n_layers, c.hyper_mapping_layers, c.leaky, c.keep_rate) == (128, 2, 3, 0.5, 0.5)
    assert (c.ssl_weight, c.temperature, c.reg_weight, c.lr, c.lr_decay) == (0.2, 0.1, 1e-6, 1e-3, 0.96)
    assert (c.batch_size, c.main_loss, c.ssl_detach_local) == (4096, "bpr", True)


# =========================================================================== MMGCL

@pytest.mark.parametrize("n_mod", [1, 2, 3])
def test_mmgcl_shapes_gradients_and_zero_degree_nodes(n_mod):
    model = build("mmgcl", tiny(n_mod))
    losses = loss_and_scores_are_finite(model, atol=1e-5)
    assert set(losses) == {"loss", "bpr", "ssl"}
    users, items = model.forward()
    assert users.shape == (10, 64) and items.shape == (tiny(n_mod).n_items, 64)


def test_mmgcl_dropped_graph_is_the_renormalised_dense_graph():
    """Each interaction is kept or dropped in both directions at once, and the dropped graph is
    D'^-½ A' D'^-½ of the KEPT interactions (re-normalised, not rescaled); keeping all reproduces Â;
    a node that loses every edge has a zero row (no NaN)."""
    data = tiny(2, n_items=20)
    model = build("mmgcl", data)
    r = sp.csr_matrix(data.train)
    r.sort_indices()
    assert model.n_edges == r.nnz
    full = model.dropped_adjacency(torch.ones(r.nnz, dtype=torch.bool)).to_dense()
    assert torch.allclose(full, normalized_bipartite_adjacency(data.train).to_dense(), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        keep = torch.rand(r.nnz, generator=g) > 0.4
        keep[r.indptr[0]:r.indptr[1]] = False  # user 0 loses all its edges
        kept = sp.csr_matrix((keep.numpy().astype(np.float64), r.indices, r.indptr), shape=r.shape)
        got = model.dropped_adjacency(keep).to_dense().double()
        want = torch.from_numpy(dense_normalized_adjacency(kept))
        assert torch.allclose(got, want, atol=1e-6) and torch.allclose(got, got.T)
        assert torch.all(got[0] == 0) and torch.isfinite(got).all()


def test_mmgcl_branches_and_fusion_match_dense_reference():
    """Prediction = Linear_u / Linear_i of the concatenated LightGCN branches [id, m_1, ...], each the
    mean of Â^l [E_u; X_b] for l = 0..L with X_id = item IDs and X_m = Linear_m(l2-normalised f_m)."""
    data = tiny(2)
    model = build("mmgcl", data).double()
    a = torch.from_numpy(dense_normalized_adjacency(data.train))
    p = model.cfg.n_layers
    xs = [model.item_emb] + [proj(model.features[k]) for k, proj in enumerate(model.proj)]
    with torch.no_grad():
        branches = []
        for x in xs:
            e = torch.cat([model.user_emb, x])
            layer, total = e, e
            for _ in range(p):
                layer = a @ layer
                total = total + layer
            branches.append(total / (p + 1))
        users, items = model.forward()
        nu = data.n_users
        assert torch.allclose(users, model.fuse_user(torch.cat([b[:nu] for b in branches], 1)))
        assert torch.allclose(items, model.fuse_item(torch.cat([b[nu:] for b in branches], 1)))
        for got, want in zip(model.branches(), branches):
            assert torch.allclose(got, want)
    feats = data.features["image"]
    norm = np.linalg.norm(feats, axis=1, keepdims=True)
    assert np.allclose(model.features[0].numpy(), np.divide(feats, norm, out=np.zeros_like(feats), where=norm > 0))


def test_mmgcl_modality_masking_replaces_the_masked_nodes_inputs():
    data = tiny(3)
    model = build("mmgcl", data).double()
    n = data.n_users + data.n_items
    a = torch.from_numpy(dense_normalized_adjacency(data.train))
    with torch.no_grad():
        br = model.branches()
        masked = torch.zeros(n, dtype=torch.bool)
        masked[[0, 3, 12, 15]] = True
        view = model.masked_view(br, 1, masked)
        assert len(view) == 3
        assert torch.equal(view[0], br[1]) and torch.equal(view[2], br[3]), "unmasked modalities reused"
        x = model.inputs()[2].clone()
        x[masked] = model.mask_table_1[masked]
        layer, total = x, x
        for _ in range(model.cfg.n_layers):
            layer = a @ layer
            total = total + layer
        assert torch.allclose(view[1], total / (model.cfg.n_layers + 1))
        nothing = model.masked_view(br, 1, torch.zeros(n, dtype=torch.bool))
        assert torch.allclose(nothing[1], br[2])


def test_mmgcl_mask_probs_choose_the_masked_modality():
    model = build("mmgcl", tiny(2), "mask_probs=[0,1]", "mask_ratio=1")
    seen = []
    orig = model.masked_view
    model.masked_view = lambda br, m, masked: seen.append((m, bool(masked.all()))) or orig(br, m, masked)
    for seed in range(5):
        torch.manual_seed(seed)
        model.calculate_loss(BATCH)
    assert seen == [(1, True)] * 5
    with pytest.raises(ConfigError, match="mask_probs"):
        build("mmgcl", tiny(2), "mask_probs=[1,1,1]")
    with pytest.raises(ConfigError, match="mask_probs"):
        build("mmgcl", tiny(2), "mask_probs=[0,0]")


def test_mmgcl_perturbed_negatives_and_contrastive_loss_match_bruteforce():
    """Negatives s̃₂ʲ: node j's V2 sample with one modality taken from node d(j), d a derangement of
    the batch; L_ssl = −log h(s₁ⁱ, s₂ⁱ) / (h(s₁ⁱ, s₂ⁱ) + Σ_{j≠i} h(s₁ⁱ, s̃₂ʲ)), checked with loops."""
    torch.manual_seed(0)
    mods = [torch.randn(12, 3, dtype=torch.float64) for _ in range(3)]
    v1 = [torch.randn(12, 3, dtype=torch.float64) for _ in range(3)]
    rows = torch.tensor([1, 4, 5, 8, 11])
    partner = torch.tensor([2, 0, 4, 1, 3])
    got = type(build("mmgcl", tiny(3))).perturbed(mods, rows, 1, partner)
    for k, r in enumerate(rows.tolist()):
        want = torch.cat([mods[0][r], mods[1][rows[partner[k]]], mods[2][r]])
        assert torch.equal(got[k], want)
    anchor = torch.cat([m[rows] for m in v1], 1)
    positive = torch.cat([m[rows] for m in mods], 1)
    assert info_nce_with_negatives(anchor, positive, got, 0.3).item() == pytest.approx(
        loop_info_nce(anchor, positive, got, 0.3, exclude_self=True), rel=1e-9)

    model = build("mmgcl", tiny(3)).double()
    torch.manual_seed(4)
    loss = model.contrast(v1, mods, rows, 2)
    torch.manual_seed(4)
    order = torch.randperm(len(rows))
    d = torch.empty_like(order)
    d[order] = order.roll(-1)
    assert not torch.any(d == torch.arange(len(rows))), "a derangement: no node is its own partner"
    want = loop_info_nce(anchor, positive, model.perturbed(mods, rows, 2, d), model.cfg.ssl_temp, exclude_self=True)
    assert loss.item() == pytest.approx(want, rel=1e-9)
    plain = build("mmgcl", tiny(3), "perturbed_negatives=false").double()
    assert plain.contrast(v1, mods, rows, 2).item() == pytest.approx(
        loop_info_nce(anchor, positive, positive, plain.cfg.ssl_temp, exclude_self=True), rel=1e-9)


def test_mmgcl_augmentations_draw_from_the_global_rng():
    """Same global RNG state → same augmented views and loss (what the trainer checkpoints); another
    state → other views. Scoring draws nothing."""
    model = build("mmgcl", tiny(2), "edge_drop=0.3", "mask_ratio=0.5")
    torch.manual_seed(21)
    state = torch.get_rng_state()
    first = model.calculate_loss(BATCH)["loss"]
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    assert torch.equal(model.calculate_loss(BATCH)["loss"], first)
    assert torch.equal(torch.get_rng_state(), after)
    assert not torch.equal(model.calculate_loss(BATCH)["loss"], first)
    before = torch.get_rng_state()
    with torch.no_grad():
        model.begin_scoring()
        model.score(torch.arange(3))
        model.end_scoring()
    assert torch.equal(torch.get_rng_state(), before)
    rebuilt = build("mmgcl", tiny(2), "edge_drop=0.3", "mask_ratio=0.5")
    assert torch.equal(rebuilt.mask_table_0, model.mask_table_0), "the random tables follow the build seed"


def test_mmgcl_defaults_are_the_released_values():
    c = cfg("mmgcl")
    assert (c.n_layers, c.embedding_size, c.lr, c.weight_decay) == (3, 64, 1e-3, 1e-4)
    assert (c.ssl_weight, c.ssl_temp, c.edge_drop, c.mask_ratio) == (0.4, 0.2, 0.05, 0.05)
    assert c.mask_probs is None and c.perturbed_negatives is True
