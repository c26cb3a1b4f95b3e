"""A real `kill -9` of `mmbench run` in the middle of a recbole-sgl epoch, then the same command again:
the resumed run's record and arrays equal those of a run that was never interrupted.

The killed process is `mmbench.cli.main` with one patch (`model_helpers.PAUSE_IN_EPOCH_3`): in epoch 3
it trains one batch, says PAUSED and sleeps, so the SIGKILL lands mid-epoch (the checkpoint holds
epoch 2, the process's memory is already past it) at the same point on every machine, however fast. The rerun and the
uninterrupted run are plain `python -m mmbench.cli run ...` with the same arguments."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_helpers import assert_identical_records, only_file, run_paused_then_killed

ARGS = ["run", "--models", "recbole-sgl", "--dataset", "synthetic", "--budget", "smoke",
        "--set", "epochs=4", "--set", "patience=0", "--set", "checkpoint_every=0", "--set", "batch_size=256",
        "--device", "cpu", "--threads", "1", "--no-progress"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def mmbench(results: Path, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmbench.cli", *ARGS, "--results", str(results)]
    return subprocess.Popen(cmd, env=ENV, text=True, **kw)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_9_mid_epoch_then_rerun_equals_an_uninterrupted_run(tmp_path):
    full = mmbench(tmp_path / "full", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_path = run_paused_then_killed("recbole-sgl", ARGS + ["--results", str(tmp_path / "killed")], ENV, tmp_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2 and [h["epoch"] for h in ckpt["history"]] == [1, 2]

    rerun = mmbench(tmp_path / "killed", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, rerun_err = rerun.communicate(timeout=300)
    _, full_err = full.communicate(timeout=300)
    assert rerun.returncode == 0, rerun_err
    assert full.returncode == 0, full_err

    resumed_dir = only_file(tmp_path / "killed", "record.json").parent
    full_dir = only_file(tmp_path / "full", "record.json").parent
    assert not ckpt_path.exists()  # removed once the record is written
    # the rerun resumed at epoch 3: epochs 1-2 are the checkpoint's, timings included
    raw = json.loads((resumed_dir / "record.json").read_text())
    assert [h["train_seconds"] for h in raw["history"][:2]] == [h["train_seconds"] for h in ckpt["history"]]
    assert [h["epoch"] for h in raw["history"]] == [1, 2, 3, 4]
    assert_identical_records(resumed_dir, full_dir)
