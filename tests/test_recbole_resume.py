"""A real `kill -9` of `mmbench run` in the middle of a recbole-sgl epoch, then the same command again:
the resumed run's record and arrays equal those of a run that was never interrupted.

The killed process is `mmbench.cli.main` with one patch: in epoch 3 it trains one batch, says
PAUSED and sleeps, so the SIGKILL lands mid-epoch (the checkpoint holds epoch 2, the process's
memory is already past it) at the same point on every machine, however fast. The rerun and the
uninterrupted run are plain `python -m mmbench.cli run ...` with the same arguments."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model_helpers import assert_identical_records

ARGS = ["run", "--models", "recbole-sgl", "--dataset", "synthetic", "--budget", "smoke",
        "--set", "epochs=4", "--set", "patience=0", "--set", "checkpoint_every=0", "--set", "batch_size=256",
        "--device", "cpu", "--threads", "1", "--no-progress"]

PAUSE_IN_EPOCH_3 = """
import sys, time
from mmbench.models.recbole_adapter import RecBoleAdapter

step = RecBoleAdapter.train_step

def train_step(self, batch, optimizers):
    out = step(self, batch, optimizers)
    if self._epoch_idx == 2:  # epoch 3, one batch trained: wait for the SIGKILL
        print("PAUSED", flush=True)
        time.sleep(600)
    return out

RecBoleAdapter.train_step = train_step
from mmbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def mmbench(results: Path, prefix: list[str] | None = None, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, *(prefix or ["-m", "mmbench.cli"]), *ARGS, "--results", str(results)]
    return subprocess.Popen(cmd, env=env, text=True, **kw)


def only(results: Path, pattern: str) -> Path:
    (path,) = results.glob(f"runs/**/{pattern}")
    return path


def wait_for_pause(proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Until the process prints PAUSED (it is then inside epoch 3, its checkpoint at epoch 2)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == "PAUSED":
                return
            if not line and proc.poll() is not None:
                pytest.fail(f"the run ended before epoch 3 (exit {proc.returncode}): {log.read_text()}")
    proc.kill()
    pytest.fail(f"the run never reached epoch 3: {log.read_text()}")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_9_mid_epoch_then_rerun_equals_an_uninterrupted_run(tmp_path):
    full = mmbench(tmp_path / "full", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "killed.stderr"
    with open(log, "w") as err:
        victim = mmbench(tmp_path / "killed", ["-c", PAUSE_IN_EPOCH_3], stdout=subprocess.PIPE, stderr=err)
    try:
        wait_for_pause(victim, log)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.stdout.close()
    ckpt_path = only(tmp_path / "killed", "checkpoint.pt")
    assert not list((tmp_path / "killed").glob("runs/**/record.json"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2 and [h["epoch"] for h in ckpt["history"]] == [1, 2]

    rerun = mmbench(tmp_path / "killed", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, rerun_err = rerun.communicate(timeout=300)
    _, full_err = full.communicate(timeout=300)
    assert rerun.returncode == 0, rerun_err
    assert full.returncode == 0, full_err

    resumed_dir = only(tmp_path / "killed", "record.json").parent
    full_dir = only(tmp_path / "full", "record.json").parent
    assert not ckpt_path.exists()  # removed once the record is written
    # the rerun resumed at epoch 3: epochs 1-2 are the checkpoint's, timings included
    raw = json.loads((resumed_dir / "record.json").read_text())
    assert [h["train_seconds"] for h in raw["history"][:2]] == [h["train_seconds"] for h in ckpt["history"]]
    assert [h["epoch"] for h in raw["history"]] == [1, 2, 3, 4]
    assert_identical_records(resumed_dir, full_dir)
