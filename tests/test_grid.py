"""The grid on Dask (issue #9): `mmbench run --workers N` and `--scheduler tcp://…` give the records
of `--workers 1`; failed and timed-out runs leave error.json while the rest finish; Ctrl-C stops the
workers and a rerun resumes; `mmbench runs` lists done / failed / claimed / stale.

Everything listens on loopback only. Slow or hanging runs come from test-only models registered
here for the duration of a test (in this process and, through a worker plugin, on the workers of
the test's own cluster), never in the registry other tests see.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmbench import records, runner
from mmbench.cli import main
from mmbench.data.registry import load_dataset
from mmbench.train.trainer import CHECKPOINT
from model_helpers import CPU, assert_identical_records

MODELS = "mf-bpr,lightgcn,vbpr"
GRID = ["run", "--models", MODELS, "--seeds", "1,2", "--dataset", "synthetic", "--budget", "smoke", "--no-progress"]
SLOW, HANG = "grid-test-slow", "grid-test-hang"


def relative_records(results: Path) -> dict[Path, Path]:
    return {f.relative_to(results): f for f in records.find_records(results)}


def assert_same_records(a: Path, b: Path, n: int) -> None:
    ra, rb = relative_records(a), relative_records(b)
    assert sorted(ra) == sorted(rb) and len(ra) == n, (sorted(ra), sorted(rb))
    for rel in ra:
        assert_identical_records(ra[rel], rb[rel])


def runs_listing(results: Path, capsys) -> tuple[dict[str, str], str]:
    """`mmbench runs`: {model: state} (one run per model) and the counts line."""
    capsys.readouterr()
    assert main(["runs", "--results", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    states = {line.split()[1].split("/")[1]: line.split()[0] for line in lines[:-1]}
    return states, lines[-1]


# --------------------------------------------------------------------------- test-only models

def register_test_models() -> None:
    """mf-bpr that sleeps `nap` seconds at the end of every epoch: `grid-test-slow` (a run that
    takes too long, epoch by epoch) and `grid-test-hang` (an epoch that does not end in time)."""
    from mmbench.models.base import _REGISTRY, get_model_class, register

    if SLOW in _REGISTRY:
        return
    base = get_model_class("mf-bpr")

    class Napping(base):
        """mf-bpr with a nap at the end of each epoch (tests only)."""

        defaults = {**base.defaults, "nap": 0.3}

        def on_epoch_end(self, epoch: int) -> None:
            time.sleep(self.cfg.nap)

    register(SLOW)(type("Slow", (Napping,), {"__doc__": "naps 0.3 s per epoch (tests only)"}))
    register(HANG)(type("Hang", (Napping,), {"__doc__": "naps 60 s in epoch 1 (tests only)",
                                             "defaults": {**Napping.defaults, "nap": 60.0}}))


@pytest.fixture
def test_models():
    from mmbench.models.base import _REGISTRY

    register_test_models()
    yield
    for name in (SLOW, HANG):
        _REGISTRY.pop(name, None)


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - dask is a dependency
    WorkerPlugin = object


class ModelsOnWorkers(WorkerPlugin):
    """Registers the test-only models on every worker, restarted ones included."""

    def setup(self, worker):
        register_test_models()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A LocalCluster of two one-thread worker processes on loopback, its workers knowing the
    test-only models, with the session's isolated dataset cache."""
    from distributed import Client

    from mmbench.grid import connect

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMBENCH_CACHE_DIR", os.environ.get("MMBENCH_CACHE_DIR")
                  or str(tmp_path_factory.getbasetemp() / "cache"))
        with connect(workers=2) as (c, _):
            c.register_plugin(ModelsOnWorkers())
            assert isinstance(c, Client)
            yield c


# --------------------------------------------------------------------------- same records, any way

@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The grid's records from a plain `--workers 1` run."""
    out = tmp_path_factory.mktemp("sequential")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMBENCH_CACHE_DIR", os.environ.get("MMBENCH_CACHE_DIR")
                  or str(tmp_path_factory.getbasetemp() / "cache"))
        assert main([*GRID, "--results", str(out)]) == 0
    return out


def test_workers_2_give_the_records_of_workers_1_with_one_line_per_run(sequential, tmp_path, capfd):
    capfd.readouterr()
    assert main([*GRID, "--workers", "2", "--results", str(tmp_path)]) == 0
    err = capfd.readouterr().err  # this process and its worker processes
    assert_same_records(sequential, tmp_path, 6)
    for model in MODELS.split(","):
        for seed in (1, 2):
            assert len([ln for ln in err.splitlines() if ln.startswith(f"[done] {model} synthetic seed {seed}: ")]) == 1
    assert "epoch 1/2" not in err  # per-epoch lines go to each run's log.txt only ...
    for folder in records.find_records(tmp_path):
        log = (folder / "log.txt").read_text()
        assert "epoch 1/2" in log and "epoch 2/2" in log and "[done]" in log
    assert "epoch 2/2" in (records.find_records(sequential)[0] / "log.txt").read_text()  # ... in every mode


@contextlib.contextmanager
def dask_scheduler_and_workers(tmp_path: Path, n: int = 2):
    """`dask scheduler` + n × `dask worker --nthreads 1` as subprocesses, all on loopback."""
    from distributed import Client

    dask = [sys.executable, "-m", "dask"]
    file = tmp_path / "scheduler.json"
    log = open(tmp_path / "dask.log", "w")
    env = dict(os.environ, DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"MALLOC_TRIM_THRESHOLD_": None}')  # README
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(file)], stdout=log, stderr=subprocess.STDOUT, env=env)]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() or not file.read_text().strip():
            assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "dask.log").read_text()
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(n):
            procs.append(subprocess.Popen([*dask, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                           "--no-dashboard", "--memory-limit", "0", "--name", f"w{i}"],
                                          stdout=log, stderr=subprocess.STDOUT, env=env))
        with Client(address, timeout=30, set_as_default=False) as c:
            c.wait_for_workers(n, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)
        log.close()


def test_a_dask_scheduler_with_two_workers_gives_the_records_of_workers_1(sequential, tmp_path, capsys):
    with dask_scheduler_and_workers(tmp_path) as address:
        assert main([*GRID, "--scheduler", address, "--results", str(tmp_path / "res")]) == 0
        err = capsys.readouterr().err
        assert f"on the Dask scheduler {address}" in err and err.count("[done] ") == 6
        assert "MALLOC_TRIM_THRESHOLD_" not in err  # workers started as the README says: no warning
        assert_same_records(sequential, tmp_path / "res", 6)
        assert main([*GRID, "--scheduler", address, "--results", str(tmp_path / "res")]) == 0  # nothing left to do
        assert capsys.readouterr().err.count("[skip] ") == 6


# --------------------------------------------------------------------------- failures

def test_a_run_that_raises_is_reported_with_its_error_json_while_the_rest_finish(tmp_path, capsys):
    config = tmp_path / "blowup.yaml"
    config.write_text("mf-bpr:\n  lr: 1.0e+38\n")  # Adam's first step overflows float32: the run raises
    run = ["run", "--models", MODELS, "--dataset", "synthetic", "--budget", "smoke", "--no-progress",
           "--config", str(config)]
    for workers in ("2", "1"):
        results = tmp_path / f"w{workers}"
        assert main([*run, "--workers", workers, "--results", str(results)]) == 1
        out, err = capsys.readouterr()
        (error,) = results.rglob(runner.ERROR)
        assert error.parent.parent.name == "mf-bpr"
        failure = json.loads(error.read_text())
        assert failure["model"] == "mf-bpr" and failure["seed"] == 2024
        assert failure["message"].startswith("RuntimeError:") and "Traceback" in failure["traceback"]
        assert "[fail] mf-bpr " in err and str(error) in err
        assert sorted(f.parent.name for f in records.find_records(results)) == ["lightgcn", "vbpr"]
        assert re.search(r"^mf-bpr\s+2024\s+FAILED\b", out, re.M), out
        states, counts = runs_listing(results, capsys)
        assert states == {"mf-bpr": "failed", "lightgcn": "done", "vbpr": "done"}
        assert counts.endswith("2 done, 1 failed, 0 claimed, 0 stale")


def test_the_worker_refuses_data_whose_fingerprint_is_not_the_clients(tmp_path):
    from mmbench import grid

    data = load_dataset("synthetic")
    (run,) = grid.plan(["mf-bpr"], data, [1], CPU, tmp_path, dataset_spec="synthetic", budget="smoke")
    res = grid.execute({**run.payload, "fingerprint": "0" * 64})
    assert res["status"] == "failed" and "fingerprint" in res["error"] and "refused" in res["error"]
    assert "fingerprint" in json.loads((run.folder / runner.ERROR).read_text())["message"]
    assert not (run.folder / records.RECORD).exists()
    assert grid.execute(run.payload)["status"] == "done"  # the same payload with the client's fingerprint
    assert not (run.folder / runner.ERROR).exists()  # a success clears the earlier failure


# --------------------------------------------------------------------------- timeouts

def test_run_timeout_ends_a_run_between_epochs_and_a_rerun_resumes_it(test_models, tmp_path, capsys):
    """In this process (`--workers 1`); also `mmbench runs`: failed, claimed, stale, done."""
    data = load_dataset("synthetic")
    sets = ["epochs=6", "patience=6", "checkpoint_every=0"]
    (ref,) = runner.run_all([SLOW], data, [1], CPU, tmp_path / "ref", budget="smoke", set_items=sets, progress=False)
    (out,) = runner.run_all([SLOW], data, [1], CPU, tmp_path / "res", budget="smoke", set_items=sets,
                            progress=False, run_timeout=1.0)
    assert out.status == "failed" and out.error.startswith("RunTimeout: ran past --run-timeout 1s")
    failure = json.loads((out.folder / runner.ERROR).read_text())
    stopped_after = failure["checkpoint_epoch"]
    assert failure["timeout"] is True and 1 <= stopped_after < 6
    assert f"before epoch {stopped_after + 1})" in failure["message"]
    assert runs_listing(tmp_path / "res", capsys)[0] == {SLOW: "failed"}
    claim = runner.claim_run(out.folder)
    try:
        assert runs_listing(tmp_path / "res", capsys)[0] == {SLOW: "claimed"}
    finally:
        claim.release()
    (out.folder / runner.ERROR).unlink()
    states, counts = runs_listing(tmp_path / "res", capsys)
    assert states == {SLOW: "stale"} and counts.endswith("0 done, 0 failed, 0 claimed, 1 stale")
    (again,) = runner.run_all([SLOW], data, [1], CPU, tmp_path / "res", budget="smoke", set_items=sets, progress=False)
    assert again.status == "done" and again.resumed_from == stopped_after
    assert f"from the checkpoint after epoch {stopped_after}" in capsys.readouterr().err
    assert_identical_records(ref.folder, again.folder)
    assert runs_listing(tmp_path / "res", capsys)[0] == {SLOW: "done"}


def test_run_timeout_on_dask_a_slow_run_stops_itself_and_a_hung_one_has_its_worker_restarted(
        test_models, client, tmp_path, capsys):
    from mmbench import grid

    data = load_dataset("synthetic")
    # 5 s: a fresh worker on a busy machine spends ~2 s setting a first run up, and the hang must come
    # after epoch 1 started (before it, the run's own check would end it)
    runs = grid.plan([HANG, SLOW, "mf-bpr"], data, [1], CPU, tmp_path, dataset_spec="synthetic", budget="smoke",
                     set_items=["epochs=50", "patience=50", "checkpoint_every=0"], run_timeout=5.0)
    t0 = time.monotonic()
    outcomes = grid.run_grid(runs, "synthetic", client=client, run_timeout=5.0, timeout_grace=2.0)
    assert time.monotonic() - t0 < 45  # the hung run (60 s in its first epoch) was not waited for
    hung, slow, plain = outcomes
    assert (hung.model, slow.model, plain.model) == (HANG, SLOW, "mf-bpr")
    assert plain.status == "done" and slow.status == "failed" and hung.status == "failed"
    by_run = json.loads((slow.folder / runner.ERROR).read_text())
    assert by_run["timeout"] is True and by_run["message"].startswith("RunTimeout") and "written_by" not in by_run
    by_client = json.loads((hung.folder / runner.ERROR).read_text())
    assert by_client["written_by"] == "client" and by_client["timeout"] is True
    assert "was restarted" in by_client["message"]
    err = capsys.readouterr().err
    assert f"[fail] {HANG} synthetic seed 1" in err and f"[fail] {SLOW} synthetic seed 1" in err
    # the restarted worker process took its claim with it
    claim = runner.claim_run(hung.folder, wait=10)
    assert claim is not None
    claim.release()
    client.wait_for_workers(2, timeout=60)


# --------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_stops_the_workers_releases_the_claims_and_a_rerun_resumes(tmp_path):
    results = tmp_path / "res"
    cmd = [sys.executable, "-m", "mmbench.cli", "run", "--models", "mf-bpr,lightgcn", "--dataset", "synthetic",
           "--workers", "2", "--no-progress", "--results", str(results),
           "--set", "epochs=1000000", "--set", "patience=1000000", "--set", "checkpoint_every=0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(tmp_path / "log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(list(results.rglob(CHECKPOINT))) < 2:  # both runs are training
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, (tmp_path / "log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "interrupted" in (tmp_path / "log").read_text()
    folders = sorted(p.parent for p in results.rglob(CHECKPOINT))
    for folder in folders:  # the workers are gone: nobody holds a claim
        claim = runner.claim_run(folder, wait=0)
        assert claim is not None, f"{folder} is still claimed"
        claim.release()
    epochs = {f.parent.name: runner.checkpoint_epoch(f) for f in folders}
    # The rerun resumes each run from its checkpoint; --run-timeout ends it again soon after.
    rerun = subprocess.run([*cmd, "--run-timeout", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 1, rerun.stderr
    for folder in folders:
        failure = json.loads((folder / runner.ERROR).read_text())
        assert failure["timeout"] is True and failure["resumed_from"] == epochs[folder.parent.name] >= 1


# --------------------------------------------------------------------------- planning, options

def test_longest_runs_first_by_the_newest_record_else_by_the_heavy_flag(tmp_path):
    from mmbench import grid

    ml100k = load_dataset("ml100k")
    runs = grid.plan(["mf-bpr", "grcn", "lightgcn"], ml100k, [1, 2], CPU, tmp_path, dataset_spec="ml100k",
                     budget="quick")
    assert [(r.model, r.seed) for r in runs] == [("grcn", 1), ("grcn", 2), ("lightgcn", 1), ("lightgcn", 2),
                                                 ("mf-bpr", 1), ("mf-bpr", 2)]
    assert all(r.estimate_from.startswith("record ") for r in runs)  # the committed reference records
    synthetic = load_dataset("synthetic")
    runs = grid.plan(["mf-bpr", "mmssl"], synthetic, [1], CPU, tmp_path, dataset_spec="synthetic", budget="smoke",
                     reference=None)
    assert [(r.model, r.estimate) for r in runs] == [("mmssl", grid.DEFAULT_ESTIMATE[True]),
                                                     ("mf-bpr", grid.DEFAULT_ESTIMATE[False])]
    assert {k: runs[0].payload[k] for k in ("model", "seed", "budget", "threads", "device", "dataset")} == \
        {"model": "mmssl", "seed": 1, "budget": "smoke", "threads": 1, "device": "cpu", "dataset": "synthetic"}


def test_workers_1_never_imports_dask(tmp_path):
    script = ("import sys\nfrom mmbench.cli import main\n"
              f"rc = main(['run', '--models', 'mf-bpr', '--dataset', 'synthetic', '--budget', 'smoke', "
              f"'--no-progress', '--results', {str(tmp_path)!r}])\n"
              "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.split("\n")[-2] == "0 []", done.stdout + done.stderr


@pytest.mark.parametrize("extra, message", [
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "--workers and --scheduler: choose one"),
    (["--scheduler", "127.0.0.1:8786"], "expected a Dask address"),
    (["--run-timeout", "0"], "--run-timeout"),
    (["--workers", "0"], "--workers"),
])
def test_bad_grid_options_are_one_line_and_exit_2(extra, message, tmp_path, capsys):
    assert main(["run", "--models", "mf-bpr", "--dataset", "synthetic", "--results", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_scheduler_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    from mmbench import grid

    monkeypatch.setattr(grid, "CONNECT_TIMEOUT", 2)
    assert main(["run", "--models", "mf-bpr", "--dataset", "synthetic", "--budget", "smoke",
                 "--scheduler", "tcp://127.0.0.1:9", "--results", str(tmp_path)]) == 2
    assert "cannot reach a Dask scheduler there" in capsys.readouterr().err
