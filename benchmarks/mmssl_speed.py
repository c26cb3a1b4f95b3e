"""How much do MMSSL's fast paths save per training batch? (no arguments, a few minutes)

Real TikTok (B = 1024, I = 6710), `mmssl-official` with its TikTok preset. Two copies of THE SAME
module with identical parameters: `fast=true` (factored relation rows, Gram-based gradient penalty, …)
and `fast=false` (dense relation rows, plain discriminator passes). First both compute one batch's
discriminator and generator losses and gradients under the same seed, which must agree to a relative
1e-4 (else exit 1: a speed-up that changes the function is not one). Then full training steps
(both optimiser steps) on the same batches are timed, interleaved; the median of each is kept.
Threads: $OMP_NUM_THREADS or 1 (on a shared, oversubscribed machine one thread times more reliably).
Last line: `speedup X.XX` (dense seconds / fast seconds per batch).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MMBENCH_DATA_DIR", str(ROOT / ".." / "shared" / "data"))

from mmbench.data.registry import load_dataset  # noqa: E402
from mmbench.models.base import get_model_class  # noqa: E402
from mmbench.runner import model_config  # noqa: E402

MODEL, DATASET, TIMED_BATCHES, TOL = "mmssl-official", "tiktok", 3, 1e-4


def losses_and_grads(model, batch, seed: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One discriminator pass and one generator pass (no optimiser step) under a fixed seed."""
    torch.manual_seed(seed)
    pos, mask = model.batch_context(batch)
    model.zero_grad(set_to_none=True)
    d = model.discriminator_loss(batch, pos, mask)
    d["loss_d"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("disc.") and p.grad is not None}
    model.zero_grad(set_to_none=True)
    g, _ = model.generator_losses(batch, pos, mask)
    g["loss"].backward()
    grads.update({n: p.grad.clone() for n, p in model.named_parameters()
                  if not n.startswith("disc.") and p.grad is not None})
    model.zero_grad(set_to_none=True)
    return {k: float(v.detach()) for k, v in {**d, **g}.items()}, grads


def compare(fast: tuple, dense: tuple) -> list[str]:
    """Relative differences; a gradient both sides leave at rounding level (W_q, spec §2.4) is skipped."""
    errors = []
    (lf, gf), (ld, gd) = fast, dense
    for k in ld:
        rel = abs(lf[k] - ld[k]) / max(abs(ld[k]), 1e-12)
        print(f"  loss {k:8s} fast {lf[k]: .6e} dense {ld[k]: .6e} rel {rel:.1e}")
        if rel > TOL:
            errors.append(f"loss {k}: rel {rel:.2e}")
    worst = 0.0
    for name in sorted(set(gf) | set(gd)):
        a = gf.get(name)
        b = gd.get(name)
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        na, nb, diff = float(a.norm()), float(b.norm()), float((a - b).norm())
        group = [g for n, g in gd.items() if n.startswith("disc.") == name.startswith("disc.")]
        scale = max(float(g.norm()) for g in group)
        rel = diff / max(na, nb, 1e-30)
        if rel > TOL and diff <= 1e-6 * scale:
            # zero in exact arithmetic, rounding noise in both (W_q, spec §2.4; a bias feeding BatchNorm)
            print(f"  grad {name}: rounding noise on both sides (|diff| {diff:.1e} vs largest {scale:.1e})")
            continue
        worst = max(worst, rel)
        if rel > TOL:
            errors.append(f"grad {name}: rel {rel:.2e} (norms {na:.3e}, {nb:.3e})")
    print(f"  gradients: {len(gd)} tensors, worst relative difference {worst:.1e}")
    return errors


def main() -> int:
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    data = load_dataset(DATASET)
    view = data.train_view()
    cls = get_model_class(MODEL)
    torch.manual_seed(0)
    models = {}
    for fast in (True, False):
        cfg = model_config(MODEL, DATASET, "full", None, [f"fast={str(fast).lower()}"])
        models[fast] = cls(view, cfg)
    models[False].load_state_dict(models[True].state_dict())
    models[False].load_extra_state(models[True].extra_state())
    for m in models.values():
        m.train()
        m.on_epoch_start(1)
    cfg = models[True].cfg
    sampler = models[True].make_sampler(data.train, cfg.batch_size, 0)
    it = sampler.epoch()
    batches = [next(it) for _ in range(TIMED_BATCHES + 1)]
    print(f"{MODEL} on {DATASET}: B={cfg.batch_size}, I={data.n_items}, {threads} thread(s), "
          f"{len(sampler)} batches/epoch")

    print("check: one batch, same seed, fast vs dense")
    errors = compare(losses_and_grads(models[True], batches[0], 7), losses_and_grads(models[False], batches[0], 7))
    if errors:
        print("FAILED: fast and dense differ:\n  " + "\n  ".join(errors))
        return 1
    print(f"  ok: losses and gradients agree to rel {TOL:g}")

    optims = {k: m.configure_optimizers() for k, m in models.items()}
    times: dict[bool, list[float]] = {True: [], False: []}
    for b in batches[1:]:
        for fast in (True, False):
            torch.manual_seed(11)
            t0 = time.perf_counter()
            models[fast].train_step(b, optims[fast])
            times[fast].append(time.perf_counter() - t0)
            print(f"  {'fast ' if fast else 'dense'} batch: {times[fast][-1]:.2f} s", flush=True)
    t_fast, t_dense = statistics.median(times[True]), statistics.median(times[False])
    print(f"median seconds per batch: fast {t_fast:.2f}, dense {t_dense:.2f} "
          f"(≈ {t_fast * len(sampler):.0f} s vs {t_dense * len(sampler):.0f} s per epoch)")
    print(f"speedup {t_dense / t_fast:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
