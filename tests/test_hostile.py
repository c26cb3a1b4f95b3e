"""Hostile and mistaken input: one clear line, the right exit status, before any work, nothing left
behind, nothing run that the user did not write. One section per class of case:

1. checkpoints hold plain data only and load with weights_only (a planted one cannot run code);
2. bounded, typed reads (regular files, size limits, UTF-8 with or without BOM, YAML without aliases);
3. validation before work (options and config values, before loading or making a folder);
4. results that cannot be silently wrong (empty splits, uncovered recommendation lists, bad records);
5. caches that notice (content-checked parse cache, a hash cache keyed by inode and ctime);
6. several processes on one results folder (run claims), and a full disk;
7. exit semantics (one line, --debug for the traceback, refusals within --help's time + 1 s).
"""
from __future__ import annotations

from collections import Counter
from collections import OrderedDict
from pathlib import Path
import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
import yaml

import mmbench.atomic as atomic
import mmbench.runner as runner
from mmbench import check, records, safeio
from mmbench.atomic import atomic_write
from mmbench.cli import main
from mmbench.config import load_config_file, resolve
from mmbench.data import registry
from mmbench.errors import ConfigError, DataError, DiskFullError, MMBenchError
from mmbench.eval.external import read_recs_file
from mmbench.records import DatasetRef, RecordError, RunRecord
from mmbench.runner import train_one
from mmbench.train.trainer import CHECKPOINT, from_checkpoint, resolve_device, to_checkpoint
from model_helpers import assert_identical_records, ctrl_c_at_validation, interrupted_then_resumed
from test_trainer import cfg_for

# =========================================================================== 3 and 7: options, exit status
RUN = ["run", "--models", "mf-bpr", "--dataset", "synthetic", "--budget", "smoke", "--no-progress"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- validation before work
BEFORE_WORK = {
    "lr=nan": (["--set", "lr=nan"], "lr must be a finite number"),
    "lr=inf": (["--set", "lr=inf"], "lr must be a finite number"),
    "negative weight decay": (["--set", "weight_decay=-1"], "weight_decay"),
    "zero epochs": (["--set", "epochs=0"], "epochs"),
    "eval_ks=0": (["--set", "eval_ks=0"], "eval_ks"),
    "valid metric off eval_ks": (["--set", "valid_metric=recall@7"], "valid_metric"),
    "unknown key": (["--set", "learning_rate=0.1"], "unknown config key"),
    "negative seed": (["--seeds", "-1"], "--seeds"),
    "seed not an integer": (["--seeds", "1,x"], "--seeds"),
    "seed twice": (["--seeds", "1,1"], "twice"),
    "zero threads": (["--threads", "0"], "--threads"),
    "negative threads": (["--threads", "-4"], "--threads"),
    "meta device": (["--device", "meta"], "--device"),
    "device that is not here": (["--device", "cuda:7"], "--device"),
    "unknown model": (["--models", "lightgnc"], "did you mean"),
    "unknown dataset": (["--dataset", "tiktokk"], "unknown dataset"),
    "no such data directory": (["--dataset", "/no/such/dir"], "no such data directory"),
    "unknown budget": (["--budget", "weekend"], "--budget"),
}


@pytest.mark.parametrize("case", list(BEFORE_WORK))
def test_bad_options_and_config_values_are_refused_before_any_work(case, tmp_path, capsys, monkeypatch):
    import mmbench.data.registry as registry

    extra, expected = BEFORE_WORK[case]
    args = list(RUN)
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]

    def no_loading(*a, **k):  # the refusal must come before the data is loaded
        raise AssertionError("the dataset was loaded before the options were checked")

    monkeypatch.setattr(registry, "load_dataset", no_loading)
    results = tmp_path / "results"
    assert main(args + ["--results", str(results)]) == 2
    assert expected in one_line_error(capsys)
    assert not results.exists()  # no folder made


@pytest.mark.parametrize("where", ["below a regular file", "a regular file"])
def test_results_folder_that_cannot_be_written_is_refused_up_front(where, tmp_path, capsys, monkeypatch):
    import mmbench.data.registry as registry

    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    results = blocker / "results" if where == "below a regular file" else blocker
    monkeypatch.setattr(registry, "load_dataset", lambda *a, **k: pytest.fail("loaded the data"))
    assert main(RUN + ["--results", str(results)]) == 2
    assert "is not a folder" in one_line_error(capsys)
    assert blocker.read_text() == "not a folder"


def test_data_dependent_checks_come_right_after_loading(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(RUN + ["--set", "modalities=audio", "--results", str(results)]) == 2
    assert "modalities" in one_line_error(capsys)
    assert not results.exists()


@pytest.mark.parametrize("command", [
    ["report", "all", "--out"],  # an --out below a regular file
    ["data", "import", "tiktok", "--from", ".", "--data-dir"],
])
def test_output_folders_of_other_commands_are_checked_up_front(command, tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    assert main(command + [str(blocker / "out")] + (["--results", str(tmp_path)] if command[0] == "report" else [])) == 2
    assert "is not a folder" in one_line_error(capsys)


# --------------------------------------------------------------------------- exit semantics
def test_debug_shows_the_traceback_of_the_one_line_error(capsys):
    assert main(RUN + ["--seeds", "-1", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: --seeds")


def _seconds(args: list[str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mmbench.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    return time.perf_counter() - t0, proc.returncode, proc.stderr


def test_refusals_before_loading_take_the_time_of_help_plus_a_second(tmp_path):
    help_s = min(_seconds(["--help"])[0] for _ in range(2))
    for extra in (["--set", "lr=nan"], ["--device", "meta"], ["--seeds", "-3"]):
        seconds, code, err = _seconds(RUN + extra + ["--results", str(tmp_path / "r")])
        assert code == 2 and err.count("\n") == 1, err
        assert seconds <= help_s + 1.0, f"{extra}: {seconds:.2f}s vs --help {help_s:.2f}s"
    assert not (tmp_path / "r").exists()


# =========================================================================== 1 and 6: checkpoints, full disk
CKPT_CPU = resolve_device("cpu")
CKPT_RUN = ["run", "--models", "mf-bpr", "--dataset", "synthetic", "--budget", "smoke", "--no-progress",
       "--set", "checkpoint_every=0"]


def ckpt_run_folder(results: Path) -> Path:
    (folder,) = {p.parent for p in Path(results).rglob("*") if p.name in (records.RECORD, CHECKPOINT)}
    return folder


# --------------------------------------------------------------------------- the format
def test_numpy_values_round_trip_exactly_through_a_weights_only_checkpoint(tmp_path):
    np.random.seed(3)
    np.random.standard_normal()  # a cached gaussian in numpy's legacy state
    sd = torch.nn.BatchNorm1d(3).state_dict()  # an OrderedDict with `_metadata` (module versions)
    state = {
        "np_rng": np.random.get_state(),
        "arrays": [np.arange(5, dtype=np.int32), np.array([[1.5, -np.inf]], ">f8"), np.zeros((0, 3), np.uint64),
                   np.array([True, False]), np.array(2**63 - 1)],
        "scalars": (np.float64(0.1), np.int64(-7), np.bool_(True)),
        "plain": {"s": "x", "i": 2**70, "f": -np.inf, "b": False, "n": None, "t": torch.arange(3)},
        "model": sd,
    }
    path = tmp_path / "c.pt"
    torch.save(to_checkpoint(state), path)
    back = from_checkpoint(torch.load(path, weights_only=True))
    assert back["np_rng"][0] == "MT19937" and isinstance(back["np_rng"], tuple)
    np.random.set_state(back["np_rng"])
    expected = np.random.get_state()
    for a, b in zip(back["np_rng"], expected):
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
    for a, b in zip(back["arrays"], state["arrays"]):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes() and a.flags.writeable
    assert [type(v) for v in back["scalars"]] == [np.float64, np.int64, np.bool_]
    assert back["scalars"] == state["scalars"]
    assert {k: v for k, v in back["plain"].items() if k != "t"} == {k: v for k, v in state["plain"].items() if k != "t"}
    assert isinstance(back["model"], OrderedDict) and back["model"]._metadata == sd._metadata


def test_anything_that_is_not_plain_data_is_refused_when_saving():
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\]\['graph'\].*cannot be checkpointed"):
        to_checkpoint({"extra": {"graph": object()}})
    with pytest.raises(TypeError, match="objects"):
        to_checkpoint({"extra": np.array([object()])})


@pytest.mark.parametrize("name, sets", [
    ("mf-bpr", []),
    ("mmssl-official", ["batch_size=32", "topk_rate=0.05", "rebuild_every=3"]),
])
def test_real_checkpoints_load_with_weights_only_and_resume_exactly(name, sets, synthetic, tmp_path, monkeypatch,
                                                                    capsys):
    """mmssl-official keeps numpy arrays in `extra_state` (the top-k pairs pending until its next
    graph rebuild): its checkpoint loads with weights_only=True, and the resumed run equals the
    uninterrupted one."""
    cfg = cfg_for(name, "epochs=4", "patience=0", "checkpoint_every=0", *sets)
    train_one(name, synthetic, cfg, 5, CKPT_CPU, tmp_path / "full" / "run", progress=False)
    saved = {}

    def loads():
        state = torch.load(tmp_path / "resumed" / "run" / CHECKPOINT, weights_only=True)
        assert state["epoch"] == 2
        if name == "mmssl-official":
            assert any(lst for lst in from_checkpoint(state["extra"])["pending"])
        saved["seconds"] = [h["train_seconds"] for h in state["history"]]

    resumed = interrupted_then_resumed(
        monkeypatch, lambda: train_one(name, synthetic, cfg, 5, CKPT_CPU, tmp_path / "resumed" / "run", progress=False),
        between=loads)
    assert "[warn]" not in capsys.readouterr().err
    assert [h["train_seconds"] for h in resumed["history"][:2]] == saved["seconds"]  # resumed, not restarted
    assert_identical_records(tmp_path / "resumed" / "run", tmp_path / "full" / "run")


# --------------------------------------------------------------------------- unusable checkpoints
class Planted:
    """Unpickling this runs code: it creates the folder `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant_code(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "model": {}, "payload": Planted(marker)}, path)
    torch.load(path, weights_only=False)  # the file is dangerous: the old loader ran it
    assert marker.is_dir()
    marker.rmdir()


BAD_CHECKPOINTS = {
    "planted code": lambda path, marker: plant_code(path, marker),
    "garbage": lambda path, marker: path.write_bytes(b"not a checkpoint" * 100),
    "truncated": lambda path, marker: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]),
    "no state": lambda path, marker: torch.save({"epoch": 1}, path),
    "another model": lambda path, marker: torch.save(
        {**torch.load(path, weights_only=True), "model": {"users.weight": torch.zeros(2, 2)}}, path),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_an_unusable_checkpoint_is_set_aside_and_the_run_starts_fresh(case, tmp_path, capsys):
    assert main(CKPT_RUN + ["--results", str(tmp_path / "ref")]) == 0
    done = ckpt_run_folder(tmp_path / "ref")
    _write_epoch_one_checkpoint(tmp_path / "res")
    folder = ckpt_run_folder(tmp_path / "res")
    marker = tmp_path / "MARKER"
    BAD_CHECKPOINTS[case](folder / CHECKPOINT, marker)
    capsys.readouterr()

    assert main(CKPT_RUN + ["--results", str(tmp_path / "res")]) == 0
    err = capsys.readouterr().err
    assert not marker.exists(), "the planted checkpoint ran code"
    warns = [line for line in err.splitlines() if line.startswith("[warn]")]
    assert len(warns) == 1 and "cannot be loaded" in warns[0] and "starting fresh" in warns[0], err
    assert "Traceback" not in err
    (aside,) = folder.glob(f"{CHECKPOINT}.bad-*")
    assert aside.name[len(CHECKPOINT) + 5:].endswith("Z")
    assert_identical_records(folder, done)  # fresh, so the same as a run that never had a checkpoint


def _write_epoch_one_checkpoint(results: Path) -> None:
    """Leave under `results` the checkpoint a run interrupted in its second epoch leaves."""
    with ctrl_c_at_validation(2):
        assert main(CKPT_RUN + ["--results", str(results)]) == 130
    assert torch.load(ckpt_run_folder(results) / CHECKPOINT, weights_only=True)["epoch"] == 1


# --------------------------------------------------------------------------- a full disk
def test_a_full_disk_during_a_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def half_then_full(fh):
        fh.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as info:
        atomic_write(target, half_then_full)
    assert isinstance(info.value, MMBenchError)
    assert str(info.value) == f"{target}: no space left on device (nothing half-written; the previous f.bin, if any, is kept)"
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_full_quota_at_fsync_is_named_too(tmp_path, monkeypatch):
    def no_quota(fd):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(atomic.os, "fsync", no_quota)
    with pytest.raises(DiskFullError, match="disk quota exceeded"):
        atomic_write(tmp_path / "g.bin", b"data")
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    def broken(fh):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "h.bin", broken)
    assert not isinstance(info.value, DiskFullError) and list(tmp_path.iterdir()) == []


def fail_when_writing(monkeypatch, name: str, at: int) -> dict:
    """Make the `at`-th fsync of a temporary file for `name` fail with ENOSPC."""
    orig, seen = os.fsync, {"n": 0}

    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
            seen["n"] += 1
            if seen["n"] == at:
                raise OSError(errno.ENOSPC, "No space left on device")
        return orig(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return seen


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a descriptor's file")
@pytest.mark.parametrize("name, at", [(CHECKPOINT, 2), (records.RECORD, 1)])
def test_run_stops_with_one_line_on_a_full_disk_and_resumes_after(name, at, tmp_path, monkeypatch, capsys):
    res = ["--results", str(tmp_path / "res")]
    assert main(CKPT_RUN + ["--results", str(tmp_path / "ref")]) == 0
    capsys.readouterr()
    fail_when_writing(monkeypatch, name, at)
    assert main(CKPT_RUN + res) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "Traceback"))]
    folder = ckpt_run_folder(tmp_path / "res")
    note = ("the last complete checkpoint is kept" if name == CHECKPOINT
            else f"the previous {name}, if any, is kept")
    assert err == [f"error: {folder / name}: no space left on device (nothing half-written; {note})"]
    assert not list(folder.glob(".*.tmp")) and not (folder / records.RECORD).exists()
    assert torch.load(folder / CHECKPOINT, weights_only=True)["epoch"] == (1 if name == CHECKPOINT else 2)
    monkeypatch.undo()
    assert main(CKPT_RUN + res) == 0
    assert "[resume] mf-bpr seed 2024" in capsys.readouterr().err
    assert_identical_records(folder, ckpt_run_folder(tmp_path / "ref"))


# =========================================================================== 2, 4, 5: reads, results, caches
ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_CACHE_DIR", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- helpers

def within(fn, seconds: float = 10, fifos=()):
    """fn() in a daemon thread; a call still running after `seconds` fails the test (after opening
    the FIFOs for writing, which releases a reader blocked on them)."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        for f in fifos:
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        pytest.fail(f"still running after {seconds} s: it blocked or read without bound")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def cli_code(capsys, *argv, seconds: float = 30) -> tuple[int, str]:
    """(exit code, stderr) of `mmbench ARGV` run in-process under a time limit."""
    capsys.readouterr()
    code = within(lambda: main(list(argv)), seconds)
    return code, capsys.readouterr().err


def one_line_of(err: str, *needles: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert len(err) < 600, err
    for n in needles:
        assert n in err, err
    return err


def mkfifo(path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (a hole)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def write_split_dir(d: Path, train=None, valid=None, test=None) -> Path:
    """An MMSSL-layout dataset directory: users 0 and 1 have test items, user 2 has none."""
    d.mkdir(parents=True, exist_ok=True)
    splits = {"train.json": {"0": [0, 1], "1": [2], "2": [3]} if train is None else train,
              "val.json": {"0": [2], "1": [0]} if valid is None else valid,
              "test.json": {"0": [3], "1": [1]} if test is None else test}
    for name, content in splits.items():
        (d / name).write_text(json.dumps(content))
    return d


def record_for_reads(**changes) -> RunRecord:
    rec = RunRecord(model="mf-bpr", dataset=DatasetRef(name="toy", fingerprint="ab" * 32), config={"epochs": 2},
                    config_hash="h", seed=1, budget="smoke", threads=1, device="cpu", run_id="x-seed1",
                    protocol={}, env={}, history=[], best_epoch=1, valid={"recall@20": 0.25},
                    test={"recall@20": 0.5}, n_test_users=3, timings={}, peak_memory_mb=1.0,
                    created="2026-01-01T00:00:00+00:00")
    return dataclasses.replace(rec, **changes)


READ_ARRAYS = {"test_users": np.arange(3), "test/recall@20": np.array([0.0, 0.5, 1.0])}
READ_REFERENCE = {"dataset": "toy", "budget": "smoke", "split": "test", "tolerance": {"recall@20": 0.01},
             "expect": {"mf-bpr": {"config_hash": "h", "metrics": {"recall@20": 0.5}}}}


# --------------------------------------------------------------------------- FIFOs, devices, directories

def test_dev_zero_is_refused_at_once(tmp_path, capsys):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    code, err = cli_code(capsys, "run", "--models", "mf-bpr", "--dataset", "synthetic", "--budget", "smoke",
                    "--config", "/dev/zero", "--results", str(tmp_path / "res"), "--no-progress")
    assert code == 2 and not (tmp_path / "res" / "runs").exists()
    one_line_of(err, "/dev/zero", "character device")
    code, err = cli_code(capsys, "evaluate", "--dataset", "synthetic", "--recs", "/dev/zero")
    assert code == 2
    one_line_of(err, "/dev/zero", "character device")
    code, err = cli_code(capsys, "check", "--results", str(tmp_path), "--against", "/dev/zero")
    assert code == 2
    one_line_of(err, "/dev/zero", "character device")


def _cli_subprocess(tmp_path, *argv) -> subprocess.CompletedProcess:
    code = f"import sys; from mmbench.cli import main; sys.exit(main({list(argv)!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "MMBENCH_CACHE_DIR": str(tmp_path / "cache")})


def test_fifo_as_config_and_recs_is_refused_at_once(tmp_path):
    """A FIFO with no writer: open() for reading would block forever. Run as a subprocess so a
    regression shows as a timeout, not a hung test session."""
    fifo = mkfifo(tmp_path / "over.yaml")
    for argv in (["run", "--models", "mf-bpr", "--dataset", "synthetic", "--budget", "smoke",
                  "--config", str(fifo), "--results", str(tmp_path / "res"), "--no-progress"],
                 ["evaluate", "--dataset", "synthetic", "--recs", str(fifo)]):
        start = time.perf_counter()
        try:
            done = _cli_subprocess(tmp_path, *argv)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mmbench {argv[0]} hung on a FIFO")
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "FIFO" in done.stderr and str(fifo) in done.stderr
        assert time.perf_counter() - start < 30


def test_fifo_is_refused_in_process_everywhere(tmp_path):
    """Every reader of user-named files, called directly: config, reference, record, recs, JSON
    split, checksum. None may block."""
    fifo = mkfifo(tmp_path / "pipe")
    calls = {
        "config": lambda: load_config_file(fifo),
        "reference": lambda: check.read_reference(fifo),
        "record": lambda: records.read_record(fifo),
        "recs": lambda: read_recs_file(fifo, registry.load_dataset("synthetic")),
        "sha256": lambda: registry.sha256_file(fifo),
        "checksum": lambda: registry.file_checksum(fifo),
        "yaml": lambda: safeio.load_yaml(fifo),
    }
    for what, call in calls.items():
        with pytest.raises(MMBenchError, match="FIFO") as info:
            within(call, 10, fifos=[fifo])
        assert "\n" not in str(info.value) and str(fifo) in str(info.value), what


def test_directory_is_refused(tmp_path, capsys):
    d = tmp_path / "adir"
    d.mkdir()
    code, err = cli_code(capsys, "evaluate", "--dataset", "synthetic", "--recs", str(d))
    assert code == 2
    one_line_of(err, str(d), "a directory")
    code, err = cli_code(capsys, "check", "--results", str(tmp_path), "--against", str(d))
    assert code == 2
    one_line_of(err, str(d), "a directory")
    with pytest.raises(ConfigError, match="a directory, not a regular file"):
        load_config_file(d)


def test_dataset_file_that_is_a_fifo_is_refused(tmp_path):
    d = write_split_dir(tmp_path / "ds")
    (d / "test.json").unlink()
    fifo = mkfifo(d / "test.json")
    with pytest.raises(DataError, match=r"test\.json: a FIFO") as info:
        within(lambda: registry.load_dataset(str(d)), 10, fifos=[fifo])
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- size limits

def test_oversized_files_are_refused_before_reading(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 * MiB) + "\n")
    with pytest.raises(ConfigError, match=r"at most 1 MiB") as info:
        load_config_file(big)
    assert str(big) in str(info.value)
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({**READ_REFERENCE, "pad": "x" * (2 * MiB)}))
    code, err = cli_code(capsys, "check", "--results", str(tmp_path), "--against", str(ref))
    assert code == 2
    one_line_of(err, str(ref), "at most 1 MiB")
    (tmp_path / "run").mkdir()
    rec = sparse_file(tmp_path / "run" / "record.json", 64 * MiB + 1)
    with pytest.raises(RecordError, match=r"at most 64 MiB"):
        within(lambda: records.read_record(rec), 10)
    recs = sparse_file(tmp_path / "recs.tsv", 1024 * MiB + 1)
    code, err = cli_code(capsys, "evaluate", "--dataset", "synthetic", "--recs", str(recs), seconds=20)
    assert code == 2
    one_line_of(err, str(recs), "at most 1 GiB")


class _Spy:
    """A file object that records the sizes asked of `read`."""

    def __init__(self, fh, sizes):
        self.fh, self.sizes = fh, sizes

    def read(self, n=-1):
        self.sizes.append(n)
        return self.fh.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_reads_are_bounded_even_if_the_file_grows(tmp_path, monkeypatch):
    """The stat said small, the file is large by the time it is read: at most limit + 1 bytes are
    read, and the excess is still refused."""
    p = sparse_file(tmp_path / "c.yaml", 50 * MiB)
    sizes = []
    real_open = safeio.open_regular
    monkeypatch.setattr(safeio, "open_regular", lambda *a, **k: _Spy(real_open(*a, **k), sizes))
    monkeypatch.setattr(safeio, "_check_stat", lambda st, kind, where, error: None)  # the stat "lies"
    with pytest.raises(ConfigError, match=r"more than 1 MiB"):
        load_config_file(p)
    assert sizes == [MiB + 1]


# --------------------------------------------------------------------------- encodings

def test_latin1_config_names_the_byte_offset(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"lr: 0.01\nname: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(p)
    msg = str(info.value)
    assert msg == f"config file {p}: not UTF-8 text (byte 0xe9 at offset 18)" or (
        "not UTF-8" in msg and "offset 18" in msg), msg


def test_latin1_recs_and_reference_name_the_byte_offset(tmp_path, capsys):
    d = write_split_dir(tmp_path / "ds")
    recs = tmp_path / "recs.tsv"
    recs.write_bytes(b"\xef\xbb\xbf0\t3\n1\t\xe92\n")  # BOM (3 bytes) + 4 + 2 -> the bad byte at 9
    code, err = cli_code(capsys, "evaluate", "--dataset", str(d), "--recs", str(recs))
    assert code == 2
    one_line_of(err, str(recs), "not UTF-8", "offset 9")
    ref = tmp_path / "ref.json"
    ref.write_bytes(b'{"dataset": "caf\xe9"}')
    code, err = cli_code(capsys, "check", "--results", str(tmp_path), "--against", str(ref))
    assert code == 2
    one_line_of(err, str(ref), "not UTF-8", "offset 16")


def test_bom_recs_file_parses_the_first_user(tmp_path, capsys):
    d = write_split_dir(tmp_path / "ds")
    ds = registry.load_dataset(str(d))
    recs = tmp_path / "recs.tsv"
    recs.write_bytes("\ufeff0\t3,2\r\n1\t1\r\n".encode())
    assert read_recs_file(recs, ds) == {0: [3, 2], 1: [1]}
    code, err = cli_code(capsys, "evaluate", "--dataset", str(d), "--recs", str(recs), "--ks", "1")
    assert code == 0, err


def test_bom_yaml_config_works(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes("\ufeffepochs: 3\nlr: 0.01\n".encode())
    data = load_config_file(p)
    assert data == {"epochs": 3, "lr": 0.01}
    cfg = resolve({}, file_overrides=data, config_path=p)
    assert cfg.epochs == 3 and cfg.lr == 0.01


def test_bom_json_files_work(tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_bytes(b"\xef\xbb\xbf" + json.dumps(READ_REFERENCE).encode())
    assert check.read_reference(ref)["dataset"] == "toy"
    d = write_split_dir(tmp_path / "ds")
    (d / "test.json").write_bytes(b"\xef\xbb\xbf" + (d / "test.json").read_bytes())
    assert registry.load_dataset(str(d)).test.nnz == 2


# --------------------------------------------------------------------------- YAML

@pytest.mark.parametrize("body, where", [
    ("a: &x 1\nb: *x\n", "at a"),
    ("eval_ks: [&l [1, 2], *l]\n", "at eval_ks[0]"),
    ("base: &b {lr: 0.1}\nother:\n  <<: *b\n", "at base"),
])
def test_yaml_anchors_and_aliases_are_refused(tmp_path, body, where):
    p = tmp_path / "c.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config_file(p)
    msg = str(info.value)
    assert msg.startswith(f"config file {p}: aliases are not allowed") and where in msg and "\n" not in msg


def test_yaml_alias_bomb_is_refused_before_construction(tmp_path, monkeypatch):
    levels = "".join(f'l{n}: &l{n} [{", ".join([f"*l{n - 1}"] * 9)}]\n' for n in range(1, 12))
    p = tmp_path / "bomb.yaml"
    p.write_text("l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + levels)
    built = []
    monkeypatch.setattr(safeio.NoAliasLoader, "construct_document",
                        lambda self, node: built.append(node) or {}, raising=False)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases are not allowed"):
        load_config_file(p)
    assert time.perf_counter() - start < 1 and built == []


def test_yaml_python_tags_stay_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("x: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config_file(p)


def test_dataset_card_with_aliases_is_refused(tmp_path, monkeypatch):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "toy.yaml").write_text("name: toy\nlayout: synthetic\nparams: &p {seed: 1}\nother: *p\n")
    monkeypatch.setattr(registry, "cards_dir", lambda: cards)
    with pytest.raises(ConfigError, match=r"dataset card .*toy\.yaml: aliases are not allowed"):
        registry.list_cards()


# --------------------------------------------------------------------------- message length

def test_hostile_values_are_quoted_short(tmp_path):
    d = write_split_dir(tmp_path / "ds")
    ds = registry.load_dataset(str(d))
    for body in ("9" * 1_000_000 + "\t1\n", "x" * 1_000_000 + "\n", "0\t" + "7" * 1_000_000 + "\n",
                 "z" * 1_000_000 + "\t1\n"):
        f = tmp_path / "recs.tsv"
        f.write_text(body)
        with pytest.raises(DataError) as info:
            read_recs_file(f, ds)
        assert len(str(info.value)) < 100 + len(str(f)) + 80, str(info.value)[:300]


# --------------------------------------------------------------------------- empty splits

@pytest.mark.parametrize("split, file", [("test", "test.json"), ("valid", "val.json"), ("train", "train.json")])
def test_empty_split_is_refused_at_load(tmp_path, capsys, split, file):
    d = write_split_dir(tmp_path / "ds", **{split: {}})
    with pytest.raises(DataError, match=rf"{file}: the {split} split is empty") as info:
        registry.load_dataset(str(d))
    assert "\n" not in str(info.value)
    recs = tmp_path / "recs.tsv"
    recs.write_text("0\t3\n")
    code, err = cli_code(capsys, "evaluate", "--dataset", str(d), "--recs", str(recs))
    assert code == 2
    one_line_of(err, str(d / file), f"the {split} split is empty")


def _toy_cards(tmp_path, monkeypatch, **inters: str) -> Path:
    """Private MMRec cards `name` -> files in tmp_path/src/<name>/ (one `.inter`, one feature file)."""
    cards = tmp_path / "cards"
    cards.mkdir(exist_ok=True)
    for name, text in inters.items():
        src = tmp_path / "src" / name
        src.mkdir(parents=True, exist_ok=True)
        (src / f"{name}.inter").write_text(text)
        np.save(src / "image_feat.npy", np.arange(10, dtype=np.float32).reshape(5, 2) + len(name))
        files = {f: hashlib.sha256((src / f).read_bytes()).hexdigest() for f in (f"{name}.inter", "image_feat.npy")}
        card = {"name": name, "layout": "mmrec", "directory": name, "reader": {"inter_file": f"{name}.inter"},
                "files": files, "modalities": {"image": {"file": "image_feat.npy", "dim": 2}}}
        (cards / f"{name}.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setattr(registry, "cards_dir", lambda: cards)
    return tmp_path / "src"


INTER_HEADER = "userID\titemID\tx_label\n"
TOY_INTER = INTER_HEADER + "0\t0\t0\n0\t1\t0\n1\t1\t0\n0\t2\t1\n1\t3\t2\n"
TOY2 = INTER_HEADER + "0\t4\t0\n1\t0\t0\n2\t1\t0\n2\t2\t1\n0\t3\t2\n1\t2\t2\n"


def test_card_with_no_test_rows_is_refused_naming_the_file(tmp_path, monkeypatch):
    src = _toy_cards(tmp_path, monkeypatch, notest=INTER_HEADER + "0\t0\t0\n0\t1\t1\n")
    with pytest.raises(DataError, match=r"notest\.inter \(x_label 2\): the test split is empty"):
        registry.load_dataset("notest", data_dir=src)
    assert not list((tmp_path / "cache").glob("notest-*.npz"))  # nothing cached


# --------------------------------------------------------------------------- evaluate coverage

def test_evaluate_reports_partial_coverage(tmp_path, capsys):
    d = write_split_dir(tmp_path / "ds")
    recs = tmp_path / "recs.tsv"
    recs.write_text("0\t3,2\n2\t0\n")
    capsys.readouterr()
    assert within(lambda: main(["evaluate", "--dataset", str(d), "--recs", str(recs), "--ks", "1"])) == 0
    out = capsys.readouterr().out
    assert "scored 1 of 2 test users; 1 without a list score 0" in out
    assert "1 list(s) for users without test items not scored" in out
    recs.write_text("0\t3\n1\t1\n")
    assert within(lambda: main(["evaluate", "--dataset", str(d), "--recs", str(recs), "--ks", "1"])) == 0
    assert "scored" not in capsys.readouterr().out  # full coverage: nothing to report


@pytest.mark.parametrize("body, needle", [
    ("# only a comment\n\n", "no recommendation lists"),
    ("", "no recommendation lists"),
    ("0\t\n1\t\n", "all 2 recommendation lists are empty"),
    ("2\t0,1\n", "none of its 1 lists is for one of the 2 users with test items"),
])
def test_evaluate_refuses_lists_that_score_nobody(tmp_path, capsys, body, needle):
    d = write_split_dir(tmp_path / "ds")
    recs = tmp_path / "recs.tsv"
    recs.write_text(body)
    code, err = cli_code(capsys, "evaluate", "--dataset", str(d), "--recs", str(recs))
    assert code == 2
    one_line_of(err, str(recs), needle)


# --------------------------------------------------------------------------- check

def _results_with_record(tmp_path) -> tuple[Path, Path, Path]:
    res = tmp_path / "res"
    folder = records.run_dir(res, "toy", "mf-bpr", "x-seed1", "ab" * 32)
    records.write_record(folder, record_for_reads(), READ_ARRAYS)
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(READ_REFERENCE))
    return res, folder, ref


def _schema(folder):
    raw = json.loads((folder / "record.json").read_text())
    raw["schema_version"] = 99
    (folder / "record.json").write_text(json.dumps(raw))


def _nan_metric(folder):
    p = folder / "record.json"
    p.write_text(p.read_text().replace('"recall@20": 0.5', '"recall@20": NaN'))


def _arrays(folder):
    (folder / "arrays.npz").write_bytes(records.arrays_bytes({"other": np.arange(2)}))


@pytest.mark.parametrize("damage, file, needle", [
    (lambda f: (f / "record.json").write_text("{not json"), "record.json", "malformed run record"),
    (_schema, "record.json", "unsupported record schema_version"),
    (_nan_metric, "record.json", "finite"),
    (_arrays, "arrays.npz", "does not match its record.json"),
    (lambda f: (f / "record.json").write_bytes(b'{"model": "caf\xe9"}'), "record.json", "not UTF-8"),
])
def test_check_refuses_a_record_it_cannot_trust(tmp_path, capsys, damage, file, needle):
    res, folder, ref = _results_with_record(tmp_path)
    code, err = cli_code(capsys, "check", "--results", str(res), "--against", str(ref))
    assert code == 0, err
    damage(folder)
    code, err = cli_code(capsys, "check", "--results", str(res), "--against", str(ref))
    assert code == 2
    one_line_of(err, str(folder / file), needle)


@pytest.mark.parametrize("tolerance", ["nan", "inf", "-0.1"])
def test_check_write_refuses_non_finite_tolerance(tmp_path, capsys, tolerance):
    res, _, _ = _results_with_record(tmp_path)
    out = tmp_path / "new.json"
    code, err = cli_code(capsys, "check", "--write", "--results", str(res), "--against", str(out),
                    "--dataset", "toy", f"--tolerance={tolerance}")
    assert code == 2 and not out.exists()
    one_line_of(err, str(out), "refusing to write tolerance")


def test_check_write_refuses_non_finite_metric(tmp_path, capsys, monkeypatch):
    res, _, _ = _results_with_record(tmp_path)
    obs = check.Observed("h", "smoke", [1], {"recall@20": float("nan"), "precision@20": 0.1, "ndcg@20": 0.1})
    monkeypatch.setattr(check, "collect", lambda *a, **k: ("ab" * 32, {"mf-bpr": obs}))
    out = tmp_path / "new.json"
    code, err = cli_code(capsys, "check", "--write", "--results", str(res), "--against", str(out), "--dataset", "toy")
    assert code == 2 and not out.exists()
    one_line_of(err, "expect.mf-bpr.recall@20", "nan", "must be finite")


def test_check_write_then_check_roundtrip(tmp_path, capsys):
    res, _, _ = _results_with_record(tmp_path)
    out = tmp_path / "new.json"
    code, err = cli_code(capsys, "check", "--write", "--results", str(res), "--against", str(out),
                    "--dataset", "toy", "--metrics", "recall@20")
    assert code == 0, err
    code, err = cli_code(capsys, "check", "--results", str(res), "--against", str(out))
    assert code == 0, err


# --------------------------------------------------------------------------- the parsed-dataset cache

def _npz(tmp_path, name: str) -> Path:
    (path,) = (tmp_path / "cache").glob(f"{name}-*.npz")
    return path


def _rewrite(path: Path, change) -> None:
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    change(arrays)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _same(a, b) -> bool:
    return ((a.n_users, a.n_items) == (b.n_users, b.n_items)
            and all((a.split(s) != b.split(s)).nnz == 0 for s in ("train", "valid", "test"))
            and a.features.keys() == b.features.keys()
            and all(np.array_equal(a.features[m], b.features[m]) for m in a.features))


def _test_into_train(arrays):
    arrays["test_indices"][0] = arrays["train_indices"][0]  # user 0's first train item now in test too
    arrays["test_indptr"][:] = [0, 1, 1]


def _flip_bytes(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 3] ^= 0xFF
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("corrupt", [
    lambda a: a["train_indices"].__setitem__(0, 99),           # item id out of range
    lambda a: a.__setitem__("train_indptr", a["train_indptr"][:-1]),  # wrong shape
    _test_into_train,                                           # a pair in two splits
    lambda a: a["feature_0"].__setitem__((0, 0), np.nan),       # non-finite feature
    lambda a: a.__setitem__("test_indptr", np.zeros_like(a["test_indptr"])) or a.__setitem__(
        "test_indices", a["test_indices"][:0]),                # the test split emptied
    "bytes",                                                    # damage on disk (zip CRC)
])
def test_corrupted_cache_is_ignored_and_rewritten(tmp_path, monkeypatch, corrupt):
    src = _toy_cards(tmp_path, monkeypatch, toy=TOY_INTER)
    fresh = registry.load_dataset("toy", data_dir=src)
    path = _npz(tmp_path, "toy")
    good = path.read_bytes()
    if corrupt == "bytes":
        _flip_bytes(path)
    else:
        _rewrite(path, corrupt)
    assert path.read_bytes() != good
    again = registry.load_dataset("toy", data_dir=src)
    assert _same(again, fresh) and again.fingerprint == fresh.fingerprint
    assert dataclasses.replace(again).fingerprint == fresh.fingerprint  # a full re-hash agrees
    assert path.read_bytes() == good  # rewritten from the files


def test_another_datasets_cache_under_the_right_name_is_rebuilt(tmp_path, monkeypatch):
    src = _toy_cards(tmp_path, monkeypatch, toy=TOY_INTER, toy2=TOY2)
    toy = registry.load_dataset("toy", data_dir=src)
    toy2 = registry.load_dataset("toy2", data_dir=src)
    path = _npz(tmp_path, "toy")
    path.write_bytes(_npz(tmp_path, "toy2").read_bytes())  # swapped in under toy's name
    again = registry.load_dataset("toy", data_dir=src)
    assert _same(again, toy) and not _same(again, toy2) and again.fingerprint == toy.fingerprint
    with np.load(path) as z:
        header = json.loads(str(z["header"][()]))
    assert header["name"] == "toy" and header["files"] == dict(toy.checksums)


def test_cache_header_stores_checksums_and_digests(tmp_path, monkeypatch):
    src = _toy_cards(tmp_path, monkeypatch, toy=TOY_INTER)
    ds = registry.load_dataset("toy", data_dir=src)
    with np.load(_npz(tmp_path, "toy")) as z:
        header = json.loads(str(z["header"][()]))
    assert header["files"] == dict(ds.checksums) and header["digests"] == ds.part_digests()
    assert _npz(tmp_path, "toy").name == f"toy-{header['cache_key']}.npz"


# --------------------------------------------------------------------------- the file-hash cache

def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_same_size_rewrite_with_restored_mtime_is_rehashed(tmp_path):
    """`cp -p` of a changed file: same size, same mtime, different bytes."""
    p = tmp_path / "data.bin"
    p.write_bytes(b"A" * 4096)
    first = registry.file_checksum(p)
    assert first == _sha(p)
    st = os.stat(p)
    time.sleep(0.05)  # past the coarse ctime clock's tick
    with open(p, "r+b") as fh:  # in place: the inode stays
        fh.write(b"B" * 4096)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(p).st_size, os.stat(p).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert registry.file_checksum(p) == _sha(p) != first
    # replaced by rename (another inode), size and mtime restored
    tmp = tmp_path / "new.bin"
    tmp.write_bytes(b"C" * 4096)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, p)
    assert registry.file_checksum(p) == _sha(p) == hashlib.sha256(b"C" * 4096).hexdigest()


def test_hash_cache_hits_and_is_keyed_by_inode_and_ctime(tmp_path, monkeypatch):
    p = tmp_path / "data.bin"
    p.write_bytes(b"x" * 100)
    registry.file_checksum(p)
    table = json.loads((tmp_path / "cache" / registry.HASH_CACHE).read_text())
    st = os.stat(p)
    assert table[str(p.resolve())]["stamp"] == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    monkeypatch.setattr(registry, "sha256_file", lambda path: pytest.fail("re-hashed an unchanged file"))
    assert registry.file_checksum(p) == _sha(p)


def test_concurrent_writers_keep_each_others_entries(tmp_path):
    n = 60
    for who in "ab":
        folder = tmp_path / who
        folder.mkdir()
        for k in range(n):
            (folder / f"f{k}").write_bytes(f"{who}{k}".encode())
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from mmbench.data.registry import file_checksum
        for p in sorted(Path(sys.argv[1]).iterdir()):
            file_checksum(p)
    """)
    env = {**os.environ, "MMBENCH_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / who)], env=env) for who in "ab"]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    table = json.loads((tmp_path / "cache" / registry.HASH_CACHE).read_text())
    want = {str((tmp_path / who / f"f{k}").resolve()) for who in "ab" for k in range(n)}
    assert want <= set(table), f"{len(want - set(table))} entries lost"
    assert all(table[k]["sha256"] == _sha(Path(k)) for k in want)


# =========================================================================== 6: one results folder, several processes
CONC_MODELS = "mf-bpr,lightgcn,vbpr,lightgcn-m"
CONC_SEEDS = "1,2"
CONC_RUN = ["run", "--models", CONC_MODELS, "--seeds", CONC_SEEDS, "--dataset", "synthetic", "--budget", "smoke", "--no-progress"]
CONC_ONE = ["run", "--models", "mf-bpr", "--dataset", "synthetic", "--budget", "smoke", "--no-progress",
       "--set", "checkpoint_every=0"]
CONC_LINE = re.compile(r"^\[(train|resume|busy|skip)\] (\S+) seed (\d+)")
CONC_HOLD = ("import sys, time\nfrom filelock import FileLock\nlock = FileLock(sys.argv[1])\n"
        "lock.acquire(timeout=0)\nprint('held', flush=True)\ntime.sleep(600)\n")


def what_happened(stderr: str) -> dict[tuple[str, int], str]:
    """(model, seed) -> what one process did with that run: train, resume, busy or skip."""
    seen: dict[tuple[str, int], str] = {}
    for line in stderr.splitlines():
        m = CONC_LINE.match(line)
        if m:
            key = (m.group(2), int(m.group(3)))
            assert key not in seen, f"{key} reported twice by one process:\n{stderr}"
            seen[key] = m.group(1)
    return seen


def relative_records(results: Path) -> dict[Path, Path]:
    return {f.relative_to(results): f for f in records.find_records(results)}


def test_two_processes_train_each_run_once_and_match_a_sequential_run(tmp_path, capsys):
    shared = tmp_path / "shared"
    cmd = [sys.executable, "-m", "mmbench.cli", *CONC_RUN, "--results", str(shared)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    runs = {(m, int(s)) for m in CONC_MODELS.split(",") for s in CONC_SEEDS.split(",")}
    seen = [what_happened(err) for _, err in outs]
    for run in runs:
        did = Counter(s.get(run) for s in seen)
        assert did["train"] == 1, (run, seen)  # exactly one process trained it ...
        assert did["busy"] + did["skip"] == 1, (run, seen)  # ... the other left it alone
    for (out, _), s in zip(outs, seen):  # each summary says BUSY for the runs the other was training
        assert out.count("BUSY") == sum(v == "busy" for v in s.values())

    assert main([*CONC_RUN, "--results", str(tmp_path / "sequential")]) == 0
    together, sequential = relative_records(shared), relative_records(tmp_path / "sequential")
    assert sorted(together) == sorted(sequential) and len(together) == len(runs)
    for rel in together:
        assert_identical_records(together[rel], sequential[rel])
    assert not list(shared.rglob(CHECKPOINT)) and not list(shared.rglob("*.tmp"))


def interrupt_after_epoch_one(monkeypatch, results: Path) -> Path:
    """`mmbench run` interrupted in its second epoch: the run folder holds the epoch-1 checkpoint."""
    with ctrl_c_at_validation(2):
        assert main([*CONC_ONE, "--results", str(results)]) == 130
    (ckpt,) = results.rglob(CHECKPOINT)
    return ckpt.parent


def test_a_live_owners_run_is_busy_and_a_dead_owners_run_is_taken_over_and_resumed(tmp_path, monkeypatch, capsys):
    assert main([*CONC_ONE, "--results", str(tmp_path / "ref")]) == 0
    (done,) = records.find_records(tmp_path / "ref")
    folder = interrupt_after_epoch_one(monkeypatch, tmp_path / "res")
    capsys.readouterr()
    holder = subprocess.Popen([sys.executable, "-c", CONC_HOLD, str(folder / runner.LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main([*CONC_ONE, "--results", str(tmp_path / "res")]) == 0  # busy is not a failure
        out, err = capsys.readouterr()
        assert f"[busy] mf-bpr seed 2024: being trained by another process ({folder / runner.LOCK})" in err
        assert "[train]" not in err and "[resume]" not in err
        assert re.search(r"^mf-bpr\s+2024\s+BUSY\b", out, re.M), out
        assert not (folder / records.RECORD).exists()
        assert torch.load(folder / CHECKPOINT, weights_only=True)["epoch"] == 1
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own; the OS drops its lock
        holder.wait(timeout=60)
        holder.stdout.close()
    assert main([*CONC_ONE, "--results", str(tmp_path / "res")]) == 0
    err = capsys.readouterr().err
    assert "[resume] mf-bpr seed 2024 (smoke budget, 1 thread): from the checkpoint after epoch 1" in err
    assert_identical_records(folder, done)
    assert records.find_records(tmp_path / "res") == [folder]  # the lock file left behind is harmless
    assert main([*CONC_ONE, "--results", str(tmp_path / "res")]) == 0
    assert "[skip] mf-bpr seed 2024" in capsys.readouterr().err


def test_a_run_finished_between_the_check_and_the_claim_is_not_trained_again(tmp_path, monkeypatch, capsys):
    assert main([*CONC_ONE, "--results", str(tmp_path / "ref")]) == 0
    (done,) = records.find_records(tmp_path / "ref")
    claim = runner.claim_run

    def claim_after_another_process_finished(folder: Path):
        lock = claim(folder)
        for name in (records.ARRAYS, records.RECORD):
            shutil.copy(done / name, folder / name)
        return lock

    monkeypatch.setattr(runner, "claim_run", claim_after_another_process_finished)
    capsys.readouterr()
    assert main([*CONC_ONE, "--results", str(tmp_path / "res")]) == 0
    err = capsys.readouterr().err
    assert "[skip] mf-bpr seed 2024" in err and "[train]" not in err


@pytest.mark.parametrize("status, shown", [("busy", "BUSY"), ("failed", "FAILED")])
def test_the_summary_names_runs_without_a_record(status, shown, tmp_path):
    table = runner.summary_table([runner.RunOutcome("mf-bpr", 1, tmp_path, status)])
    assert table.splitlines()[-1].split()[:3] == ["mf-bpr", "1", shown]
