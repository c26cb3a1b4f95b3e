"""The frozen dense oracle (tests/mmssl_oracle.py) equals today's MMSSL: `fast=false` to float rounding
(in practice bit for bit), `fast=true` to the relative 1e-4 of benchmarks/mmssl_speed.py."""
from __future__ import annotations

import pytest
import torch

from mmbench.data.synthetic import make_synthetic
from mmssl_oracle import oracle_losses
from test_mmssl import build

TIGHT = 1e-9  # oracle vs fast=false: the same operations in the same order (bit for bit here)
TOL = 1e-4  # oracle vs fast=true, as benchmarks/mmssl_speed.py
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
def test_oracle_equals_dense_and_fast(datasets, name, n_modal, sets):
    data = datasets[n_modal]
    fast = build(name, data, "fast=true", *sets)
    dense = build(name, data, "fast=false", *sets)
    opts = fast.configure_optimizers()
    batches = list(fast.make_sampler(data.train, 32, 0).epoch())
    fast.on_epoch_start(1)
    for b in batches[:3]:  # away from the initial state, and through the official graph schedule
        fast.train_step(b, opts)
    dense.load_state_dict(fast.state_dict())
    dense.load_extra_state(fast.extra_state())
    batch = batches[3]

    ref_dense = model_losses(dense, batch, 5)
    got = oracle_losses(dense, batch, 5)
    errors, worst_dense = mismatches(got, ref_dense, TIGHT, rounding_exempt=False)
    assert not errors, f"oracle vs fast=false (worst rel {worst_dense:.1e}): {errors}"

    ref_fast = model_losses(fast, batch, 5)
    got_fast_state = oracle_losses(fast, batch, 5)  # the oracle on the fast model's own state
    errors, worst_fast = mismatches(ref_fast, got_fast_state, TOL, rounding_exempt=True)
    assert not errors, f"fast=true vs oracle (worst rel {worst_fast:.1e}): {errors}"
    print(f"{name} {n_modal} modalities {sets}: oracle vs dense worst rel {worst_dense:.1e}, "
          f"fast vs oracle worst rel {worst_fast:.1e}")


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
def test_oracle_train_step_equals_dense_train_step(synthetic, name):
    """`OracleMMSSL.train_step` (used for timing) = the model's fast=false step: same parameters after."""
    from types import SimpleNamespace

    from mmssl_oracle import OracleMMSSL

    sets = ["topk_rate=0.05"] if name == "mmssl-official" else []
    dense = build(name, synthetic, "fast=false", *sets)
    ref = build(name, synthetic, "fast=false", *sets)
    ref.load_state_dict(dense.state_dict())
    ref.load_extra_state(dense.extra_state())
    oracle = OracleMMSSL(ref)
    opt_dense, opt_ref = dense.configure_optimizers(), ref.configure_optimizers()
    batches = list(dense.make_sampler(synthetic.train, 32, 0).epoch())[:3]
    for m in (dense, ref):
        m.on_epoch_start(1)

    def schedule(batch, feats, pos, mask):
        ref.after_generator_step(batch, SimpleNamespace(feats=feats), pos, mask)

    for b in batches:
        torch.manual_seed(3)
        out_dense = dense.train_step(b, opt_dense)
        torch.manual_seed(3)
        out_ref = oracle.train_step(b, opt_ref, schedule)
        assert out_dense == out_ref
    for (n, p), q in zip(dense.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n
