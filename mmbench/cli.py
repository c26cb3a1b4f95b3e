"""The `mmbench` command line. Exit codes: 0 ok, 1 a run or check failed, 2 bad input or usage
(one clear line on stderr, no traceback)."""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from mmbench.errors import MMBenchError
from mmbench.preflight import positive_int

DEFAULT_DATASET = "ml100k"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line + exit 2 (argparse's own code for usage)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run", help="train models on a dataset under the shared protocol and write run records",
        description="Train each model (× seed) with valid-only early stopping, evaluate the test split "
                    "once with the best-valid state, and write results/runs/<dataset>/<model>/<run id>/. "
                    "Rerunning the same command resumes interrupted runs and skips completed ones.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", required=True, help="comma-separated model names, or 'all' (see `mmbench models`)")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="dataset card name (see `mmbench data list`) or a directory")
    p.add_argument("--seeds", default="2024", help="comma-separated training seeds; the data split never depends on them")
    p.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set epochs=50 --set modalities=image,audio")
    p.add_argument("--config", help="YAML file of config overrides (flat keys, or per-model sections)")
    p.add_argument("--budget", default="full", choices=["full", "quick", "smoke"],
                   help="work cap: full = the models' settings; quick = ≤10 epochs, patience 3 "
                        "(heavy models MMSSL/SGL/NCL: 1 epoch); smoke = 2 epochs")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--results", default="results", help="results directory (run records go to <results>/runs/)")
    p.add_argument("--data-dir", help="data directory (default: $MMBENCH_DATA_DIR, else the project's datasets/)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="intra-op torch threads per run. With 1 (the default) a rerun gives byte-identical "
                        "results; the count is part of each run's identity. Run several runs side by side "
                        "for parallelism; use --threads 2 for a single long run on an otherwise idle machine")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars: one line per epoch instead (what a redirected log gets anyway)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first model that crashes")
    p.add_argument("--tuned", action="store_true",
                   help="use the configurations `mmbench tune` selected on valid (<results>/tuning/<dataset>.yaml, "
                        "tuned under the same --budget); models it lacks keep their defaults; records name "
                        "their tuning")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="runs side by side on a local Dask cluster of N worker processes (one run each, "
                        "longest first); 1 trains in this process without Dask")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="send the runs to this running Dask scheduler (`dask worker ADDRESS --nthreads 1`, "
                        "dask-jobqueue); --results must be a folder every worker shares, with POSIX locks")
    p.add_argument("--run-timeout", type=_positive_seconds, metavar="SECONDS",
                   help="end a run that has run this long, at its next epoch (on Dask, a run stuck in an "
                        "epoch has its worker restarted): it fails with error.json and a rerun resumes it")
    p.set_defaults(func=cmd_run)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text[:40]!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number of seconds, got {text[:40]!r}")
    return value


def cmd_run(args) -> int:
    from mmbench import preflight
    from mmbench.errors import ConfigError
    from mmbench.data.registry import load_dataset
    from mmbench.budget import CUSTOM
    from mmbench.runner import (check_model_fits_data, expand_models, model_config, parse_seeds,
                                run_all, run_budget, summary_table)
    from mmbench.train.trainer import resolve_device

    # Everything that needs no data is checked first, before loading or writing anything.
    models = expand_models(args.models)
    seeds = preflight.seeds(parse_seeds(args.seeds))
    device = resolve_device(preflight.device(args.device))
    preflight.writable_folder(args.results, "--results")
    on_dask = preflight.on_dask(args.workers, args.scheduler)
    name = preflight.dataset_name(args.dataset)
    tuned = None
    if args.tuned:
        from mmbench.tune import check_tuned_data, load_tuned

        tuned = load_tuned(args.results, name, args.budget)
    for m in models:
        model_config(m, name, args.budget, args.config, args.set_items, tuned)
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    if tuned:
        check_tuned_data(tuned, data)
    if args.models.strip() == "all" and not data.features:
        from mmbench.models.base import get_model_class

        skipped = [m for m in models if get_model_class(m).uses_features]
        models = [m for m in models if m not in skipped]
        if skipped:
            print(f"[skip] {data.name} has no item features: not running {', '.join(skipped)}", file=sys.stderr)
    labels = set()
    for m in models:  # data-dependent checks (modalities, features) right after loading
        cfg = model_config(m, data.name, args.budget, args.config, args.set_items, tuned)
        check_model_fits_data(m, cfg, data)
        labels.add(run_budget(m, data.name, args.budget, cfg))
    budget = args.budget if labels <= {args.budget} else (
        f"{CUSTOM} (--budget {args.budget} with other epochs/patience)" if labels == {CUSTOM}
        else f"{args.budget}, {CUSTOM} where --config/--set change epochs/patience")
    print(f"mmbench run: {len(models)} model(s) × {len(seeds)} seed(s) on {data.name} "
          f"({data.n_users} users, {data.n_items} items, modalities {data.modalities or 'none'}, "
          f"data {data.fingerprint[:12]}) on {device}, {args.threads} thread(s) per run, "
          f"budget {budget}", file=sys.stderr)
    if on_dask:  # imported only here: `--workers 1` never imports dask
        try:
            from mmbench import grid
        except ImportError as exc:
            raise ConfigError(f"--workers/--scheduler need dask[distributed] ({exc}): "
                              "pip install 'dask[distributed]'") from None

        runs = grid.plan(models, data, seeds, device, Path(args.results), dataset_spec=args.dataset,
                         data_dir=args.data_dir, budget=args.budget, config_file=args.config,
                         set_items=args.set_items, threads=args.threads, run_timeout=args.run_timeout,
                         tuned=tuned)
        outcomes = grid.run_grid(runs, data.name, workers=args.workers, scheduler=args.scheduler,
                                 fail_fast=args.fail_fast, run_timeout=args.run_timeout)
    else:
        outcomes = run_all(models, data, seeds, device, Path(args.results), args.budget, args.config,
                           args.set_items, progress="lines" if args.no_progress else "auto",
                           fail_fast=args.fail_fast, threads=args.threads, run_timeout=args.run_timeout,
                           tuned=tuned)
    print(summary_table(outcomes))
    failed = [o for o in outcomes if o.status in ("failed", "cancelled")]
    for o in failed:
        print(f"{o.status}: {o.model} seed {o.seed}: {o.error}", file=sys.stderr)
    return 1 if failed else 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models and their default configs")
    p.add_argument("--verbose", "-v", action="store_true", help="also print each model's config keys")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from mmbench.config import TRAINER_PARAMS, declarations
    from mmbench.models.base import registry

    zoo = registry(allow_broken=True)
    for name, cls in zoo.items():
        own = (cls.__dict__.get("__doc__") or "").strip().splitlines()
        module = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        shared_module = sum(c.__module__ == cls.__module__ for c in zoo.values()) > 1
        line = ((own or module) if shared_module else (module or own) or [""])[0]
        print(f"{name:22s} {line}")
        if args.verbose:
            params = declarations(cls.defaults)
            for k in cls.defaults:
                p = params[k]
                print(f"    {k + ' = ' + repr(p.default):34s} {p.describe()}{'  # ' + p.doc if p.doc else ''}")
            for ds, values in cls.presets.items():
                print(f"    preset {ds}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
    if args.verbose:
        print("trainer keys (every model; a model's value above replaces the default):")
        for k, p in TRAINER_PARAMS.items():
            print(f"    {k + ' = ' + repr(p.default):34s} {p.describe()}{'  # ' + p.doc if p.doc else ''}")
    from mmbench.models import BROKEN

    for module, error in BROKEN.items():
        print(f"BROKEN module models/{module}.py: {error}", file=sys.stderr)
    return 1 if BROKEN else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmbench", description="Benchmark suite for multimodal recommendation "
                     "(MMSSL and baselines, one protocol, one evaluator, honest statistics).")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error as well as its one-line message")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_models(sub)
    from mmbench.data.cli import add_data_parser
    from mmbench.eval.external import add_evaluate_parser

    add_data_parser(sub)
    add_evaluate_parser(sub)
    for optional in ("mmbench.reports.cli", "mmbench.check", "mmbench.tune_cli", "mmbench.runs_cli"):
        try:
            mod = __import__(optional, fromlist=["add_parser"])
        except ImportError:
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the subcommand
    parser = build_parser()
    try:
        args = parser.parse_args([a for a in argv if a != "--debug"])
    except SystemExit as exc:  # usage errors (2) and --help (0) return their status to callers
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except MMBenchError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
