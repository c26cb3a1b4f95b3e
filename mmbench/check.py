"""`mmbench check`: a regression gate. Compares the metrics of run records with a committed reference
file and exits 1 when any metric moved by more than its tolerance (in either direction: an unexplained
gain is as suspicious as a loss).

Reference file (JSON):
    {"dataset": "ml100k", "split": "test", "tolerance": 0.005,
     "expect": {"lightgcn": {"recall@20": 0.21, "ndcg@20": 0.25}, ...}}
Several seeds of one model are averaged. `--write` creates/refreshes the file from the records.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mmbench import records
from mmbench.atomic import atomic_write
from mmbench.errors import MMBenchError

DEFAULT_METRICS = ("recall@20", "precision@20", "ndcg@20")


def collect(results: Path, dataset: str, split: str) -> dict[str, dict[str, float]]:
    """Mean metric per model over the completed runs of `dataset` under `results`."""
    per_model: dict[str, list[dict[str, float]]] = {}
    for folder in records.find_records(results):
        rec = records.read_record(folder)
        if rec["dataset"]["name"] == dataset:
            per_model.setdefault(rec["model"], []).append(rec[split])
    return {m: {k: float(np.mean([r[k] for r in runs])) for k in runs[0]} for m, runs in per_model.items()}


def compare(reference: dict, observed: dict[str, dict[str, float]]) -> list[tuple[str, str, float, float | None, bool]]:
    tol = float(reference.get("tolerance", 0.005))
    rows = []
    for model, metrics in reference["expect"].items():
        for metric, expected in metrics.items():
            got = observed.get(model, {}).get(metric)
            ok = got is not None and abs(got - expected) <= tol
            rows.append((model, metric, float(expected), got, ok))
    return rows


def read_reference(path: Path) -> dict:
    try:
        ref = json.loads(Path(path).read_text())
    except OSError as exc:
        raise MMBenchError(f"{path}: cannot read reference ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise MMBenchError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(ref, dict) or "dataset" not in ref or not isinstance(ref.get("expect"), dict):
        raise MMBenchError(f"{path}: a reference needs 'dataset' and an 'expect' mapping")
    return ref


def cmd_check(args) -> int:
    path = Path(args.against)
    if args.write:
        if not args.dataset:
            raise MMBenchError("--write needs --dataset")
        observed = collect(Path(args.results), args.dataset, args.split)
        if not observed:
            raise MMBenchError(f"no completed runs of dataset {args.dataset!r} under {args.results}")
        ref = {"dataset": args.dataset, "split": args.split, "tolerance": args.tolerance,
               "expect": {m: {k: round(v[k], 6) for k in DEFAULT_METRICS if k in v} for m, v in sorted(observed.items())}}
        atomic_write(path, (json.dumps(ref, indent=1) + "\n").encode())
        print(f"wrote {path}: {len(ref['expect'])} model(s), tolerance {args.tolerance}")
        return 0
    ref = read_reference(path)
    observed = collect(Path(args.results), ref["dataset"], ref.get("split", "test"))
    rows = compare(ref, observed)
    failed = 0
    for model, metric, expected, got, ok in rows:
        failed += not ok
        got_s = "missing" if got is None else f"{got:.4f} ({got - expected:+.4f})"
        print(f"{'ok  ' if ok else 'FAIL'} {model:20s} {metric:14s} expected {expected:.4f}  got {got_s}")
    print(f"{len(rows) - failed}/{len(rows)} within ±{ref.get('tolerance', 0.005)} of {path}")
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="regression gate: compare run records with a reference file (exit 1 on drift)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", default="results", help="results directory holding run records")
    p.add_argument("--against", required=True, help="reference JSON, e.g. results/reference/ml100k.json")
    p.add_argument("--write", action="store_true", help="write the reference from the records instead")
    p.add_argument("--dataset", help="dataset of the runs (with --write)")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--tolerance", type=float, default=0.005, help="absolute tolerance (with --write)")
    p.set_defaults(func=cmd_check)
