"""Making a run reproducible on its device: its own intra-op thread count, seeded RNGs, and on
CUDA the deterministic algorithms torch offers.

On CPU, the same seed and the same thread count give byte-identical results (the reduction order
of a parallel matmul changes with the thread count, so thread count is part of a run's identity).
On CUDA, `torch.use_deterministic_algorithms(True, warn_only=True)` with cuBLAS's fixed workspace
makes dense products and most kernels repeatable; what stays non-deterministic there is what
torch has no deterministic kernel for — notably sparse–dense products (`torch.sparse.mm`, used by
every graph model's propagation) and `index_add_`/scatter-add backward passes, which use atomics:
torch warns once when a run hits one, and such runs match to float rounding, not bit for bit.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_threads(threads: int) -> None:
    """The intra-op thread count for the run about to start (set per run, not per process)."""
    torch.set_num_threads(int(threads))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def deterministic_device(device: torch.device) -> None:
    """Ask CUDA for deterministic kernels (a no-op on CPU, which is deterministic per thread count)."""
    if device.type != "cuda":
        return
    # cuBLAS needs a fixed workspace for deterministic results; it is read when cuBLAS starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
