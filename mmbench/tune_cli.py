"""`mmbench tune --models M1,M2|all --dataset D --trials N`: one Optuna study per (model, dataset) on
validation metrics only; the best configurations go to <results>/tuning/<dataset>.yaml for
`mmbench run --tuned` (see mmbench/tune.py)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mmbench.preflight import positive_int

DEFAULT_DATASET = "ml100k"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "tune", help="search each model's hyper-parameters on VALIDATION data (Optuna), the same search for all",
        description="Run one Optuna study per (model, dataset): a TPE sampler seeded per trial (reproducible "
                    "with one worker), a successive-halving pruner on the valid metric, and for every model "
                    "the same number of trials and the budget's plain epoch cap and patience (no heavy-model "
                    "caps). Trials compute validation metrics only, never test. Each model's search space is "
                    "models/spaces/<model>.yaml. Studies live in <results>/tuning/studies.db (or --storage); "
                    "--trials counts the total, so rerunning with a larger number continues the study. The "
                    "best configuration per model goes to <results>/tuning/<dataset>.yaml, which "
                    "`mmbench run --tuned` uses.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", required=True, help="comma-separated model names, or 'all' (see `mmbench models`)")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="dataset card name (see `mmbench data list`) or a directory")
    p.add_argument("--trials", type=positive_int, required=True,
                   help="finished (complete + pruned) trials each model's study should hold: the TOTAL, so a "
                        "rerun with a larger number runs only the missing ones")
    p.add_argument("--budget", default="full", choices=["full", "quick", "smoke"],
                   help="epoch cap / patience of every trial, the same for every model: full = 1000 / 20, "
                        "quick = 10 / 3, smoke = 2 / 1")
    p.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config key for every trial (repeatable); a fixed key is not searched")
    p.add_argument("--config", help="YAML file of fixed config keys (flat, or per-model sections); not searched")
    p.add_argument("--results", default="results",
                   help="results directory: studies, trial records and tuned configurations go to <results>/tuning/")
    p.add_argument("--storage", default=None,
                   help="Optuna storage, any SQLAlchemy URL (e.g. postgresql://user@host/db to share studies "
                        "between machines); default sqlite:///<results>/tuning/studies.db")
    p.add_argument("--seed", type=int, default=2024,
                   help="training seed of every trial, and the sampler's seed")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="intra-op torch threads per trial (part of the study's identity, as for runs)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="trials side by side on a local Dask cluster of N one-thread worker processes (the "
                        "sampler then sees fewer finished trials per draw: only 1 worker is reproducible); "
                        "1 trains in this process without Dask")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="send the trials to this running Dask scheduler (`dask worker ADDRESS --nthreads 1`); "
                        "every worker must reach --storage (a database server, or SQLite on a shared "
                        "filesystem) and --results, and find the dataset in its own data directory")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--data-dir", help="data directory (default: $MMBENCH_DATA_DIR, else the project's datasets/)")
    p.set_defaults(func=cmd_tune)
    return p


def cmd_tune(args) -> int:
    from mmbench import preflight
    from mmbench.budget import tune_caps
    from mmbench.data.registry import load_dataset
    from mmbench.runner import expand_models
    from mmbench.train.trainer import resolve_device
    from mmbench.tune import (check_storage, default_storage, has_nothing_to_tune, is_sqlite, open_storage,
                              searchable_space, shown_url, summary_table, trial_config, tune)

    # Everything that needs no data is checked first, before loading or writing anything.
    on_dask = preflight.on_dask(args.workers, args.scheduler)
    models = expand_models(args.models)
    if args.models.strip() == "all":
        fixed = [m for m in models if has_nothing_to_tune(m)]
        models = [m for m in models if m not in fixed]
        if fixed:
            print(f"[skip] {', '.join(fixed)}: no hyper-parameters, nothing to tune", file=sys.stderr)
    preflight.seeds([args.seed])
    device = resolve_device(preflight.device(args.device))
    preflight.writable_folder(args.results, "--results")
    storage = check_storage(args.storage) if args.storage else default_storage(args.results)
    if not is_sqlite(storage):
        open_storage(storage)  # a server store: its driver and connection are checked before any work
    name = preflight.dataset_name(args.dataset)
    for m in models:
        searchable_space(m)
        trial_config(m, name, args.budget, {}, "tuned configuration", args.config, args.set_items)
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    if args.models.strip() == "all" and not data.features:
        from mmbench.models.base import get_model_class

        skipped = [m for m in models if get_model_class(m).uses_features]
        models = [m for m in models if m not in skipped]
        if skipped:
            print(f"[skip] {data.name} has no item features: not tuning {', '.join(skipped)}", file=sys.stderr)
    caps = tune_caps(args.budget)
    where = (f"on the Dask scheduler {args.scheduler}" if args.scheduler else
             f"{args.workers} trials at a time" if on_dask else "one trial at a time")
    print(f"mmbench tune: {len(models)} model(s) × {args.trials} trials on {data.name} (data "
          f"{data.fingerprint[:12]}) on {device}, {args.threads} thread(s) per trial, {where}, budget {args.budget} "
          f"(every trial ≤ {caps['epochs']} epochs, patience {caps['patience']}), storage {shown_url(storage)}",
          file=sys.stderr)
    t0 = time.perf_counter()
    outcomes = tune(models, data, args.trials, args.budget, Path(args.results), device, storage, args.seed,
                    args.threads, args.config, args.set_items, workers=args.workers, scheduler=args.scheduler,
                    dataset_spec=args.dataset, data_dir=args.data_dir)
    metric = trial_config(models[0], data.name, args.budget, {}, "", args.config, args.set_items).valid_metric \
        if models else "valid"
    print(summary_table(outcomes, metric))
    print(f"tuning wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 1 if any(o.status in ("failed", "none") for o in outcomes) else 0
