"""benchmarks/mmssl_floor.py bounds MMSSL's speed-up by the step's own products, draws and optimiser
updates: what it records and replays must be exactly what the step ran."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from test_mmssl import build, first_batch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mmssl_floor.py"


@pytest.fixture(scope="module")
def floor():
    spec = importlib.util.spec_from_file_location("mmssl_floor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_products_are_recorded_with_their_layout_and_flops_and_draws_are_counted(floor):
    a, b = torch.randn(6, 5), torch.randn(7, 5).T  # b is a transposed view
    bias = torch.randn(7)
    sparse = torch.randn(4, 6).relu().to_sparse_csr()
    log = floor.StepLog()
    with log:
        a @ b
        a @ b
        torch.addmm(bias, a, b)
        torch.bmm(torch.randn(3, 2, 4), torch.randn(3, 4, 5))
        sparse @ a  # CSR: not a dense product, not recorded
        torch.rand(10, 3)
    got = {(func, spec[floor.PRODUCTS[func][0]][0], spec[floor.PRODUCTS[func][1]][1]): n
           for (func, spec, _), n in log.products.items()}
    aten = torch.ops.aten
    assert got == {(aten.mm.default, (6, 5), (1, 5)): 2, (aten.addmm.default, (6, 5), (1, 5)): 1,
                   (aten.bmm.default, (3, 2, 4), (20, 5, 1)): 1}
    assert log.draws >= 30 and log.seconds["draws"] > 0
    meta = torch.device("meta")
    assert floor.product_flops(torch.empty(6, 5, device=meta), torch.empty(5, 7, device=meta)) == 2 * 6 * 5 * 7
    assert floor.product_flops(torch.empty(3, 2, 4, device=meta), torch.empty(3, 4, 5, device=meta)) == 3 * 2 * 2 * 4 * 5


def test_replayed_operands_have_the_recorded_shape_and_strides(floor):
    base = torch.randn(9, 11)
    for t in (base, base.T, base[:, 3:8].T, base[2:5]):
        op = floor.fresh(tuple(t.shape), tuple(t.stride()), t.dtype)
        assert op.shape == t.shape and op.stride() == t.stride() and op.dtype == t.dtype
    log = floor.StepLog()
    with log:
        torch.randn(4, 9) @ base[:, 3:8]  # a column slice: strided, not contiguous
    (func, spec, kwargs), = log.products
    assert floor.replay_seconds(func, spec, kwargs, reps=2) > 0


def test_an_mmssl_step_shows_its_products_and_its_optimiser_updates(floor, synthetic):
    model = build("mmssl", synthetic)
    optims = model.configure_optimizers()
    log = floor.StepLog()
    with log:
        model.train_step(first_batch(model, synthetic), optims)
    w1 = tuple(model.disc.w1t.shape)  # [I, I/4]: the penalty's W₁·(δᵀcδ) has this shape as first factor
    assert any(func is torch.ops.aten.mm.default and spec[0][0] == w1 for func, spec, _ in log.products)
    assert log.seconds["optimiser"] > 0 and log.draws > 0
