"""The MMSSL package computes what the frozen dense oracle (tests/mmssl_oracle.py) computes: losses and
gradients to the relative 1e-4 of benchmarks/mmssl_speed.py, for both variants, 1–3 modalities, the
ablations and readings. (The oracle was bit-identical to the package's former `fast=false` path when it was
frozen, commit 3ab6857.)"""
from __future__ import annotations

import pytest
import torch

from mmbench.data.synthetic import make_synthetic
from mmssl_oracle import oracle_losses
from test_mmssl import build

TOL = 1e-4  # as benchmarks/mmssl_speed.py
MODALITIES = {1: {"image": 32}, 2: {"image": 32, "text": 16}, 3: {"image": 32, "text": 16, "audio": 8}}


@pytest.fixture(scope="module")
def datasets(synthetic):
    out = {2: synthetic}  # conftest's synthetic data (two modalities)
    for n in (1, 3):
        out[n] = make_synthetic(n_users=120, n_items=80, seed=0, modalities=MODALITIES[n])
    return out


def model_losses(model, batch, seed: int):
    """The model's own discriminator and generator passes, split as `oracle_losses` returns them."""
    torch.manual_seed(seed)
    pos, mask = model.batch_context(batch)
    model.zero_grad(set_to_none=True)
    d_losses, d_grads = {}, {}
    if model.disc is not None:
        d = model.discriminator_loss(batch, pos, mask)
        d["loss_d"].backward()
        d_losses = {k: float(v.detach()) for k, v in d.items()}
        d_grads = {n: p.grad.clone() for n, p in model.named_parameters()
                   if n.startswith("disc.") and p.grad is not None}
        model.zero_grad(set_to_none=True)
    g, _ = model.generator_losses(batch, pos, mask)
    g["loss"].backward()
    g_losses = {k: float(v.detach()) for k, v in g.items()}
    g_grads = {n: p.grad.clone() for n, p in model.named_parameters()
               if not n.startswith("disc.") and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return d_losses, d_grads, g_losses, g_grads


def mismatches(got, ref, tol: float, rounding_exempt: bool) -> tuple[list[str], float]:
    """Relative differences of losses and gradients (both dicts of each kind must have the same keys).
    `rounding_exempt`: a gradient that is at rounding level on both sides (|diff| ≤ 1e-6 × the largest
    gradient of its group, discriminator or generator) is skipped — the rule of mmssl_speed.compare
    (W_q of the official attention, a bias feeding BatchNorm: zero in exact arithmetic)."""
    errors, worst = [], 0.0
    (dl, dg, gl, gg), (rdl, rdg, rgl, rgg) = got, ref
    for a, b in ((dl, rdl), (gl, rgl)):
        if a.keys() != b.keys():
            errors.append(f"loss keys {sorted(a)} != {sorted(b)}")
            continue
        for k in b:
            rel = abs(a[k] - b[k]) / max(abs(b[k]), 1e-12)
            worst = max(worst, rel)
            if rel > tol:
                errors.append(f"loss {k}: {a[k]!r} vs {b[k]!r} (rel {rel:.1e})")
    for a, b in ((dg, rdg), (gg, rgg)):
        scale = max([float(x.norm()) for x in b.values()] + [0.0])
        for name in sorted(set(a) | set(b)):
            x, y = a.get(name), b.get(name)
            x = torch.zeros_like(y) if x is None else x
            y = torch.zeros_like(x) if y is None else y
            diff = float((x - y).norm())
            rel = diff / max(float(x.norm()), float(y.norm()), 1e-30)
            if rel > tol and rounding_exempt and diff <= 1e-6 * scale:
                continue
            worst = max(worst, rel)
            if rel > tol:
                errors.append(f"grad {name}: rel {rel:.1e}")
    return errors, worst


CASES = [
    ("mmssl", 1, []), ("mmssl", 2, []), ("mmssl", 3, []),
    ("mmssl-official", 1, ["topk_rate=0.05"]), ("mmssl-official", 2, []),  # default rate: empty graph
    ("mmssl-official", 2, ["topk_rate=0.05", "rebuild_every=2"]), ("mmssl-official", 3, ["topk_rate=0.05"]),
    # the switches and readings, two modalities
    ("mmssl", 2, ["cl_reading=literal", "l2_reading=explicit"]), ("mmssl", 2, ["gumbel_tau=1.0"]),
    ("mmssl-wo-gt", 2, []), ("mmssl-rp-gae", 2, []), ("mmssl-wo-cl", 2, []), ("mmssl-wo-asl", 2, []),
    ("mmssl-official", 2, ["gumbel=false", "topk_rate=0.05"]),
]


@pytest.mark.parametrize("name,n_modal,sets", CASES, ids=[f"{n}-{m}mod-{'-'.join(s) or 'default'}"
                                                          for n, m, s in CASES])
def test_package_equals_the_oracle(datasets, name, n_modal, sets):
    data = datasets[n_modal]
    model = build(name, data, *sets)
    opts = model.configure_optimizers()
    batches = list(model.make_sampler(data.train, 32, 0).epoch())
    model.on_epoch_start(1)
    for b in batches[:3]:  # away from the initial state, and through the official graph schedule
        model.train_step(b, opts)
    batch = batches[3]
    got = model_losses(model, batch, 5)
    ref = oracle_losses(model, batch, 5)  # the oracle on the model's own state
    errors, worst = mismatches(got, ref, TOL, rounding_exempt=True)
    assert not errors, f"package vs oracle (worst rel {worst:.1e}): {errors}"
    print(f"{name} {n_modal} modalities {sets}: package vs oracle worst rel {worst:.1e}")


def test_oracle_is_self_contained():
    """The oracle imports nothing of the model it is the reference for (only torch and generic mmbench)."""
    import ast

    import mmssl_oracle

    tree = ast.parse(open(mmssl_oracle.__file__, encoding="utf-8").read())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module or "")
    assert not [m for m in modules if "mmssl" in m], modules
    assert modules <= {"__future__", "math", "dataclasses", "typing", "torch", "torch.nn.functional",
                       "mmbench.models.graph"}, modules


@pytest.mark.parametrize("name", ["mmssl", "mmssl-official"])
def test_oracle_train_step_follows_the_package(synthetic, name):
    """`OracleMMSSL.train_step` (what benchmarks/mmssl_speed.py times) trains like the package: the same
    losses step after step and the same parameters after three steps, to float rounding amplified by Adam
    (parameters whose gradient is zero in exact arithmetic get rounding noise, which Adam turns into
    lr-sized steps in either direction: W_q of the official attention, and in the official D, whose
    activation is the identity, the biases that feed a BatchNorm; they are left out)."""
    from types import SimpleNamespace

    from mmssl_oracle import OracleMMSSL

    sets = ["topk_rate=0.05"] if name == "mmssl-official" else []
    model = build(name, synthetic, *sets)
    ref = build(name, synthetic, *sets)
    ref.load_state_dict(model.state_dict())
    ref.load_extra_state(model.extra_state())
    oracle = OracleMMSSL(ref)
    opt_model, opt_ref = model.configure_optimizers(), ref.configure_optimizers()
    batches = list(model.make_sampler(synthetic.train, 32, 0).epoch())[:3]
    for m in (model, ref):
        m.on_epoch_start(1)

    def schedule(batch, feats, pos, mask):
        ref.after_generator_step(batch, SimpleNamespace(feats=feats), pos, mask)

    for b in batches:
        torch.manual_seed(3)
        out_model = model.train_step(b, opt_model)
        torch.manual_seed(3)
        out_ref = oracle.train_step(b, opt_ref, schedule)
        assert out_model.keys() == out_ref.keys()
        for k in out_ref:
            assert out_model[k] == pytest.approx(out_ref[k], rel=1e-4, abs=1e-6), k
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        if name == "mmssl-official" and n in ("attention.wq", "disc.b1", "disc.l2.bias"):
            continue
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), n
