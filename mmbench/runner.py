"""Expands models × seeds into runs, trains each (resuming or skipping), writes run records.

A run's identity — model, fully resolved config, seed, budget, torch threads, device type and the
loaded dataset's content fingerprint — names its folder, so a rerun with any of them changed is a
new run, and a rerun with none changed resumes or is skipped as complete. Code and library versions
are recorded in `env`, not in the identity. Each run sets its own intra-op thread count (default 1:
results are then byte-identical across reruns; parallelism comes from running runs side by side).

Several processes may share one results folder: each run is claimed with a file lock
(`<run folder>/.lock`, flock semantics) before it is trained. A run claimed by a live process is
skipped as "busy"; the lock of a process that died is released by the OS, so the next `mmbench run`
takes the run over and resumes it from its checkpoint.

This module is what ONE run is (`run_one`: claim, train or resume, record or error.json); how many
run side by side, in this process or on Dask workers, is `run_all`'s and `mmbench.grid`'s business.
Every run folder gets a `log.txt` (the runner's lines and one line per epoch) and, when the run
fails, an `error.json` (message and traceback), so a run on a remote worker leaves its own account.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import torch

from mmbench import records
from mmbench.budget import budget_caps, budget_label, check_budget
from mmbench.config import Config, load_config_file, parse_set_items, resolve
from mmbench.data.dataset import Dataset
from mmbench.errors import ConfigError, MMBenchError
from mmbench.eval.metrics import NDCG, NDCG_LEGACY, PRECISION, RECALL, metric_key
from mmbench.train.progress import RUN_LOG, append_log

DEFAULT_THREADS = 1
LOCK = ".lock"  # the claim of a run, inside its folder (left in place: see `claim_run`)
ERROR = "error.json"  # why the last attempt of a run failed (removed when a later attempt succeeds)
# How long a claim waits for a lock held by someone else before calling the run busy: long enough
# that a momentary probe (`mmbench runs`) never makes a claimer skip a run, short beside any run.
CLAIM_WAIT = 0.25


class RunTimeout(Exception):
    """A run went past `--run-timeout`: ended between two epochs, resumable from its checkpoint."""


@dataclass
class RunOutcome:
    model: str
    seed: int
    folder: Path
    # "done" | "skipped" (complete) | "busy" (being trained by another process) | "failed" |
    # "cancelled" (never started: --fail-fast stopped the grid)
    status: str
    record: records.RunRecord | None = None
    error: str | None = None
    seconds: float | None = None  # wall time of this attempt (done or failed)
    resumed_from: int | None = None  # the checkpoint's epoch this attempt started from


def expand_models(spec: str) -> list[str]:
    from mmbench.models.base import get_model_class, registry

    names = list(registry()) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError("--models is empty")
    for n in names:
        get_model_class(n)  # unknown names fail before any training starts
    return names


def parse_seeds(text: str | None) -> list[int]:
    if text is None or str(text).strip() == "":
        return [2024]
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers") from None
    if not seeds:
        raise ConfigError("--seeds is empty")
    return seeds


def model_config(name: str, dataset_name: str, budget: str = "full", config_file: str | None = None,
                 set_items: list[str] | None = None, tuned: dict | None = None, *,
                 caps: dict | None = None) -> Config:
    """The resolved config of `name` on `dataset_name`. Precedence: defaults < dataset preset <
    tuned < the budget's caps < `--config` < `--set`.

    `tuned` is `mmbench.tune.load_tuned`'s mapping {model: {"params", "provenance"}} (models it
    lacks keep their defaults); `caps` replaces the budget's caps under `run` (`tune` passes the
    plain caps every model of a study shares)."""
    from mmbench.models.base import get_model_class

    check_budget(budget)
    cls = get_model_class(name)
    preset = dict(cls.presets.get(dataset_name, {}))
    entry = (tuned or {}).get(name) or {}
    file_cfg = load_config_file(config_file)
    # a --config file may hold per-model sections: {model_name: {...}} or flat keys for every model
    per_model = file_cfg.pop(name, None) if isinstance(file_cfg.get(name), dict) else None
    from mmbench.models.base import registry

    flat = {k: v for k, v in file_cfg.items() if not (k in registry() and isinstance(v, dict))}
    if per_model:
        flat.update(per_model)
    return resolve(cls.defaults, preset, flat, parse_set_items(set_items or []), model_name=name,
                   config_path=config_file, tuned=entry.get("params"),
                   tuned_source=entry.get("source", "tuned configuration"),
                   caps=budget_caps(budget, cls.heavy, cls.fits_once) if caps is None else caps,
                   retired=cls.retired)


def run_budget(name: str, dataset_name: str, budget: str, cfg: Config) -> str:
    """The budget label of a run: `budget`, or `custom` when --config/--set changed its caps."""
    return budget_label(budget, cfg, model_config(name, dataset_name, budget))


@dataclass(frozen=True)
class RunSpec:
    """Everything that identifies one run (and nothing that doesn't, such as code versions)."""

    model: str
    cfg: Config
    seed: int
    budget: str
    threads: int
    device: torch.device
    tuned: dict | None = None  # provenance of a tuned config (`RunRecord.tuned`), None for defaults

    def identity(self, data: Dataset) -> dict[str, Any]:
        ident = {"model": self.model, "config_hash": self.cfg.hash(), "seed": int(self.seed),
                 "budget": self.budget, "threads": int(self.threads), "device": self.device.type,
                 "data": data.select_modalities(self.cfg.modalities).fingerprint}
        if self.tuned:  # a tuned run never lands in a default run's folder
            ident["tuned"] = {"study": self.tuned.get("study"), "trials": self.tuned.get("trials")}
        return ident

    def run_id(self, data: Dataset) -> str:
        blob = json.dumps(self.identity(data), sort_keys=True).encode()
        return f"{hashlib.sha256(blob).hexdigest()[:10]}-seed{self.seed}"

    def folder(self, results: Path, data: Dataset) -> Path:
        return records.run_dir(results, data.name, self.model, self.run_id(data), data.fingerprint)


def check_model_fits_data(name: str, cfg: Config, data: Dataset) -> Dataset:
    """The dataset view the model will see; unknown modalities or a missing feature fail here."""
    from mmbench.models.base import get_model_class

    view = data.select_modalities(cfg.modalities)
    if get_model_class(name).uses_features and not view.features:
        raise ConfigError(f"model {name!r} needs item features but dataset {data.name!r} has none "
                          f"(cards with features: tiktok, lastfm2k, ml100k, synthetic)")
    return view


def train_one(name: str, data: Dataset, cfg: Config, seed: int, device, folder: Path | None,
              progress: bool | str = True, budget: str = "full", threads: int = DEFAULT_THREADS,
              timeout: float | None = None, tuned: dict | None = None) -> records.RunRecord:
    """Build, train and test one model with `threads` intra-op torch threads; write its record
    into `folder` (if given). With `timeout` (seconds), raise `RunTimeout` at the start of the first
    epoch that begins later than that (see `_deadline_hook`)."""
    from mmbench.models.base import get_model_class
    from mmbench.train.determinism import deterministic_device, seed_everything, set_threads
    from mmbench.train.trainer import Trainer

    set_threads(threads)
    deterministic_device(device)
    spec = RunSpec(name, cfg, seed, budget, int(threads), device, tuned)
    cls = get_model_class(name)
    view = check_model_fits_data(name, cfg, data)
    t_start = time.perf_counter()
    seed_everything(seed)
    model = cls(view.train_view(), cfg)
    if timeout is not None:
        model.on_epoch_start = _deadline_hook(model.on_epoch_start, t_start, float(timeout))
    trainer = Trainer(model, view, cfg, seed, device, run_dir=folder, progress=progress,
                      desc=f"{name}/{data.name}/s{seed}")
    result = trainer.fit()
    test = result.test
    record = records.RunRecord(
        model=name,
        dataset=records.DatasetRef(name=data.name, fingerprint=view.fingerprint, checksums=dict(data.checksums),
                                   statistics=data.statistics(), modalities=list(view.modalities)),
        config=dict(cfg), config_hash=cfg.hash(), seed=int(seed), budget=budget, threads=int(threads),
        device=device.type, run_id=folder.name if folder is not None else spec.run_id(data),
        protocol={"mask": cfg.mask, "ks": list(cfg.eval_ks), "ndcg_variants": [NDCG, NDCG_LEGACY],
                  "valid_metric": cfg.valid_metric, "valid_mask": "train",
                  "tie_break": "lower item id", "evaluated_users": "non-empty split list"},
        env=dict(records.environment(), device=str(device)),
        history=result.history, best_epoch=int(result.best_epoch), valid=dict(result.valid),
        test=dict(test.mean), n_test_users=int(len(test.users)), timings=result.timings,
        peak_memory_mb=float(result.peak_memory_mb), created=records.now_iso(), tuned=tuned,
    )
    arrays: dict[str, np.ndarray] = {"test_users": test.users.astype(np.int64),
                                     "test_item_counts": test.item_test_counts,
                                     "valid_item_hits": result.valid_item_hits,
                                     "valid_item_counts": result.valid_item_counts,
                                     "valid_epochs": np.asarray(result.valid_epochs, dtype=np.int64),
                                     "train_user_degree": np.diff(data.train.indptr).astype(np.int64),
                                     "train_item_degree": np.bincount(data.train.indices, minlength=data.n_items).astype(np.int64)}
    for key, values in test.per_user.items():
        arrays[f"test/{key}"] = values
    for k, hits in test.item_hits.items():
        arrays[f"test_item_hits@{k}"] = hits
    if test.topk is not None:
        arrays["test_topk"] = test.topk.astype(np.int32)
    if folder is not None:
        records.write_record(folder, record, arrays)
        ckpt = folder / "checkpoint.pt"
        if ckpt.exists():
            ckpt.unlink()
    return record


def _deadline_hook(on_epoch_start, t_start: float, timeout: float):
    """The model's `on_epoch_start`, first checking the run's deadline.

    Checked at the START of an epoch: by then the trainer has saved the previous epoch's checkpoint
    if one was due (`checkpoint_every`), and nothing of the new epoch has happened, so a rerun
    resumes exactly where a run without the timeout would have continued. An epoch that hangs is
    never reached here: on Dask the client's backstop (`mmbench.grid`) ends it by restarting its
    worker."""

    def check(epoch: int):
        elapsed = time.perf_counter() - t_start
        if elapsed > timeout:
            raise RunTimeout(f"ran past --run-timeout {timeout:g}s ({elapsed:.1f}s before epoch {epoch}); "
                             "a rerun resumes from its checkpoint")
        return on_epoch_start(epoch)

    return check


def write_error(folder: Path, model: str, seed: int, message: str, trace: str | None = None,
                **facts: Any) -> Path:
    """`<run folder>/error.json`: what ended a run's last attempt, where and when (atomic)."""
    from mmbench.atomic import atomic_write

    payload = {"model": model, "seed": int(seed), "message": message, "traceback": trace,
               "host": socket.gethostname(), "pid": os.getpid(), "created": records.now_iso(), **facts}
    return atomic_write(Path(folder) / ERROR, json.dumps(payload, indent=1, default=str).encode())


def checkpoint_epoch(folder: Path) -> int | None:
    """The last completed epoch saved in a run folder's checkpoint, or None (no usable one)."""
    from mmbench.train.trainer import CHECKPOINT

    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # noqa: BLE001 - an unreadable checkpoint: the trainer decides what to do
        return None


def run_all(models: list[str], data: Dataset, seeds: list[int], device, results: Path,
            budget: str = "full", config_file: str | None = None, set_items: list[str] | None = None,
            progress: bool | str = True, fail_fast: bool = False, threads: int = DEFAULT_THREADS,
            run_timeout: float | None = None, tuned: dict | None = None) -> list[RunOutcome]:
    """Train every model × seed (one after another, each with `threads` torch threads); say per
    run whether it was trained, resumed (from which epoch), skipped as complete, or skipped as busy
    (claimed by another process sharing `results`). `run_timeout` (seconds) ends a run between two
    epochs once it has run that long (a failed run with error.json; a rerun resumes it)."""
    cfgs, labels = resolve_configs(models, data.name, budget, config_file, set_items, tuned)
    outcomes: list[RunOutcome] = []
    for name in models:
        for seed in seeds:
            spec = RunSpec(name, cfgs[name], seed, labels[name], int(threads), device, tuned_of(tuned, name))
            outcomes.append(run_one(spec, data, spec.folder(results, data), progress, fail_fast,
                                    timeout=run_timeout))
    return outcomes


def resolve_configs(models: list[str], dataset_name: str, budget: str, config_file: str | None,
                    set_items: list[str] | None, tuned: dict | None = None
                    ) -> tuple[dict[str, Config], dict[str, str]]:
    """Every model's resolved config and budget label, before anything runs: a bad --set fails
    before any training or writing (shared by `run_all` and `mmbench.grid`)."""
    cfgs = {m: model_config(m, dataset_name, budget, config_file, set_items, tuned) for m in models}
    return cfgs, {m: run_budget(m, dataset_name, budget, cfgs[m]) for m in models}


def tuned_of(tuned: dict | None, model: str) -> dict | None:
    """The provenance of `model`'s tuned config in `mmbench.tune.load_tuned`'s mapping, or None."""
    item = (tuned or {}).get(model)
    return dict(item["provenance"]) if item else None


def describe(spec: RunSpec) -> str:
    """How the runner's lines name a run: model, seed, budget label and threads."""
    threads = spec.threads
    return f"{spec.model} seed {spec.seed} ({spec.budget} budget, {threads} thread{'s' if threads != 1 else ''})"


def run_one(spec: RunSpec, data: Dataset, folder: Path, progress: bool | str = True, fail_fast: bool = False,
            timeout: float | None = None, echo: bool = True, catch_all: bool = False) -> RunOutcome:
    """One run, start to end: skip it if complete, claim it (or report it busy), train or resume it,
    and leave a record, or an error.json when it fails. Lines go to `log.txt` in the run folder and,
    with `echo`, to stderr. `catch_all` (a Dask worker) turns every exception into a failed run,
    bad input and full disks included; in-process those stop `mmbench run` with one line."""
    name, seed, what = spec.model, spec.seed, describe(spec)
    if (folder / records.RECORD).exists():
        if echo:
            print(f"[skip] {what}: complete in {folder}", file=sys.stderr)
        return RunOutcome(name, seed, folder, "skipped", records.read_record(folder))
    claim = claim_run(folder)
    if claim is None:
        if echo:
            print(f"[busy] {name} seed {seed}: being trained by another process ({folder / LOCK})",
                  file=sys.stderr)
        return RunOutcome(name, seed, folder, "busy")
    try:
        return _run_claimed(spec, data, folder, what, progress, fail_fast, timeout, echo, catch_all)
    finally:
        claim.release()


def claim_run(folder: Path, wait: float = CLAIM_WAIT):
    """The lock that claims the run in `folder` for this process, or None if a live process holds it
    (still held after `wait` seconds).

    flock semantics: the OS releases the lock of a process that dies, so its run is taken over.
    The `.lock` file stays after release: unlinking it while another process has it open would let
    two processes each hold a lock on a different inode of the same name."""
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK))
    try:
        lock.acquire(timeout=wait, poll_interval=0.05)
    except Timeout:
        return None
    return lock


def _run_claimed(spec: RunSpec, data: Dataset, folder: Path, what: str, progress, fail_fast: bool,
                 timeout: float | None = None, echo: bool = True, catch_all: bool = False) -> RunOutcome:
    """Train (or resume) one run whose claim this process holds."""
    name, seed = spec.model, spec.seed

    def say(line: str, where: str = "") -> None:
        """A line for the console (with `echo`) and, with where it ran, for the run's log."""
        append_log(folder / RUN_LOG, f"{line}{where}")
        if echo:
            print(line, file=sys.stderr)

    if (folder / records.RECORD).exists():  # finished by another process between the check and the claim
        if echo:
            print(f"[skip] {what}: complete in {folder}", file=sys.stderr)
        return RunOutcome(name, seed, folder, "skipped", records.read_record(folder))
    resumed_at = checkpoint_epoch(folder)
    where = f" [{socket.gethostname()} pid {os.getpid()}]"
    if resumed_at is None:
        say(f"[train] {what} -> {folder}", where)
    else:
        say(f"[resume] {what}: from the checkpoint after epoch {resumed_at} in {folder}", where)
    t0 = time.perf_counter()
    try:
        rec = train_one(name, data, spec.cfg, seed, spec.device, folder, progress, spec.budget, spec.threads,
                        timeout=timeout, tuned=spec.tuned)
    except MMBenchError as exc:
        if not catch_all:
            raise  # bad input or a full disk: the CLI says so in one line and exits 2
        return _failed(spec, folder, exc, time.perf_counter() - t0, resumed_at, say)
    except Exception as exc:  # a crashing model must not lose the other runs
        failed = _failed(spec, folder, exc, time.perf_counter() - t0, resumed_at, say)
        if fail_fast and not catch_all:
            raise
        return failed
    seconds = time.perf_counter() - t0
    (folder / ERROR).unlink(missing_ok=True)  # an earlier attempt's failure no longer describes the run
    say(f"[done] {name} seed {seed}: best epoch {rec.best_epoch}, {seconds:.1f}s")
    return RunOutcome(name, seed, folder, "done", rec, seconds=seconds, resumed_from=resumed_at)


def _failed(spec: RunSpec, folder: Path, exc: BaseException, seconds: float, resumed_at: int | None,
            say) -> RunOutcome:
    """A failed attempt: error.json (best effort: on a full disk it may not be written) and a line."""
    msg = f"{type(exc).__name__}: {exc}"
    trace = "".join(traceback.format_exception(exc))
    try:
        write_error(folder, spec.model, spec.seed, msg, trace, seconds=round(seconds, 3),
                    resumed_from=resumed_at, timeout=isinstance(exc, RunTimeout),
                    checkpoint_epoch=checkpoint_epoch(folder))
        note = f" (see {folder / ERROR})"
    except Exception as err:  # noqa: BLE001 - the failure itself must still be reported
        note = f" (error.json not written: {type(err).__name__}: {err})"
    say(f"[fail] {spec.model} seed {spec.seed}: {msg}{note}")
    return RunOutcome(spec.model, spec.seed, folder, "failed", None, msg, seconds=seconds, resumed_from=resumed_at)


def summary_table(outcomes: list[RunOutcome], k: int = 20) -> str:
    names = {RECALL: "R", PRECISION: "P", NDCG: "N", NDCG_LEGACY: "Nleg"}
    cols = [metric_key(m, k) for m in names]
    short = {metric_key(m, k): f"{s}@{k}" for m, s in names.items()}
    header = ["model", "seed", "best ep"] + [f"valid {short[c]}" for c in cols[:3]] + [f"test {short[c]}" for c in cols]
    rows = []
    for o in outcomes:
        if o.record is None:
            label = {"busy": "BUSY", "cancelled": "NOT RUN"}.get(o.status, "FAILED")
            rows.append([o.model, str(o.seed), label] + ["–"] * (len(header) - 3))
            continue
        v, t = o.record.valid, o.record.test or {}
        rows.append([o.model, str(o.seed), str(o.record.best_epoch)]
                    + [f"{v.get(c, float('nan')):.4f}" for c in cols[:3]]
                    + [f"{t.get(c, float('nan')):.4f}" for c in cols])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)
