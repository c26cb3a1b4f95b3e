"""Seconds per training epoch: native `lightgcn` vs `recbole-lightgcn` on real TikTok (no arguments).

One process, one thread, the same hyper-parameters (2 layers, embedding 64, batch 2048, Adam 1e-3,
reg 1e-4 on ½‖ego‖²/batch: RecBole's `require_pow: true`). One training epoch = every train pair
once with one sampled negative, through each side's own machinery: our BPRSampler +
`Recommender.train_step` (what mmbench's trainer runs) and RecBole's loader + `Trainer._train_epoch`
(what the adapter runs). Validation is not timed. Epochs are interleaved (native, RecBole, native,
...) after one warm-up epoch each; the median of each side is kept.
Last line: `ratio X.XX` (native / recbole; below 1 means native is faster).
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

from mmbench.data.registry import load_dataset  # noqa: E402
from mmbench.runner import model_config  # noqa: E402
from mmbench.train.trainer import seed_everything  # noqa: E402

EPOCHS, SEED = 5, 2024
SETS = ["n_layers=2", "reg_weight=1e-4", "batch_size=2048", "lr=1e-3", "embedding_size=64"]


def data_dir() -> str:
    return os.environ.get("MMBENCH_DATA_DIR", str(ROOT / ".." / "shared" / "data"))


def native_epoch_fn(data):
    from mmbench.models.base import get_model_class

    cfg = model_config("lightgcn", data.name, "full", None, SETS)
    seed_everything(SEED)
    model = get_model_class("lightgcn")(data.train_view(), cfg)
    sampler = model.make_sampler(data.train, cfg.batch_size, SEED)
    optimizers = model.configure_optimizers()

    def epoch() -> None:
        model.train()
        for batch in sampler.epoch():
            model.train_step(batch, optimizers)

    return epoch


def recbole_epoch_fn(data):
    from mmbench.models.base import get_model_class

    cfg = model_config("recbole-lightgcn", data.name, "full", None, SETS + ["require_pow=true"])
    seed_everything(SEED)
    model = get_model_class("recbole-lightgcn")(data.train_view(), cfg)
    model.build()
    count = iter(range(10**9))
    return lambda: model.train_epoch(next(count))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    torch.set_num_threads(1)
    data = load_dataset("tiktok", data_dir=data_dir())
    print(f"TikTok: {data.n_users} users, {data.n_items} items, {data.train.nnz} train pairs; "
          f"{EPOCHS} timed epochs each, 1 thread")
    native, recbole = native_epoch_fn(data), recbole_epoch_fn(data)
    native(), recbole()  # warm-up
    times: dict[str, list[float]] = {"native": [], "recbole": []}
    for _ in range(EPOCHS):
        times["native"].append(timed(native))
        times["recbole"].append(timed(recbole))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:8s} median {med[k]:.3f} s/epoch  min {min(v):.3f}  all {' '.join(f'{x:.3f}' for x in v)}")
    print(f"ratio {med['native'] / med['recbole']:.2f}")


if __name__ == "__main__":
    main()
