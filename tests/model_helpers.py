"""Helpers shared by the model test files: tiny fixtures with zero-degree nodes, configs, baselines."""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from mmbench.data.dataset import TrainData, to_csr
from mmbench.models.base import Batch, get_model_class
from mmbench.runner import model_config
from mmbench.train.trainer import resolve_device

CPU = resolve_device("cpu")
MODALITY_SETS = {1: {"image": 24}, 2: {"image": 24, "text": 12}, 3: {"image": 24, "text": 12, "audio": 6}}


def cfg(name: str, *sets: str):
    return model_config(name, "synthetic", "full", None, list(sets))


def build(name: str, data: TrainData, *sets: str, seed: int = 0):
    torch.manual_seed(seed)
    return get_model_class(name)(data, cfg(name, *sets))


def tiny(n_modalities: int = 2, n_items: int = 12) -> TrainData:
    """10 users × n_items; user 9 and the last two items have no training interactions."""
    rng = np.random.default_rng(0)
    rows, cols = [], []
    for u in range(9):
        for i in rng.choice(n_items - 2, size=3, replace=False):
            rows.append(u)
            cols.append(int(i))
    train = to_csr(rows, cols, 10, n_items)
    feats = {m: rng.standard_normal((n_items, d)).astype(np.float32) for m, d in MODALITY_SETS[n_modalities].items()}
    feats[next(iter(feats))][n_items - 1] = 0.0  # an all-zero feature row must not produce NaN either
    return TrainData(10, n_items, train, feats, "tiny")


def random_recall(data, split: str, k: int = 20) -> float:
    """Expected Recall@k of a uniformly random ranking over the unmasked (non-train) items."""
    held = data.split(split)
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    candidates = data.n_items - np.diff(data.train.indptr)[users]
    return float(np.mean(np.minimum(1.0, k / candidates)))


def loss_and_scores_are_finite(model, atol: float = 1e-6) -> dict:
    """One backward pass and one scoring round on `tiny()`: finite losses, gradients and scores,
    including zero-degree user 9, items 10-11 and the all-zero feature row; cached == uncached scores."""
    batch = Batch(torch.tensor([0, 1, 9]), torch.tensor([1, 2, 10]), torch.tensor([11, 3, 4]))
    losses = model.calculate_loss(batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        model.begin_scoring()
        scores = model.score(torch.arange(10))
        model.end_scoring()
        direct = model.score(torch.tensor([9, 2]))  # without the cache
    assert scores.shape == (10, model.n_items)
    assert torch.isfinite(scores).all(), "zero-degree user 9 / items 10-11 / zero feature row gave NaN"
    assert torch.allclose(direct, scores[[9, 2]], atol=atol)
    return losses


@contextlib.contextmanager
def ctrl_c_at_validation(n: int):
    """Inside the block, the n-th validation raises KeyboardInterrupt (a Ctrl-C in the middle of a
    run, after the checkpoint of epoch n-1 with `checkpoint_every=0`)."""
    import mmbench.train.trainer as trainer_mod

    orig, calls = trainer_mod.Trainer.validate, {"n": 0}

    def crash(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return orig(self)

    trainer_mod.Trainer.validate = crash
    try:
        yield
    finally:
        trainer_mod.Trainer.validate = orig


def interrupted_then_resumed(monkeypatch, run, between=None):
    """Call `run()` (whose config must say `checkpoint_every=0`) with a KeyboardInterrupt at the 3rd validation,
    optionally check the half-written run folder with `between()`, then call `run()` again (which must
    resume from the checkpoint) and return its result."""
    import pytest

    with ctrl_c_at_validation(3), pytest.raises(KeyboardInterrupt):
        run()
    if between is not None:
        between()
    return run()


# Fields of record.json that may differ between identical runs (wall-clock and machine facts).
VOLATILE_RECORD_KEYS = ("created", "timings", "peak_memory_mb", "env")


def comparable_record(folder) -> dict:
    """record.json without the volatile fields and per-epoch `*_seconds`."""
    import json
    from pathlib import Path

    raw = json.loads((Path(folder) / "record.json").read_text())
    for key in VOLATILE_RECORD_KEYS:
        raw.pop(key, None)
    raw["history"] = [{k: v for k, v in h.items() if not k.endswith("_seconds")} for h in raw["history"]]
    return raw


def assert_identical_records(a, b) -> None:
    """"Identical records": arrays.npz byte-identical, record.json equal but for the volatile fields."""
    from pathlib import Path

    assert (Path(a) / "arrays.npz").read_bytes() == (Path(b) / "arrays.npz").read_bytes(), f"{a} vs {b}: arrays differ"
    assert comparable_record(a) == comparable_record(b), f"{a} vs {b}: record.json differs"


def only_file(results, pattern: str):
    """The one file matching `pattern` under `<results>/runs/` (an assertion if none or several)."""
    from pathlib import Path

    found = list(Path(results).glob(f"runs/**/{pattern}"))
    assert len(found) == 1, f"{pattern} under {results}: {found}"
    return found[0]


# `mmbench.cli.main` with one patch: in epoch 3 the model trains one batch, says PAUSED and sleeps,
# so a SIGKILL lands mid-epoch (the checkpoint holds epoch 2, the process's memory is past it) at the
# same point on every machine, however fast. argv[1] is the model name, the rest the CLI arguments.
PAUSE_IN_EPOCH_3 = """
import sys, time
from mmbench.models.base import get_model_class

cls = get_model_class(sys.argv[1])
step, start = cls.train_step, cls.on_epoch_start

def on_epoch_start(self, epoch):
    self._paused_epoch = epoch
    return start(self, epoch)

def train_step(self, batch, optimizers):
    out = step(self, batch, optimizers)
    if getattr(self, "_paused_epoch", 0) == 3:
        print("PAUSED", flush=True)
        time.sleep(600)
    return out

cls.on_epoch_start, cls.train_step = on_epoch_start, train_step
from mmbench.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_paused_then_killed(model: str, cli_args: list[str], env: dict, tmp_path, timeout: float = 120.0):
    """Run `mmbench <cli_args>` (a run of `model` with `checkpoint_every=0`) until it pauses inside
    epoch 3, SIGKILL it, and return its checkpoint's path (no record may exist yet)."""
    import select
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pytest

    log = Path(tmp_path) / f"killed-{model}.stderr"
    results = Path(cli_args[cli_args.index("--results") + 1])
    with open(log, "w") as err:
        victim = subprocess.Popen([sys.executable, "-c", PAUSE_IN_EPOCH_3, model, *cli_args], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=err)
    try:
        deadline, paused = time.monotonic() + timeout, False
        while not paused and time.monotonic() < deadline:
            ready, _, _ = select.select([victim.stdout], [], [], 1.0)
            if ready:
                line = victim.stdout.readline()
                paused = line.strip() == "PAUSED"
                if not line and victim.poll() is not None:
                    pytest.fail(f"the run ended before epoch 3 (exit {victim.returncode}): {log.read_text()}")
        if not paused:
            pytest.fail(f"the run never reached epoch 3: {log.read_text()}")
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.stdout.close()
    assert not list(results.glob("runs/**/record.json"))
    return only_file(results, "checkpoint.pt")


def dense_normalized_adjacency(train):
    """Brute force D^-½ A D^-½ of the bipartite graph [[0, R], [Rᵀ, 0]] as a dense float64 array, zero
    rows for isolated nodes: the reference the sparse graph code is checked against (small inputs)."""
    import numpy as np

    r = train.toarray().astype(np.float64)
    u, i = r.shape
    a = np.zeros((u + i, u + i))
    a[:u, u:] = r
    a[u:, :u] = r.T
    deg = a.sum(1)
    d = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    return d[:, None] * a * d[None, :]
