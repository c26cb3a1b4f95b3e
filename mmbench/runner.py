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
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
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

DEFAULT_THREADS = 1
LOCK = ".lock"  # the claim of a run, inside its folder (left in place: see `claim_run`)


@dataclass
class RunOutcome:
    model: str
    seed: int
    folder: Path
    status: str  # "done" | "skipped" (complete) | "busy" (being trained by another process) | "failed"
    record: records.RunRecord | None = None
    error: str | None = None


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
                 set_items: list[str] | None = None) -> Config:
    from mmbench.models.base import get_model_class

    check_budget(budget)
    cls = get_model_class(name)
    preset = dict(cls.presets.get(dataset_name, {}))
    preset.update(budget_caps(budget, cls.heavy))
    file_cfg = load_config_file(config_file)
    # a --config file may hold per-model sections: {model_name: {...}} or flat keys for every model
    per_model = file_cfg.pop(name, None) if isinstance(file_cfg.get(name), dict) else None
    from mmbench.models.base import registry

    flat = {k: v for k, v in file_cfg.items() if not (k in registry() and isinstance(v, dict))}
    if per_model:
        flat.update(per_model)
    return resolve(cls.defaults, preset, flat, parse_set_items(set_items or []), model_name=name,
                   config_path=config_file)


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

    def identity(self, data: Dataset) -> dict[str, Any]:
        return {"model": self.model, "config_hash": self.cfg.hash(), "seed": int(self.seed),
                "budget": self.budget, "threads": int(self.threads), "device": self.device.type,
                "data": data.select_modalities(self.cfg.modalities).fingerprint}

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
              progress: bool | str = True, budget: str = "full", threads: int = DEFAULT_THREADS
              ) -> records.RunRecord:
    """Build, train and test one model with `threads` intra-op torch threads; write its record
    into `folder` (if given)."""
    from mmbench.models.base import get_model_class
    from mmbench.train.determinism import deterministic_device, seed_everything, set_threads
    from mmbench.train.trainer import Trainer

    set_threads(threads)
    deterministic_device(device)
    spec = RunSpec(name, cfg, seed, budget, int(threads), device)
    cls = get_model_class(name)
    view = check_model_fits_data(name, cfg, data)
    seed_everything(seed)
    model = cls(view.train_view(), cfg)
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
        peak_memory_mb=float(result.peak_memory_mb), created=records.now_iso(),
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
            progress: bool | str = True, fail_fast: bool = False, threads: int = DEFAULT_THREADS
            ) -> list[RunOutcome]:
    """Train every model × seed (one after another, each with `threads` torch threads); say per
    run whether it was trained, resumed (from which epoch), skipped as complete, or skipped as busy
    (claimed by another process sharing `results`)."""
    # Resolve every config first: a bad --set fails before any training or writing.
    cfgs = {m: model_config(m, data.name, budget, config_file, set_items) for m in models}
    labels = {m: run_budget(m, data.name, budget, cfgs[m]) for m in models}
    outcomes: list[RunOutcome] = []
    for name in models:
        for seed in seeds:
            spec = RunSpec(name, cfgs[name], seed, labels[name], int(threads), device)
            folder = spec.folder(results, data)
            what = f"{name} seed {seed} ({labels[name]} budget, {threads} thread{'s' if threads != 1 else ''})"
            if (folder / records.RECORD).exists():
                rec = records.read_record(folder)
                outcomes.append(RunOutcome(name, seed, folder, "skipped", rec))
                print(f"[skip] {what}: complete in {folder}", file=sys.stderr)
                continue
            claim = claim_run(folder)
            if claim is None:
                print(f"[busy] {name} seed {seed}: being trained by another process ({folder / LOCK})",
                      file=sys.stderr)
                outcomes.append(RunOutcome(name, seed, folder, "busy"))
                continue
            try:
                outcomes.append(_run_claimed(spec, data, folder, what, progress, fail_fast))
            finally:
                claim.release()
    return outcomes


def claim_run(folder: Path):
    """The lock that claims the run in `folder` for this process, or None if a live process holds it.

    flock semantics: the OS releases the lock of a process that dies, so its run is taken over.
    The `.lock` file stays after release: unlinking it while another process has it open would let
    two processes each hold a lock on a different inode of the same name."""
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def _run_claimed(spec: RunSpec, data: Dataset, folder: Path, what: str, progress, fail_fast: bool
                 ) -> RunOutcome:
    """Train (or resume) one run whose claim this process holds."""
    name, seed = spec.model, spec.seed
    if (folder / records.RECORD).exists():  # finished by another process between the check and the claim
        print(f"[skip] {what}: complete in {folder}", file=sys.stderr)
        return RunOutcome(name, seed, folder, "skipped", records.read_record(folder))
    resumed_at = checkpoint_epoch(folder)
    if resumed_at is None:
        print(f"[train] {what} -> {folder}", file=sys.stderr)
    else:
        print(f"[resume] {what}: from the checkpoint after epoch {resumed_at} in {folder}",
              file=sys.stderr)
    t0 = time.perf_counter()
    try:
        rec = train_one(name, data, spec.cfg, seed, spec.device, folder, progress, spec.budget, spec.threads)
    except MMBenchError:
        raise  # bad input or a full disk: the CLI says so in one line and exits 2
    except Exception as exc:  # a crashing model must not lose the other runs
        if fail_fast:
            raise
        msg = f"{type(exc).__name__}: {exc}"
        print(f"[fail] {name} seed {seed}: {msg}", file=sys.stderr)
        return RunOutcome(name, seed, folder, "failed", None, msg)
    print(f"[done] {name} seed {seed}: best epoch {rec.best_epoch}, "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return RunOutcome(name, seed, folder, "done", rec)


def summary_table(outcomes: list[RunOutcome], k: int = 20) -> str:
    names = {RECALL: "R", PRECISION: "P", NDCG: "N", NDCG_LEGACY: "Nleg"}
    cols = [metric_key(m, k) for m in names]
    short = {metric_key(m, k): f"{s}@{k}" for m, s in names.items()}
    header = ["model", "seed", "best ep"] + [f"valid {short[c]}" for c in cols[:3]] + [f"test {short[c]}" for c in cols]
    rows = []
    for o in outcomes:
        if o.record is None:
            label = "BUSY" if o.status == "busy" else "FAILED"
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
