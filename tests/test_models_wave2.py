"""What every model added in wave 2 must do, whatever its paper: be registered (so `run --models all`
and `mmbench models` see it), learn on planted-signal data, give identical records when rerun with one
thread, and — the trained ones — resume after a real `kill -9` in the middle of an epoch to the record
of a run that was never interrupted. The floors (`mostpop`, `itemknn`) fit once and have no epoch to
interrupt. Model-specific mechanics are tested in each model's own test file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from mmbench.cli import main
from mmbench.data.synthetic import make_synthetic
from mmbench.models.base import get_model_class, registry
from mmbench.runner import model_config, run_all, train_one
from model_helpers import (CPU, MODALITY_SETS, assert_identical_records, only_file, random_recall,
                           run_paused_then_killed)

TRAINED = ("hccf", "clcrec", "mmgcl", "freedom", "bm3")
FLOORS = ("mostpop", "itemknn")
# Epochs that show learning on the planted data in a unit test's time (the floors have one).
EPOCHS = {"hccf": 10, "clcrec": 10, "mmgcl": 8, "freedom": 10, "bm3": 20}
# Where a model's default learning rate needs more epochs than a unit test affords.
EXTRA = {"bm3": ["lr=0.01", "batch_size=64"], "hccf": ["lr=0.01", "batch_size=256"], "clcrec": ["lr=0.01"],
         "freedom": ["lr=0.01"], "mmgcl": ["lr=0.01"]}
# HCCF's hypergraph view learns slowly on the 200-user fixture (its global view sums over every
# user); on 600 x 300 ten epochs show it (valid R@20 0.09 -> 0.26, random 0.07).
LARGER = {"hccf": (600, 300)}


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(n_users=200, n_items=120, modalities=MODALITY_SETS[3], seed=3)


def test_every_new_model_is_registered_and_listed(capsys):
    reg = registry()
    assert set(TRAINED + FLOORS) <= set(reg)
    assert all(reg[m].fits_once for m in FLOORS) and not any(reg[m].fits_once for m in TRAINED)
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert all(m in listed for m in TRAINED + FLOORS)


@pytest.mark.parametrize("name", TRAINED + FLOORS)
def test_learns_the_planted_signal(name, synth):
    if name in LARGER:
        synth = make_synthetic(*LARGER[name], modalities=MODALITY_SETS[1], seed=3)
    sets = ["patience=0"] if name in FLOORS else [f"epochs={EPOCHS[name]}", "patience=0", *EXTRA.get(name, [])]
    rec = train_one(name, synth, model_config(name, "synthetic", "full", None, sets), 5, CPU, None, progress=False)
    assert rec["test"]["recall@20"] > 1.5 * random_recall(synth, "test"), rec["test"]["recall@20"]
    assert rec["valid"]["recall@20"] > 1.5 * random_recall(synth, "valid")
    if name in FLOORS:
        assert len(rec["history"]) == 1, "fitted once: one epoch under every budget"


@pytest.mark.parametrize("budget", ["full", "quick", "smoke"])
def test_floors_run_one_epoch_under_every_budget(budget):
    for name in FLOORS:
        cfg = model_config(name, "synthetic", budget)
        assert cfg.epochs == 1
        assert get_model_class(name)(make_synthetic(n_users=20, n_items=12).train_view(), cfg).configure_optimizers() == []


@pytest.mark.parametrize("name", TRAINED + FLOORS)
def test_reruns_with_one_thread_give_identical_records(name, synth, tmp_path):
    sets = ["epochs=2"] if name in TRAINED else []
    for out in ("a", "b"):
        run_all([name], synth, [7], CPU, tmp_path / out, budget="smoke", set_items=sets, progress=False, threads=1)
    a, b = (only_file(tmp_path / out, "record.json").parent for out in ("a", "b"))
    assert json.loads((a / "record.json").read_text())["threads"] == 1
    assert_identical_records(a, b)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("name", TRAINED)
def test_kill_9_mid_epoch_then_rerun_equals_an_uninterrupted_run(name, tmp_path):
    args = ["run", "--models", name, "--dataset", "synthetic", "--budget", "smoke", "--set", "epochs=4",
            "--set", "patience=0", "--set", "checkpoint_every=0", "--set", "batch_size=256",
            "--device", "cpu", "--threads", "1", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    full = subprocess.Popen([sys.executable, "-m", "mmbench.cli", *args, "--results", str(tmp_path / "full")],
                            env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_path = run_paused_then_killed(name, args + ["--results", str(tmp_path / "killed")], env, tmp_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert int(ckpt["epoch"]) == 2

    rerun = subprocess.run([sys.executable, "-m", "mmbench.cli", *args, "--results", str(tmp_path / "killed")],
                           env=env, text=True, capture_output=True, timeout=300)
    _, full_err = full.communicate(timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert full.returncode == 0, full_err
    assert "from the checkpoint after epoch 2" in rerun.stdout + rerun.stderr
    assert not ckpt_path.exists()  # removed once the record is written
    resumed_dir = only_file(tmp_path / "killed", "record.json").parent
    assert [h["epoch"] for h in json.loads((resumed_dir / "record.json").read_text())["history"]] == [1, 2, 3, 4]
    assert_identical_records(resumed_dir, only_file(tmp_path / "full", "record.json").parent)
