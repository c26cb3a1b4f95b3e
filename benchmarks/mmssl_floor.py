"""How fast could an exact MMSSL training step be on this CPU? A floor from the step's own work (~3 min)

Real TikTok (B = 1024, I = 6710), each variant (`mmssl`, `mmssl-official`) with its TikTok preset. One
full training step of the package runs under a dispatch mode that records every dense matrix product
(mm, addmm, bmm, baddbmm: shapes, strides, FLOPs; D's double backward included) and times the random
draws and the fused optimiser updates as they run. Each recorded product is then replayed ALONE on
fresh operands of the same shapes and memory layout, warm, best of 3: the time those products need at
this CPU's best float32 GEMM speed. An implementation that computes the same function in float32 with
the same random draws (what `mmssl_speed.py` checks) needs at least products + draws + optimiser
updates, so `oracle seconds / that floor` bounds its speed-up over the frozen dense oracle
(tests/mmssl_oracle.py), timed in the same run. Everything else (BatchNorm, dropout, activations,
softmax, sparse products, the encoder) is counted as costing nothing.

Why these products are needed (TikTok: B = 1024, I = 6710, D's widths H₁ = 1677, H₂ = 838, M = 2, so
2,048 fake and 2,048 interpolated rows):
- D's second layer, ≈ 69 GFLOP: 12 products [2048 × 1677]·[1677 × 838]. Forward on the real, fake and
  interpolated rows, 2,048 distinct rows each (the real copies draw their own dropout masks; the
  interpolations are nonlinear after layer 1), the backward of all three, the penalty's δ through W₂,
  and the double backward of that.
- The gradient penalty ‖W₁ᵀδ‖, ≈ 78 GFLOP, through the symmetric Gram G = W₁ᵀW₁ (strip-wise, ≈ 20),
  δG (11.5), δᵀ diag(c) δ (≈ 6) and W₁'s penalty gradient 2·W₁·(δᵀcδ) (37.7). The direct route
  through δW₁ᵀ ([2048 × 6710]) costs 138 because 2,048 > I/4. Adam needs W₁'s full gradient.
- D's first layer on the factored rows (≈ 10) and the generator's pass through D (≈ 20).
Only another function gets below the floor: bf16/TF32 products, other random draws, no double backward.

Threads: $OMP_NUM_THREADS or 1. $MMSSL_FLOOR_STEPS: timed steps of the package per variant (default 5);
the oracle is timed on 2 steps after one warm-up. Output per variant: GFLOP per step, the floor's
parts, the step's seconds, the largest products, and `bound[<variant>] X.XX`; last line
`speedup_bound X.XX` (the smaller of the two).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import mmbench  # noqa: E402,F401  (before torch: its allocator setting, see mmbench/__init__.py)
import torch  # noqa: E402
from torch.utils import flop_counter  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
sys.path.insert(0, str(ROOT / "tests"))  # the frozen dense oracle lives with the tests
sys.path.insert(0, str(ROOT / "benchmarks"))  # mmssl_speed: how the oracle takes a step
os.environ.setdefault("MMBENCH_DATA_DIR", str(ROOT / ".." / "shared" / "data"))

from mmbench.data.registry import load_dataset  # noqa: E402
from mmbench.models.base import get_model_class  # noqa: E402
from mmbench.runner import model_config  # noqa: E402
from mmssl_speed import oracle_step  # noqa: E402

MODELS, DATASET = ("mmssl", "mmssl-official"), "tiktok"
STEPS = int(os.environ.get("MMSSL_FLOOR_STEPS", "5"))
ORACLE_STEPS = 2
aten = torch.ops.aten
PRODUCTS = {aten.mm.default: (0, 1), aten.addmm.default: (1, 2), aten.bmm.default: (0, 1),
            aten.baddbmm.default: (1, 2)}  # op → positions of its two factors
DRAWS = {aten.rand.default, aten.rand_like.default, aten.uniform_.default, aten.randn.default,
         aten.randn_like.default, aten.normal_.default, aten.bernoulli_.float, aten.bernoulli.default,
         aten.randint.default, aten.randperm.default}
OPTIMISERS = {aten._fused_adam_.default, aten._fused_adamw_.default}


class TensorSpec(NamedTuple):
    """A recorded operand: enough to make a fresh one with the same memory layout."""
    shape: tuple
    stride: tuple
    dtype: torch.dtype


def product_flops(a, b) -> int:
    """FLOPs of the product of two factors (anything with a `.shape`), by torch's own formulas."""
    formula = flop_counter.bmm_flop if len(a.shape) == 3 else flop_counter.mm_flop
    return formula(tuple(a.shape), tuple(b.shape))


class StepLog(TorchDispatchMode):
    """Records, while active, every dense matrix product (op, shapes and strides of all its tensor
    arguments → count) and the time of the step's random draws and optimiser updates as they run."""

    def __init__(self):
        super().__init__()
        self.products: Counter = Counter()
        self.seconds: Counter = Counter()
        self.draws = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if all(t.layout == torch.strided for t in tensors):
                spec = tuple(TensorSpec(tuple(t.shape), tuple(t.stride()), t.dtype)
                             if isinstance(t, torch.Tensor) else t for t in args)
                self.products[(func, spec, tuple(sorted(kwargs.items())))] += 1
            return func(*args, **kwargs)
        kind = "draws" if func in DRAWS else "optimiser" if func in OPTIMISERS else None
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        if kind:
            self.seconds[kind] += time.perf_counter() - t0
            if kind == "draws":
                self.draws += out.numel()
        return out


def fresh(shape, stride, dtype) -> torch.Tensor:
    """Random operand with exactly this shape and memory layout (strides), on its own storage."""
    extent = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
    return torch.randn(max(extent, 1), dtype=dtype).as_strided(shape, stride)


def replay_seconds(func, spec, kwargs, reps: int = 3) -> float:
    """Best of `reps` warm runs of one product on fresh operands."""
    args = [fresh(*s) if isinstance(s, TensorSpec) else s for s in spec]
    kw = dict(kwargs)
    func(*args, **kw)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        func(*args, **kw)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(name: str, data, threads: int) -> float:
    view = data.train_view()
    cls = get_model_class(name)
    cfg = model_config(name, DATASET, "full", None, [])
    torch.manual_seed(0)
    model = cls(view, cfg)
    model.train()
    model.on_epoch_start(1)
    optims = model.configure_optimizers()
    sampler = model.make_sampler(data.train, cfg.batch_size, 0)
    it = sampler.epoch()
    print(f"{name} on {DATASET}: B={cfg.batch_size}, I={data.n_items}, {threads} thread(s)", flush=True)
    for _ in range(2):  # warm-up
        model.train_step(next(it), optims)
    log = StepLog()
    with log:
        model.train_step(next(it), optims)
    step_times = []
    for _ in range(STEPS):
        batch = next(it)
        t0 = time.perf_counter()
        model.train_step(batch, optims)
        step_times.append(time.perf_counter() - t0)
    step = statistics.median(step_times)

    rows = []
    for (func, spec, kwargs), count in log.products.items():
        a, b = (spec[i] for i in PRODUCTS[func])
        rows.append((count * replay_seconds(func, spec, kwargs), count * product_flops(a, b), count, func,
                     a.shape, b.shape))
    products = sum(r[0] for r in rows)
    gflop = sum(r[1] for r in rows) / 1e9

    ref = cls(view, cfg)
    ref.load_state_dict(model.state_dict())
    ref.load_extra_state(model.extra_state())
    ref.train()
    ref.on_epoch_start(1)
    step_oracle = oracle_step(ref)
    oracle_times = []
    step_oracle(next(it))  # warm-up
    for _ in range(ORACLE_STEPS):
        batch = next(it)
        t0 = time.perf_counter()
        step_oracle(batch)
        oracle_times.append(time.perf_counter() - t0)
    oracle_s = statistics.median(oracle_times)

    print(f"  dense products per step: {sum(r[2] for r in rows)} calls, {gflop:.0f} GFLOP; alone, warm, "
          f"best of 3: {products:.3f} s ({gflop / products:.0f} GFLOP/s)")
    draws, optimiser = log.seconds["draws"], log.seconds["optimiser"]
    floor = products + draws + optimiser
    print(f"  random draws: {log.draws / 1e6:.1f} M numbers, {draws:.3f} s; optimiser updates (fused Adam/AdamW): "
          f"{optimiser:.3f} s (as they ran in the step)")
    print(f"  package step (median of {STEPS}): {step:.3f} s = products {products:.3f} s + draws {draws:.3f} s "
          f"+ optimisers {optimiser:.3f} s + the rest {step - floor:.3f} s")
    print(f"  oracle step (median of {ORACLE_STEPS}): {oracle_s:.3f} s; speed-up now {oracle_s / step:.2f}")
    print("  largest products (seconds alone, calls, GFLOP, shapes):")
    for secs, flops, count, func, a, b in sorted(rows, key=lambda r: -r[0])[:8]:
        print(f"    {secs:.3f} s {count:3d}× {flops / 1e9:6.1f} GFLOP  {func.__name__.split('.')[0]:7s} "
              f"{list(a)} · {list(b)}")
    bound = oracle_s / floor
    print(f"  5× needs {oracle_s / 5:.3f} s per step; products + draws + optimisers take {floor:.3f} s, "
          f"leaving {oracle_s / 5 - floor:.3f} s for all the rest (now {step - floor:.3f} s: BatchNorm, "
          f"dropout, activations, softmax, sparse products, the encoder)")
    print(f"bound[{name}] {bound:.2f}", flush=True)
    return bound


def main() -> int:
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    data = load_dataset(DATASET)
    bounds = [measure(name, data, threads) for name in MODELS]
    print(f"speedup_bound {min(bounds):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
