"""MMSSL: the official-code quirks (spec §12), the Table 3 switches, the pieces against their definitions,
memory, training. (The package against the frozen dense oracle: test_mmssl_oracle.py.)"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mmbench.models.mmssl.discriminator as discriminator_mod
import mmbench.models.mmssl.model as model_mod
from mmbench.data.dataset import Dataset, to_csr
from mmbench.data.synthetic import make_synthetic
from mmbench.models.base import Batch, get_model_class
from mmbench.models.mmssl.attention import ModalityAttention, OfficialAttention
from mmbench.models.mmssl.contrastive import literal_contrastive, paper_contrastive
from mmbench.models.mmssl.discriminator import inverted_dropout, row_sq_norms, symmetric_product
from mmbench.models.mmssl.graphs import topk_pairs
from mmbench.models.mmssl.real_rows import gumbel_softmax_rows, official_real_rows_factored, sparsify
from mmbench.models.mmssl.relation_rows import masked_rows_dense, masked_rows_factored, rownorm
from mmbench.models.mmssl.sampler import PerUserSampler
from mmbench.runner import model_config, train_one
from mmbench.train.trainer import resolve_device
from model_helpers import interrupted_then_resumed

VARIANTS = ["mmssl", "mmssl-official"]
ABLATIONS = {"mmssl-wo-asl": ("adversarial", False), "mmssl-wo-cl": ("contrastive", False),
             "mmssl-wo-gt": ("gumbel", False), "mmssl-rp-gae": ("generator", "gae")}


def build(name: str, data, *sets: str, seed: int = 0):
    cfg = model_config(name, data.name, "full", None, ["batch_size=32", *sets])
    torch.manual_seed(seed)
    model = get_model_class(name)(data.train_view(), cfg)
    model.train()
    return model


def first_batch(model, data, seed: int = 0) -> Batch:
    return next(model.make_sampler(data.train, model.cfg.batch_size, seed).epoch())


@pytest.fixture(scope="module")
def zero_degree():
    """Synthetic data where user 0 and item 0 have no training interactions."""
    base = make_synthetic(n_users=60, n_items=50, seed=3)
    tr = base.train.tocoo()
    keep = (tr.row != 0) & (tr.col != 0)
    train = to_csr(tr.row[keep], tr.col[keep], base.n_users, base.n_items)
    return Dataset("synthetic", base.n_users, base.n_items, train, base.valid, base.test, base.features)


# --------------------------------------------------------------------------- registry and switches

def test_ablations_flip_exactly_one_switch():
    base = get_model_class("mmssl").defaults
    for name, (key, value) in ABLATIONS.items():
        d = get_model_class(name).defaults
        assert d[key] == value and base[key] != value
        assert {k for k in d if d[k] != base[k]} == {key}
        assert get_model_class(name).presets == get_model_class("mmssl").presets


def test_switches_are_config_keys_on_any_variant(synthetic):
    m = build("mmssl-official", synthetic, "adversarial=false", "contrastive=false")
    assert m.disc is None and len(m.configure_optimizers()) == 1
    losses = m.train_step(first_batch(m, synthetic), m.configure_optimizers())
    assert "adv" not in losses and "cl" not in losses and "loss_d" not in losses
    g = build("mmssl", synthetic, "generator=gae")
    assert g.disc is None
    assert "adv" in g.train_step(first_batch(g, synthetic), g.configure_optimizers())
    with pytest.raises(Exception):
        build("mmssl", synthetic, "generator=vae")


def test_official_presets_and_optimisers(synthetic):
    assert model_config("mmssl-official", "tiktok").lr == 5.4e-4
    tk = model_config("mmssl-official", "tiktok")
    assert (tk.g_rate, tk.gumbel_tau, tk.topk_rate, tk.rebuild_every) == (1.8e-3, 0.002, 0.01, 1)
    ar = model_config("mmssl-official", "allrecipes")
    assert (ar.d_lr, ar.eta, ar.rebuild_every, ar.cl_tau, ar.topk_rate) == (2.5e-4, 0.34, 2, 0.3, 0.02)
    sp_ = model_config("mmssl-official", "sports")
    assert (sp_.lr, sp_.rebuild_every, sp_.topk_rate) == (5e-4, 2, 0.02)
    assert model_config("mmssl-official", "baby").topk_rate == 1e-4
    assert int(6710 * tk.topk_rate) == 67  # k = ⌊I·rate⌋ on TikTok
    m = build("mmssl-official", synthetic)
    opt_g, opt_d = m.configure_optimizers()
    assert isinstance(opt_g, torch.optim.AdamW) and opt_g.defaults["weight_decay"] == 0.01
    assert type(opt_d) is torch.optim.Adam and opt_d.defaults["betas"] == (0.5, 0.9)
    assert opt_d.defaults["weight_decay"] == 0 and opt_d.defaults["lr"] == 3e-4
    assert isinstance(m.make_sampler(synthetic.train, 32, 0), PerUserSampler)


# --------------------------------------------------------------------------- official quirks (spec §12)

def _official_attention_as_coded(stack, wq, wcat, h):
    """The code's Eq. 9, step by step (spec §2.4): W_q queries, 'keys' reshaped out of the permuted
    queries, softmax over key modalities, values indexed by the QUERY modality, concat, W_cat."""
    m, n, d = stack.shape
    dh = d // h
    q = (stack @ wq).view(m, n, h, dh).permute(2, 0, 1, 3).contiguous()  # [H, M, N, dh]
    k = q.view(m, n, h, dh).permute(2, 0, 1, 3)
    alpha = torch.softmax(torch.einsum("hqnc,hknc->hqkn", q, k) / math.sqrt(dh), dim=2)
    out = torch.einsum("hqkn,qnd->hqnd", alpha, stack)
    return (out.permute(1, 2, 0, 3).reshape(m, n, h * d) @ wcat).mean(0)


def test_official_attention_collapses_to_a_linear_map():
    torch.manual_seed(0)
    att = OfficialAttention(16, 4)
    stack = torch.randn(2, 30, 16)
    literal = _official_attention_as_coded(stack, att.wq, att.wcat, 4)
    collapsed = stack.mean(0) @ att.wcat.view(4, 16, 16).sum(0)
    assert torch.allclose(literal, collapsed, atol=1e-5)
    assert torch.allclose(att(stack), collapsed, atol=1e-6)
    literal.pow(2).sum().backward()
    assert att.wq.grad.norm() < 1e-5 * att.wcat.grad.norm()
    # the paper's attention really attends: W_q and W_k matter
    torch.manual_seed(0)
    paper = ModalityAttention(16, 4)
    paper(stack).pow(2).sum().backward()
    assert paper.wq.grad.norm() > 1e-3 * paper.wcat.grad.norm()


def test_topk_pairing_bug():
    users = torch.tensor([10, 11, 12])
    top = torch.tensor([[100, 101], [110, 111], [120, 121]])
    u, i = topk_pairs(users, top, official_pairing=True)
    assert list(zip(u.tolist(), i.tolist())) == [(10, 100), (11, 101), (12, 110), (10, 111), (11, 120), (12, 121)]
    u, i = topk_pairs(users, top, official_pairing=False)
    assert list(zip(u.tolist(), i.tolist())) == [(10, 100), (10, 101), (11, 110), (11, 111), (12, 120), (12, 121)]


def _run_epoch_tracking_graph(model, data, epochs: int):
    """Per epoch, per batch: is the semantic graph in effect during that batch non-empty?"""
    opts = model.configure_optimizers()
    sampler = model.make_sampler(data.train, model.cfg.batch_size, 0)
    seen = []
    for epoch in range(1, epochs + 1):
        model.on_epoch_start(epoch)
        row = []
        for batch in sampler.epoch():
            row.append(not model.sem_empty(0))
            model.train_step(batch, opts)
        seen.append(row)
    return seen, len(sampler)


def test_official_graph_schedule_period_1(synthetic):
    m = build("mmssl-official", synthetic, "topk_rate=0.03", "rebuild_every=1", "batch_size=16")
    assert m.topk() == int(80 * 0.03) == 2
    seen, n = _run_epoch_tracking_graph(m, synthetic, 2)
    assert n >= 5
    assert seen[0][:3] == [True, True, True] and not any(seen[0][3:])  # training graph, then batch 0's pairs
    assert seen[1] == [False, False, True] + [False] * (n - 3)  # non-empty only for batch idx 2
    assert m.sem_empty(0)  # ... and empty at evaluation


def test_official_graph_schedule_period_2(synthetic):
    m = build("mmssl-official", synthetic, "topk_rate=0.03", "rebuild_every=2", "batch_size=16")
    opts = m.configure_optimizers()
    batches = list(m.make_sampler(synthetic.train, 16, 0).epoch())
    m.on_epoch_start(1)
    sizes = []
    for b in batches[:5]:
        m.train_step(b, opts)
        sizes.append(len(m.sem_coo[0][0]))
    k = 2
    assert sizes[2] == 2 * 16 * k  # the first rebuild (idx 2) uses the pairs of batches 0 and 1
    assert sizes[4] == 16 * k  # later rebuilds (idx 4, 6, ...) one batch's pairs: never empty


def test_official_real_rows_are_near_pure_self_distillation():
    torch.manual_seed(0)
    n_items, d = 6710, 64
    h_u, h_i = torch.randn(1, d), torch.randn(n_items, d)
    cols = torch.tensor([3, 50, 700, 2000, 6000])
    mask = torch.zeros(1, n_items)
    mask[0, cols] = 1.0
    gamma = gumbel_softmax_rows(mask, 1e-5, 0.005)
    real = rownorm(gamma + 100.0 * masked_rows_dense(h_u, h_i, mask))
    pos_vals = real[0, cols]
    assert torch.allclose(pos_vals, torch.full((5,), 1 / (100 * 5)), rtol=0.05)  # ≈ 2e-3
    share = float(pos_vals.pow(2).sum() / real.pow(2).sum())
    assert 1e-5 < share < 3e-5  # the observed interactions hold ≈ 2e-5 of the squared norm
    assert float(pos_vals.max()) < float(real[0].abs().mean()) / 2  # smaller than a typical entry
    # the factored form (what the model computes) gives the same row
    pos = (torch.zeros(5, dtype=torch.long), cols)
    fact = official_real_rows_factored(masked_rows_factored(h_u, h_i, pos), sparsify(gamma, 1e-20), None, 100.0, mask)
    assert torch.allclose(fact.dense(), real, atol=1e-6)


def test_official_discriminator_identity_activation_and_range(synthetic):
    m = build("mmssl-official", synthetic)
    z = torch.randn(40, 7)
    assert torch.equal(m.disc.act(z), z)  # LeakyReLU(negative_slope=True) is the identity
    out = m.disc(torch.randn(64, synthetic.n_items) * 50)
    assert out.shape == (64,) and (out > 0).all() and (out < 100).all() and out.max() > 1
    p = build("mmssl", synthetic)
    assert not torch.equal(p.disc.act(z), z) and (p.disc(torch.randn(64, synthetic.n_items)) < 1).all()
    w1 = m.disc.w1t
    assert w1.shape == (synthetic.n_items, synthetic.n_items // 4)
    assert abs(float(w1.detach().std()) - math.sqrt(2 / synthetic.n_items)) < 0.2 * math.sqrt(2 / synthetic.n_items)


def test_official_gp_weight_is_0_3_times_gp_rate(synthetic, monkeypatch):
    monkeypatch.setattr(discriminator_mod, "gradient_penalty", lambda sq: sq.new_ones(()))
    m = build("mmssl-official", synthetic)
    b = first_batch(m, synthetic)
    pos, mask = m.batch_context(b)
    losses = {}
    for rate in (1.0, 2.0):
        m.cfg["gp_rate"] = rate
        torch.manual_seed(1)
        losses[rate] = m.discriminator_loss(b, pos, mask)
    assert float(losses[1.0]["gp"]) == pytest.approx(0.3)
    assert float((losses[2.0]["loss_d"] - losses[1.0]["loss_d"]).detach()) == pytest.approx(0.3, rel=1e-4)


def test_empty_semantic_graph_gives_constant_contrastive_and_id_embeddings(synthetic, monkeypatch):
    for seed in (0, 1):
        m = build("mmssl-official", synthetic, seed=seed)
        empty = np.zeros(0, np.int64)
        for k in range(m.n_modal):
            m.set_semantic_graph(k, empty, empty, np.zeros(0, np.float32))
        seen = {}
        real_propagate = m.propagate
        monkeypatch.setattr(m, "propagate", lambda u0, i0: seen.setdefault("u0", (u0, i0)) and real_propagate(u0, i0))
        b = first_batch(m, synthetic)
        losses = m.calculate_loss(b)
        u0, i0 = seen["u0"]
        assert torch.equal(u0, m.user_emb) and torch.equal(i0, m.item_emb)  # U⁰ = E_U exactly
        assert float(losses["cl"]) == pytest.approx(2 * math.log(2 * 32 - 1), rel=1e-6)


def test_official_gnn_softmax_last_layer_and_mean_over_layers(zero_degree):
    m = build("mmssl-official", zero_degree)
    u0, i0 = torch.randn(zero_degree.n_users, 64), torch.randn(zero_degree.n_items, 64)
    eu, ei = m.propagate(u0, i0)
    # user 0 has no training items: layers 1 and 2 are 0 and softmax(0) = 1/64; mean over L+1 = 3
    assert torch.allclose(eu[0], (u0[0] + 0 + 1 / 64) / 3, atol=1e-6)
    assert torch.allclose(ei[0], (i0[0] + 0 + 1 / 64) / 3, atol=1e-6)
    p = build("mmssl", zero_degree)
    eu, _ = p.propagate(u0, i0)
    assert torch.allclose(eu[0], u0[0] / 3, atol=1e-6)  # paper: no softmax


# --------------------------------------------------------------------------- exact speed-ups

def test_gram_and_direct_gradient_penalty_routes_agree():
    torch.manual_seed(0)
    w = torch.randn(300, 40, requires_grad=True)
    for n_rows in (20, 64):  # direct route (40 >= 20) and Gram route (40 < 64)
        delta = torch.randn(n_rows, 40, requires_grad=True)
        c = torch.rand(n_rows)
        got = row_sq_norms(delta, w)
        ref = (delta @ w.T).pow(2).sum(1)
        assert torch.allclose(got, ref, rtol=1e-5)
        ga = torch.autograd.grad((got * c).sum(), (delta, w))
        gb = torch.autograd.grad((ref * c).sum(), (delta, w))
        for a, b in zip(ga, gb):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    big = torch.randn(700, 300)  # the symmetric strip-wise products: a Gram, and δᵀ diag(c) δ
    assert torch.allclose(symmetric_product(big, big), big.T @ big, rtol=1e-5, atol=1e-3)
    c = torch.randn(700, 1)
    assert torch.allclose(symmetric_product(big * c, big), (big * c).T @ big, rtol=1e-5, atol=1e-3)


# --------------------------------------------------------------------------- robustness

@pytest.mark.parametrize("name", VARIANTS)
def test_zero_degree_users_and_items_never_nan(zero_degree, name):
    m = build(name, zero_degree, "batch_size=16", "topk_rate=0.05")
    opts = m.configure_optimizers()
    for b in list(m.make_sampler(zero_degree.train, 16, 0).epoch())[:4]:
        losses = m.train_step(b, opts)
        assert all(math.isfinite(v) for v in losses.values()), losses
    assert all(torch.isfinite(p).all() for p in m.parameters())
    m.eval()
    with torch.no_grad():
        m.begin_scoring()
        scores = m.score(torch.arange(zero_degree.n_users))
        m.end_scoring()
    assert scores.shape == (zero_degree.n_users, zero_degree.n_items) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_deterministic_under_a_seed(synthetic, name):
    runs = []
    for _ in range(2):
        m = build(name, synthetic, seed=4)
        opts = m.configure_optimizers()
        sampler = m.make_sampler(synthetic.train, 32, 9)
        torch.manual_seed(9)
        m.on_epoch_start(1)
        hist = [m.train_step(b, opts) for b in list(sampler.epoch())[:3]]
        with torch.no_grad():
            m.eval()
            m.begin_scoring()
            runs.append((hist, m.score(torch.arange(10))))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


class _ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor) and o.layout == torch.strided:  # dense tensors only
                self.shapes.add(tuple(o.shape))
        return out


@pytest.mark.parametrize("name", VARIANTS)
def test_no_users_by_items_or_items_by_items_tensor(name, monkeypatch):
    data = make_synthetic(n_users=150, n_items=90, seed=1)
    monkeypatch.setattr(model_mod, "REBUILD_BLOCK", 40)
    m = build(name, data, "topk_rate=0.05", "batch_size=24")
    opts = m.configure_optimizers()
    batches = list(m.make_sampler(data.train, 24, 0).epoch())[:3]
    with _ShapeRecorder() as rec:
        m.on_epoch_start(1)
        m._graph_fresh = False
        m.on_epoch_start(2)  # the paper variant's all-user rebuild
        for b in batches:
            m.train_step(b, opts)
        with torch.no_grad():
            m.begin_scoring()
            m.score(torch.arange(20))
    big = {s for s in rec.shapes if len(s) == 2 and (set(s) == {150, 90} or s == (90, 90))}
    assert not big, big
    assert (48, 90) not in rec.shapes  # D never sees an [M·B, I] block of rows: they stay factored


# --------------------------------------------------------------------------- sampler and state

def test_per_user_sampler(synthetic):
    s = PerUserSampler(synthetic.train, 25, seed=3)
    assert len(s) == synthetic.train.nnz // 25 + 1
    train = synthetic.train.tolil()
    batches = list(s.epoch())
    assert len(batches) == len(s)
    for b in batches:
        u = b.users.numpy()
        assert len(set(u)) == len(u) == 25  # distinct users within a batch
        assert all(train[x, p] for x, p in zip(u, b.pos.numpy()))
        assert not any(train[x, n] for x, n in zip(u, b.neg.numpy()))
    state = s.state_dict()
    nxt = s.sample()
    s2 = PerUserSampler(synthetic.train, 25, seed=99)
    s2.load_state_dict(state)
    again = s2.sample()
    assert torch.equal(nxt.users, again.users) and torch.equal(nxt.neg, again.neg)
    big = PerUserSampler(synthetic.train, 500, seed=0)  # larger than the user set: with replacement
    assert len(big.sample().users) == 500


def test_official_extra_state_round_trip(synthetic):
    m = build("mmssl-official", synthetic, "topk_rate=0.05", "rebuild_every=3")
    opts = m.configure_optimizers()
    m.on_epoch_start(1)
    for b in list(m.make_sampler(synthetic.train, 32, 0).epoch())[:2]:
        m.train_step(b, opts)
    state = m.extra_state()
    other = build("mmssl-official", synthetic, "topk_rate=0.05", "rebuild_every=3")
    other.load_extra_state(state)
    assert other.batch_idx == 2 and len(other.pending[0]) == 2
    for a, b in zip(m.sem_coo[0], other.sem_coo[0]):
        assert np.array_equal(a, b)
    probe = torch.randn(synthetic.n_items, 3)
    assert torch.equal(m.sem(0)[0] @ probe, other.sem(0)[0] @ probe)


def test_paper_graph_keeps_every_user_with_items_populated(zero_degree):
    m = build("mmssl", zero_degree, "topk_rate=0.06")
    k = m.topk()
    deg = np.bincount(m.sem_coo[0][0], minlength=zero_degree.n_users)
    has_items = np.diff(zero_degree.train.indptr) > 0
    assert (deg[has_items] == k).all() and (deg[~has_items] == 0).all()
    rows, cols = m.sem_coo[0][0], m.sem_coo[0][1]
    ref = torch.topk(torch.nn.functional.normalize(m.modality_features(False)[0][0][5:6]) @
                     torch.nn.functional.normalize(m.modality_features(False)[0][1]).T, k).indices
    assert set(cols[rows == 5].tolist()) == set(ref[0].tolist())  # each user with ITS OWN top-k


@pytest.mark.parametrize("name", VARIANTS)
def test_resume_after_interruption_gives_the_same_result(synthetic, tmp_path, monkeypatch, name):

    cfg = model_config(name, "synthetic", "full", None,
                       ["epochs=4", "patience=100", "batch_size=32", "checkpoint_every=0", "topk_rate=0.05",
                        "rebuild_every=3"]
                       if name == "mmssl-official" else ["epochs=4", "patience=100", "batch_size=32", "checkpoint_every=0"])
    full = train_one(name, synthetic, cfg, 3, resolve_device("cpu"), tmp_path / "full", progress=False)
    resumed = interrupted_then_resumed(monkeypatch, lambda: train_one(
        name, synthetic, cfg, 3, resolve_device("cpu"), tmp_path / "resumed", progress=False))
    assert [h["losses"] for h in resumed["history"]] == [h["losses"] for h in full["history"]]
    assert resumed["test"] == full["test"]


# --------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("name", VARIANTS)
def test_short_training_beats_random(name):
    data = make_synthetic(n_users=200, n_items=120, seed=2, feature_noise=0.3)
    cfg = model_config(name, data.name, "full", None,
                       ["epochs=6", "patience=6", "batch_size=64", "lr=0.01", "topk_rate=0.05"])
    rec = train_one(name, data, cfg, 1, resolve_device("cpu"), None, progress=False)
    train_deg = np.diff(data.train.indptr)
    test_users = np.flatnonzero(np.diff(data.test.indptr) > 0)
    random_recall = float(np.mean(20 / (data.n_items - train_deg[test_users])))
    assert rec["test"]["recall@20"] > 1.5 * random_recall, (rec["test"]["recall@20"], random_recall)


def _contrastive_by_definition(h, modal, tau):
    """Eq. 11 written per user: −log(e^{s(h_u, e_u^m)} / Σ over e^m_v (all v) and e^{m'}_v (m' ≠ m, all v)
    scored against e_u^m), mean over users, summed over modalities."""
    q = rownorm(h)
    keys = [rownorm(e) for e in modal]
    total = 0.0
    for m, k in enumerate(keys):
        for u in range(len(h)):
            logits = [q[u] @ k.T] + [k[u] @ keys[o].T for o in range(len(keys)) if o != m]
            logits = torch.cat(logits) / tau
            total = total + (torch.logsumexp(logits, 0) - (q[u] @ k[u]) / tau) / len(h)
    return total


@pytest.mark.parametrize("n_mod", [1, 2, 3])
@pytest.mark.parametrize("tau", [0.085, 0.01])  # the shared fixed shift, and the small-τ fallback
def test_paper_contrastive_matches_its_definition_in_value_and_gradient(n_mod, tau):
    gen = torch.Generator().manual_seed(n_mod)
    h = torch.randn(9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    modal = [torch.randn(9, 6, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(n_mod)]
    fast = paper_contrastive(h, modal, tau)
    slow = _contrastive_by_definition(h, modal, tau)
    g_fast = torch.autograd.grad(fast, [h, *modal])
    g_slow = torch.autograd.grad(slow, [h, *modal])
    assert float(fast.detach()) == pytest.approx(float(slow.detach()), rel=1e-9)
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


def _literal_by_definition(h, modal, tau):
    """Eq. 11 exactly as printed, per user: the denominator Σ_{u'∈batch} (exp s(h_u, e_u^m) +
    Σ_{m'≠m} exp s(e_u^m, e_u^{m'})) — its summand never mentions u'."""
    q = rownorm(h)
    keys = [rownorm(e) for e in modal]
    total = 0.0
    for m, k in enumerate(keys):
        for u in range(len(h)):
            pos = torch.exp(q[u] @ k[u] / tau)
            inner = pos + sum(torch.exp(k[u] @ keys[o][u] / tau) for o in range(len(keys)) if o != m)
            denom = sum(inner for _ in range(len(h)))  # Σ over u' of a term without u'
            total = total - torch.log(pos / denom) / len(h)
    return total


@pytest.mark.parametrize("n_mod", [1, 2, 3])
def test_literal_eq11_reading_matches_the_printed_formula(n_mod):
    gen = torch.Generator().manual_seed(10 + n_mod)
    h = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    modal = [torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(n_mod)]
    fast, slow = literal_contrastive(h, modal, 0.085), _literal_by_definition(h, modal, 0.085)
    assert float(fast.detach()) == pytest.approx(float(slow.detach()), rel=1e-9)
    for a, b in zip(torch.autograd.grad(fast, [h, *modal]), torch.autograd.grad(slow, [h, *modal])):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)
    if n_mod == 1:  # no other modality: only the positive is left, so no gradient at all
        assert all(float(g.abs().max()) < 1e-9 for g in torch.autograd.grad(literal_contrastive(h, modal, 0.085),
                                                                             [h, *modal]))


def test_cl_reading_switches_the_contrastive_loss(synthetic):
    batch = Batch(torch.arange(8), torch.arange(8), torch.arange(8, 16))
    values = {}
    for reading in ("other_users", "literal"):
        model = build("mmssl", synthetic, f"cl_reading={reading}", "topk_rate=0.05")
        with torch.no_grad():
            enc = model.encode(dropout=False)
            values[reading] = float(model.contrastive_loss(enc, batch.users))
            h = enc.h_u[batch.users]
            modal = [e[batch.users] for e in enc.modal_u]
        fn = literal_contrastive if reading == "literal" else paper_contrastive
        assert values[reading] == pytest.approx(float(fn(h, modal, model.cfg.cl_tau)), rel=1e-6)
    assert values["literal"] != pytest.approx(values["other_users"])


def test_l2_reading_explicit_puts_lambda4_into_the_loss_and_not_the_optimiser(synthetic):
    decoupled = build("mmssl", synthetic)
    explicit = build("mmssl", synthetic, "l2_reading=explicit")
    assert decoupled.configure_optimizers()[0].param_groups[0]["weight_decay"] == 0.01
    assert explicit.configure_optimizers()[0].param_groups[0]["weight_decay"] == 0.0
    batch = Batch(torch.arange(8), torch.arange(8), torch.arange(8, 16))
    torch.manual_seed(0)
    losses = explicit.calculate_loss(batch)
    want = 0.01 * sum(float(p.detach().pow(2).sum()) for n, p in explicit.named_parameters()
                      if not n.startswith("disc."))
    assert float(losses["l2"].detach()) == pytest.approx(want, rel=1e-5)
    assert "l2" not in decoupled.calculate_loss(batch)
    assert get_model_class("mmssl-official").defaults.get("l2_reading") is None  # the code has its own terms


def test_inverted_dropout_keeps_the_expectation_and_the_drop_rate():
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    out = inverted_dropout(x, 0.31, True)
    assert abs(float((out == 0).float().mean()) - 0.31) < 0.005
    assert float(out.mean()) == pytest.approx(1.0, abs=0.01)
    assert torch.equal(inverted_dropout(x, 0.31, False), x)
    assert torch.equal(inverted_dropout(x, 1.0, True), torch.zeros_like(x))


def test_first_layers_equal_the_dense_rows_times_w_in_value_and_gradient():
    """The factored first layer (one node: low-rank blocks sharing Y, sparse entries, a dense fallback)
    against `Rows.dense() @ W`, in float64, for every input that carries a gradient."""
    from mmbench.models.mmssl.relation_rows import Rows, first_layers

    gen = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    n_items, d, h = 40, 5, 7
    y1, y2, w = t(n_items, d), t(n_items, d), t(n_items, h)
    pos = (torch.tensor([0, 0, 2, 5]), torch.tensor([3, 9, 1, 39]))
    extra = (torch.tensor([1, 4]), torch.tensor([7, 7]), t(2))
    blocks = [Rows(t(6, d), y1, t(6), pos=pos, extra=extra), Rows(t(3, d), y2, t(3)),
              Rows(t(4, d), y1, t(4), extra_dense=t(4, n_items))]
    got = first_layers(blocks, w)
    ref = torch.cat([b.dense() for b in blocks]) @ w
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10)
    leaves = [w, y1, y2, extra[2]] + [x for b in blocks for x in (b.x, b.scale)] + [blocks[2].extra_dense]
    probe = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((got * probe).sum(), leaves), torch.autograd.grad((ref * probe).sum(), leaves)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)
