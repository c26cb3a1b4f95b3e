"""`mmbench check`: a regression gate. Compares the metrics of run records with a committed reference
file and exits 1 when any metric moved by more than its tolerance (in either direction: an unexplained
gain is as suspicious as a loss).

Reference file (JSON):
    {"dataset": "ml100k", "fingerprint": "<sha256 of the data>", "split": "test", "tolerance": 0.005,
     "expect": {"lightgcn": {"<metric>@20": 0.21, ...}, ...}}
Runs are grouped as in the reports: by dataset name AND content fingerprint (a modified copy of a
dataset is another dataset), one configuration per model (its most recent), one run per seed;
the seeds of that configuration are averaged. `--write` creates/refreshes the file from the records.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mmbench.atomic import atomic_write
from mmbench.errors import MMBenchError
from mmbench.eval.metrics import NDCG_20, PRECISION_20, RECALL_20

DEFAULT_METRICS = (RECALL_20, PRECISION_20, NDCG_20)


def collect(results: Path, dataset: str, split: str, fingerprint: str | None = None
            ) -> tuple[str, dict[str, dict[str, float]]]:
    """(fingerprint, mean metric per model) of the runs on `dataset` under `results`.

    Without a `fingerprint`, the runs must all be on one dataset of that name: runs on two
    different datasets that share a name are an error, never averaged together."""
    from mmbench.reports.common import ReportError, load_runs

    try:
        rs = load_runs(results)
    except ReportError:
        return fingerprint or "", {}
    groups = {}
    for key, models in rs.groups.items():
        for runs in models.values():
            ref = runs[0].record.dataset
            if ref.name == dataset and (fingerprint is None or ref.fingerprint == fingerprint):
                groups[ref.fingerprint] = key
    if not groups:
        return fingerprint or "", {}
    if len(groups) > 1:
        raise MMBenchError(f"{results}: runs on {len(groups)} different datasets named {dataset!r} "
                           f"(fingerprints {', '.join(sorted(f[:12] for f in groups))}); the reference must "
                           f"name the one to check (`fingerprint`)")
    (fp, key), = groups.items()
    observed = {}
    for model, runs in rs.groups[key].items():
        values = [r.record.valid if split == "valid" else (r.record.test or {}) for r in runs]
        observed[model] = {k: float(np.mean([v[k] for v in values if k in v])) for k in values[0]}
    return fp, observed


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
        fingerprint, observed = collect(Path(args.results), args.dataset, args.split)
        if not observed:
            raise MMBenchError(f"no completed runs of dataset {args.dataset!r} under {args.results}")
        ref = {"dataset": args.dataset, "fingerprint": fingerprint, "split": args.split, "tolerance": args.tolerance,
               "expect": {m: {k: round(v[k], 6) for k in DEFAULT_METRICS if k in v} for m, v in sorted(observed.items())}}
        atomic_write(path, (json.dumps(ref, indent=1) + "\n").encode())
        print(f"wrote {path}: {len(ref['expect'])} model(s), tolerance {args.tolerance}")
        return 0
    ref = read_reference(path)
    _, observed = collect(Path(args.results), ref["dataset"], ref.get("split", "test"), ref.get("fingerprint"))
    if not observed:
        where = f" with fingerprint {ref['fingerprint'][:12]}" if ref.get("fingerprint") else ""
        print(f"no runs of dataset {ref['dataset']!r}{where} under {args.results}")
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
