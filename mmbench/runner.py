"""Expands models × seeds into runs, trains each (resuming or skipping), writes run records."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmbench import records
from mmbench.config import Config, load_config_file, parse_set_items, resolve
from mmbench.data.dataset import Dataset
from mmbench.errors import ConfigError, MMBenchError

# Budget profiles cap the work of `mmbench run` without touching the protocol (valid-only early
# stopping, test once). `full` = the models' own settings. They sit below --config and --set, and
# the resolved caps are part of each run's config (and so of its record and run id).
BUDGETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {"epochs": 10, "patience": 3},
    "smoke": {"epochs": 2, "patience": 1},
}
# `heavy` models (MMSSL, SGL, NCL: tens of seconds per epoch on a 2-core laptop even on ML-100K)
HEAVY_BUDGETS: dict[str, dict[str, Any]] = {"quick": {"epochs": 1, "patience": 1}}


@dataclass
class RunOutcome:
    model: str
    seed: int
    folder: Path
    status: str  # "done" | "skipped" | "failed"
    record: dict[str, Any] | None = None
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

    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    cls = get_model_class(name)
    preset = dict(cls.presets.get(dataset_name, {}))
    preset.update(HEAVY_BUDGETS.get(budget, BUDGETS[budget]) if cls.heavy else BUDGETS[budget])
    file_cfg = load_config_file(config_file)
    # a --config file may hold per-model sections: {model_name: {...}} or flat keys for every model
    per_model = file_cfg.pop(name, None) if isinstance(file_cfg.get(name), dict) else None
    from mmbench.models.base import registry

    flat = {k: v for k, v in file_cfg.items() if not (k in registry() and isinstance(v, dict))}
    if per_model:
        flat.update(per_model)
    return resolve(cls.defaults, preset, flat, parse_set_items(set_items or []), model_name=name)


def run_id(name: str, cfg: Config, data: Dataset, seed: int) -> str:
    fingerprint = json.dumps({"model": name, "config": cfg.hash(), "data": sorted(data.checksums.items())},
                             sort_keys=True).encode()
    return f"{hashlib.sha256(fingerprint).hexdigest()[:10]}-seed{seed}"


def check_model_fits_data(name: str, cfg: Config, data: Dataset) -> Dataset:
    """The dataset view the model will see; unknown modalities or a missing feature fail here."""
    from mmbench.models.base import get_model_class

    view = data.select_modalities(cfg.modalities)
    if get_model_class(name).uses_features and not view.features:
        raise ConfigError(f"model {name!r} needs item features but dataset {data.name!r} has none "
                          f"(cards with features: tiktok, lastfm2k, ml100k, synthetic)")
    return view


def train_one(name: str, data: Dataset, cfg: Config, seed: int, device, folder: Path | None,
              progress: bool = True) -> dict[str, Any]:
    """Build, train and test one model; write its record into `folder` (if given)."""
    from mmbench.models.base import get_model_class
    from mmbench.train.trainer import Trainer, seed_everything

    cls = get_model_class(name)
    view = check_model_fits_data(name, cfg, data)
    seed_everything(seed)
    model = cls(view.train_view(), cfg)
    trainer = Trainer(model, view, cfg, seed, device, run_dir=folder, progress=progress,
                      desc=f"{name}/{data.name}/s{seed}")
    result = trainer.fit()
    test = result.test
    record = {
        "model": name,
        "dataset": {"name": data.name, "checksums": data.checksums, "statistics": data.statistics(),
                    "modalities": view.modalities},
        "config": dict(cfg),
        "config_hash": cfg.hash(),
        "seed": seed,
        "protocol": {"mask": cfg.mask, "ks": list(cfg.eval_ks), "ndcg_variants": ["ndcg", "ndcg_legacy"],
                     "valid_metric": cfg.valid_metric, "valid_mask": "train",
                     "tie_break": "lower item id", "evaluated_users": "non-empty split list"},
        "env": dict(records.environment(), device=str(device)),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "valid": result.valid,
        "test": test.mean,
        "n_test_users": int(len(test.users)),
        "timings": result.timings,
        "peak_memory_mb": result.peak_memory_mb,
        "created": records.now_iso(),
    }
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


def run_all(models: list[str], data: Dataset, seeds: list[int], device, results: Path,
            budget: str = "full", config_file: str | None = None, set_items: list[str] | None = None,
            progress: bool = True, fail_fast: bool = False) -> list[RunOutcome]:
    # Resolve every config first: a bad --set fails before any training or writing.
    cfgs = {m: model_config(m, data.name, budget, config_file, set_items) for m in models}
    outcomes: list[RunOutcome] = []
    for name in models:
        for seed in seeds:
            cfg = cfgs[name]
            folder = records.run_dir(results, data.name, name, run_id(name, cfg, data, seed))
            if (folder / records.RECORD).exists():
                outcomes.append(RunOutcome(name, seed, folder, "skipped", records.read_record(folder)))
                print(f"[skip] {name} seed {seed}: completed run in {folder}", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            try:
                rec = train_one(name, data, cfg, seed, device, folder, progress)
            except MMBenchError:
                raise
            except Exception as exc:  # a crashing model must not lose the other runs
                if fail_fast:
                    raise
                msg = f"{type(exc).__name__}: {exc}"
                print(f"[fail] {name} seed {seed}: {msg}", file=sys.stderr)
                outcomes.append(RunOutcome(name, seed, folder, "failed", None, msg))
                continue
            print(f"[done] {name} seed {seed}: best epoch {rec['best_epoch']}, "
                  f"{time.perf_counter() - t0:.1f}s -> {folder}", file=sys.stderr)
            outcomes.append(RunOutcome(name, seed, folder, "done", rec))
    return outcomes


def summary_table(outcomes: list[RunOutcome], k: int = 20) -> str:
    cols = [f"recall@{k}", f"precision@{k}", f"ndcg@{k}", f"ndcg_legacy@{k}"]
    short = {f"recall@{k}": f"R@{k}", f"precision@{k}": f"P@{k}", f"ndcg@{k}": f"N@{k}",
             f"ndcg_legacy@{k}": f"Nleg@{k}"}
    header = ["model", "seed", "best ep"] + [f"valid {short[c]}" for c in cols[:3]] + [f"test {short[c]}" for c in cols]
    rows = []
    for o in outcomes:
        if o.record is None:
            rows.append([o.model, str(o.seed), "FAILED"] + ["–"] * (len(header) - 3))
            continue
        v, t = o.record["valid"], o.record["test"]
        rows.append([o.model, str(o.seed), str(o.record["best_epoch"])]
                    + [f"{v.get(c, float('nan')):.4f}" for c in cols[:3]]
                    + [f"{t.get(c, float('nan')):.4f}" for c in cols])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)
