"""`mmbench check`: a regression gate. Compares the metrics of run records with a committed reference
file and exits 1 when any metric moved by more than its tolerance (in either direction: an unexplained
gain is as suspicious as a loss).

Reference file (JSON):
    {"dataset": "ml100k", "fingerprint": "<sha256 of the data>", "budget": "smoke", "split": "test",
     "tolerance": {"<metric>@20": 0.002, ...},
     "expect": {"lightgcn": {"config_hash": "b497508958", "metrics": {"<metric>@20": 0.21, ...}}, ...}}

A gate compares like with like, or refuses: runs on another dataset (fingerprint) or budget are not
considered; a model whose runs hold several configurations, or whose configuration is not the one the
reference was written from, is an error naming the model (exit 2) — its entry must be refreshed with
`--write` in the commit that changed it. The seeds of the one configuration are averaged.
`--write` creates the file, or refreshes the entries of `--models` in an existing one.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmbench import records, safeio
from mmbench.atomic import atomic_write
from mmbench.errors import MMBenchError
from mmbench.eval.metrics import NDCG_20, PRECISION_20, RECALL_20, parse_metric_key

DEFAULT_METRICS = (RECALL_20, PRECISION_20, NDCG_20)
DEFAULT_RESULTS = Path("results") / "runs"
MAX_REFERENCE_BYTES = safeio.LIMITS["reference"]


class CheckError(MMBenchError):
    """The gate cannot compare: a malformed reference, or runs that are not like the reference's."""


@dataclass
class Observed:
    """One model's runs under the gate: its configuration and the seed-averaged metrics."""

    config_hash: str
    budget: str
    seeds: list[int]
    metrics: dict[str, float]


def collect(results: Path, dataset: str, split: str = "test", fingerprint: str | None = None,
            budget: str | None = None) -> tuple[str, dict[str, Observed]]:
    """(fingerprint, per model) of the completed runs on `dataset` (and `fingerprint`, `budget`
    when given) under `results`. Runs on two datasets that share a name, or several configurations
    of one model, are CheckErrors: they are never averaged together."""
    runs = []
    for folder in records.find_records(results) if Path(results).is_dir() else []:
        rec = records.read_record(folder)
        if rec.is_trial or rec.dataset.name != dataset or rec.test is None:
            continue  # a tuning trial (validation only) is never gated
        if fingerprint is not None and rec.dataset.fingerprint != fingerprint:
            continue
        if budget is not None and rec.budget != budget:
            continue
        runs.append(rec)
    fingerprints = sorted({r.dataset.fingerprint for r in runs})
    if len(fingerprints) > 1:
        raise CheckError(f"{results}: runs on {len(fingerprints)} different datasets named {dataset!r} "
                         f"(fingerprints {', '.join(f[:12] for f in fingerprints)}); the reference must "
                         f"name the one to check (`fingerprint`)")
    by_model: dict[str, list[records.RunRecord]] = {}
    for rec in runs:
        by_model.setdefault(rec.model, []).append(rec)
    observed = {}
    for model, recs in sorted(by_model.items()):
        configs = sorted({(r.config_hash, r.budget) for r in recs})
        if len(configs) > 1:
            raise CheckError(f"model {model}: {results} holds runs of {len(configs)} configurations "
                             f"({', '.join(f'{h} ({b})' for h, b in configs)}); the gate compares one — "
                             f"remove the others or point --results at one")
        by_seed = {r.seed: r for r in sorted(recs, key=lambda r: r.created)}  # newest run per seed
        values = [r.valid if split == "valid" else r.test for r in by_seed.values()]
        keys = set.intersection(*(set(v) for v in values))
        observed[model] = Observed(configs[0][0], configs[0][1], sorted(by_seed),
                                   {k: float(np.mean([v[k] for v in values])) for k in sorted(keys)})
    return (fingerprints[0] if fingerprints else (fingerprint or "")), observed


# --------------------------------------------------------------------------- the reference file
def read_reference(path: Path) -> dict:
    """The reference, validated: every problem is one line naming the file (exit 2)."""
    path = Path(path)
    ref = safeio.load_json(path, "reference", CheckError)  # regular file, <= 1 MiB, UTF-8
    if not isinstance(ref, dict) or not isinstance(ref.get("dataset"), str) or not isinstance(ref.get("expect"), dict):
        raise CheckError(f"{path}: a reference needs 'dataset' and an 'expect' mapping")
    tol = ref.get("tolerance")
    if not isinstance(tol, dict) or not all(_finite_nonneg(v) for v in tol.values()):
        raise CheckError(f"{path}: 'tolerance' must map each metric to a finite number >= 0")
    for model, entry in ref["expect"].items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("config_hash"), str)
                or not isinstance(entry.get("metrics"), dict)):
            raise CheckError(f"{path}: expect.{model} needs 'config_hash' and a 'metrics' mapping")
        for metric, value in entry["metrics"].items():
            if metric not in tol or not _finite(value):
                raise CheckError(f"{path}: expect.{model}.{metric} needs a finite value and a tolerance")
    return ref


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite_nonneg(v) -> bool:
    return _finite(v) and v >= 0


def reference_entry(obs: Observed, metrics) -> dict:
    return {"config_hash": obs.config_hash, "seeds": obs.seeds,
            "metrics": {k: round(obs.metrics[k], 6) for k in metrics if k in obs.metrics}}


def write_reference(args) -> int:
    path = Path(args.against)
    if not args.dataset:
        raise CheckError("--write needs --dataset")
    metrics = _parse_metrics(args.metrics)
    fingerprint, observed = collect(Path(args.results), args.dataset, args.split, budget=args.budget)
    if not observed:
        raise CheckError(f"no completed runs of dataset {args.dataset!r} under {args.results}")
    budgets = sorted({o.budget for o in observed.values()})
    if len(budgets) > 1:
        raise CheckError(f"runs of several budgets ({', '.join(budgets)}) under {args.results}: pick one with --budget")
    chosen = _parse_models(args.models, observed) if args.models else sorted(observed)
    ref = {"dataset": args.dataset, "fingerprint": fingerprint, "budget": budgets[0], "split": args.split,
           "tolerance": {m: args.tolerance for m in metrics}, "expect": {}}
    if args.models and path.exists():  # refresh only the named entries
        ref = read_reference(path)
        if ref["dataset"] != args.dataset or ref.get("fingerprint") != fingerprint:
            raise CheckError(f"{path} gates other data ({ref['dataset']} {str(ref.get('fingerprint'))[:12]}); "
                             f"refusing to mix entries")
    for model in chosen:
        ref["expect"][model] = reference_entry(observed[model], metrics)
    ref["expect"] = dict(sorted(ref["expect"].items()))
    _refuse_non_finite(ref, path)
    atomic_write(path, (json.dumps(ref, indent=1, allow_nan=False) + "\n").encode())
    print(f"wrote {path}: {len(chosen)} model entr{'y' if len(chosen) == 1 else 'ies'} "
          f"({', '.join(chosen)}), {len(ref['expect'])} in all")
    return 0


def _refuse_non_finite(ref: dict, path: Path) -> None:
    """A reference that gates on NaN or infinity would pass or fail anything: refuse to write it."""
    for metric, tol in ref["tolerance"].items():
        if not _finite_nonneg(tol):
            raise CheckError(f"{path}: refusing to write tolerance {metric} = {safeio.shown(tol)}; "
                             f"--tolerance must be a finite number >= 0")
    for model, entry in ref["expect"].items():
        for metric, value in entry["metrics"].items():
            if not _finite(value):
                raise CheckError(f"{path}: refusing to write expect.{model}.{metric} = "
                                 f"{safeio.shown(value)}; gated values must be finite")


def _parse_metrics(text: str) -> list[str]:
    out = [m.strip() for m in text.split(",") if m.strip()]
    for m in out:
        try:
            parse_metric_key(m)
        except ValueError as exc:
            raise CheckError(f"--metrics: {exc}") from None
    if not out:
        raise CheckError("--metrics is empty")
    return out


def _parse_models(text: str, observed: dict) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    missing = [m for m in names if m not in observed]
    if missing:
        raise CheckError(f"--models: no runs of {', '.join(missing)} under the results")
    return names


# --------------------------------------------------------------------------- the gate
def compare(ref: dict, observed: dict[str, Observed]) -> list[tuple[str, str, float, float | None, bool]]:
    """(model, metric, expected, observed or None, within tolerance) per gated metric; a model run
    under another configuration than the reference's is a CheckError naming it."""
    rows = []
    for model, entry in ref["expect"].items():
        obs = observed.get(model)
        if obs is not None and obs.config_hash != entry["config_hash"]:
            raise CheckError(f"model {model}: its runs have config {obs.config_hash}, the reference was written "
                             f"from {entry['config_hash']}; if the change is deliberate, refresh its entry with "
                             f"`mmbench check --write --models {model} ...` and say why in the commit")
        for metric, expected in entry["metrics"].items():
            got = None if obs is None else obs.metrics.get(metric)
            ok = got is not None and abs(got - expected) <= ref["tolerance"][metric]
            rows.append((model, metric, float(expected), got, ok))
    return rows


def cmd_check(args) -> int:
    if args.write:
        return write_reference(args)
    path = Path(args.against)
    ref = read_reference(path)
    fingerprint, observed = collect(Path(args.results), ref["dataset"], ref.get("split", "test"),
                                    ref.get("fingerprint"), ref.get("budget"))
    if not observed:
        where = f" with fingerprint {ref['fingerprint'][:12]}" if ref.get("fingerprint") else ""
        print(f"no {ref.get('budget', '')} runs of dataset {ref['dataset']!r}{where} under {args.results}",
              file=sys.stderr)
    rows = compare(ref, observed)
    failed = 0
    for model, metric, expected, got, ok in rows:
        failed += not ok
        got_s = "missing" if got is None else f"{got:.4f} ({got - expected:+.4f})"
        print(f"{'ok  ' if ok else 'FAIL'} {model:20s} {metric:14s} expected {expected:.4f}  got {got_s}  "
              f"(±{ref['tolerance'][metric]})")
    print(f"{len(rows) - failed}/{len(rows)} within tolerance of {path}")
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="regression gate: compare run records with a reference file (exit 1 on drift)",
                       description="Compare the seed-averaged metrics of the runs under --results with a reference "
                                   "file; exit 1 when a metric moved by more than its tolerance, 2 when the runs "
                                   "are not comparable (another configuration of a model, several configurations, "
                                   "two datasets of one name) or the file is malformed.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", default=str(DEFAULT_RESULTS),
                   help="folder holding run records (where `mmbench run` writes); the committed reference "
                        "runs are read only when named: --results results/reference")
    p.add_argument("--against", required=True, help="reference JSON, e.g. results/reference/ci-ml100k.json")
    p.add_argument("--write", action="store_true",
                   help="write the reference from the records instead (with --models: refresh those entries)")
    p.add_argument("--dataset", help="dataset of the runs (with --write)")
    p.add_argument("--budget", choices=["full", "quick", "smoke", "custom"], help="budget of the runs (with --write)")
    p.add_argument("--models", help="comma-separated models whose entries --write refreshes (default: all)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="gated metrics (with --write)")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--tolerance", type=float, default=0.005, help="absolute tolerance per metric (with --write)")
    p.set_defaults(func=cmd_check)
