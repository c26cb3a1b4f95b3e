"""`mmbench report table2|table3|table4|figure1|curves|costs|all [--results DIR] [--out DIR]`.

Each artefact is written once per budget present (`table2.md` for full, `table2-quick.md`, …): only
full-budget runs are ranked; the others are labelled smoke checks. By default the user's own runs
(`results/runs`, where `mmbench run` writes) are reported into the git-ignored `reports/local`; the
committed `results/reference` and `reports/` are used only when named.

`all` writes every artefact; one that cannot be built is reported on stderr and the others are still
written (exit 1). Bad options (unknown test, malformed --buckets or --config-of, no records) exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmbench import records, stats
from mmbench.errors import MMBenchError

ARTEFACTS = ("table2", "table3", "table4", "figure1", "curves", "costs")
DEFAULT_RESULTS = "results/runs"
DEFAULT_OUT = "reports/local"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report", help="rebuild the paper's tables and figures from run records",
        description="Build Tables 2–4, Figure 1, training curves and the cost table from the run "
                    "records under --results (every number comes from a record). Each artefact is "
                    "written once per budget: table2.md etc. from full-budget runs (ranked: bold, "
                    "p-values, Improv.), table2-quick.md / -smoke / -custom from the others (smoke "
                    "checks, never ranked). By default your own runs (results/runs, written by "
                    "`mmbench run`) go to the git-ignored reports/local; the committed reference is "
                    "rebuilt with --results results/reference --out reports (see reports/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("artefact", choices=ARTEFACTS + ("all",), help="what to build")
    p.add_argument("--results", default=DEFAULT_RESULTS,
                   help="folder of run records, searched recursively (`mmbench run` writes results/runs; "
                        "the committed reference runs are in results/reference)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="output folder (reports/local is git-ignored; the committed reports/ only when named)")
    p.add_argument("--budget", choices=records.BUDGET_LABELS, default=None,
                   help="report only the runs of this budget (default: every budget present, each in "
                        "its own files)")
    p.add_argument("--tuned", action="store_true",
                   help="report runs on tuned configurations (`mmbench run --tuned`) where they exist, default-"
                        "configuration runs elsewhere, each row labelled default or tuned (N trials); marks and "
                        "tests compare only cells of the same kind. Without it, only default-configuration runs")
    p.add_argument("--config-of", dest="config_of", action="append", default=[], metavar="MODEL=HASH",
                   help="use this configuration of MODEL (its config_hash, or a prefix of it) wherever it "
                        "ran, instead of its newest; repeatable. A model's configurations are never averaged")
    p.add_argument("--buckets", default="quantile:5",
                   help="user sparsity buckets by training interactions: quantile:N (NGCF: equal "
                        "total interactions), users:N (equal numbers of users) or edges such as "
                        "0,4,6,9,13 ([0,4],(4,6],…,(13,∞)); the last bucket is open-ended")
    p.add_argument("--test", default="ttest", choices=stats.TESTS, help="per-user paired test")
    p.add_argument("--paper-reference", action="store_true",
                   help="Table 2 (full budget): add the paper's published values (labelled) and our deltas")
    p.add_argument("--reference", default=None,
                   help="the model(s) the tests and improvements are about ('ours'), comma-separated; "
                        "default: Table 2 tests both MMSSL variants (mmssl, mmssl-official), each against "
                        "the best baseline; Tables 3-4 and Figure 1 use the first (default mmssl)")
    p.add_argument("--compare", default=None,
                   help="Table 4 / Figure 1 models, comma-separated; when omitted, the paper's "
                        "vbpr,mmgcn,lattice,slmrec, or every model that ran when none of those did")
    p.add_argument("--figure-dataset", default=None,
                   help="Figure 1 dataset (a budget without runs on it gets no Figure 1); when omitted, "
                        "baby, else the dataset with the most models")
    p.add_argument("--figure-baseline", default=None,
                   help="Figure 1 (b) model; when omitted, the compared model with the best test R@20")
    p.set_defaults(func=cmd_report)
    return p


def _build(name: str, rs, args) -> list[Path]:
    from mmbench.reports import costs, curves, figure1, table2, table3, table4

    out = Path(args.out)
    compare = [m.strip() for m in args.compare.split(",") if m.strip()] if args.compare else None
    first = table2.references_of(args.reference)[0] if args.reference else "mmssl"
    if name == "table2":
        return table2.write(rs, out, args.test, args.reference, args.paper_reference)
    if name == "table3":
        return table3.write(rs, out, args.test, first)
    if name == "table4":
        return table4.write(rs, out, args.buckets, args.test, first, compare)
    if name == "figure1":
        return figure1.write(rs, out, args.buckets, first, compare, args.figure_dataset, args.figure_baseline)
    if name == "curves":
        return curves.write(rs, out)
    return costs.write(rs, out)


def _figure_budgets(sets: dict, dataset: str | None) -> set[str]:
    """The budgets that get a Figure 1: all, or those with runs on --figure-dataset (an error when
    none has any)."""
    if dataset is None:
        return set(sets)
    having = {b for b, rs in sets.items() if dataset in rs.datasets()}
    if not having:
        from mmbench.reports.common import ReportError

        have = sorted({ds for rs in sets.values() for ds in rs.datasets()})
        raise ReportError(f"--figure-dataset {dataset!r}: no runs; have {', '.join(have)}")
    for b in sorted(set(sets) - having):
        print(f"note: no {b}-budget runs on {dataset}; no {b} Figure 1", file=sys.stderr)
    return having


def cmd_report(args) -> int:
    from mmbench.reports.common import load_budgets, parse_config_of

    from mmbench import preflight

    stats.parse_buckets(args.buckets)  # bad input fails before any file is written
    preflight.writable_folder(args.out, "--out")
    sets = load_budgets(args.results, args.budget, parse_config_of(args.config_of), tuned=args.tuned)
    names = ARTEFACTS if args.artefact == "all" else (args.artefact,)
    figure_budgets = _figure_budgets(sets, args.figure_dataset) if "figure1" in names else set()
    failed = []
    for budget, rs in sets.items():
        for name in names:
            if name == "figure1" and budget not in figure_budgets:
                continue
            try:
                paths = _build(name, rs, args)
            except MMBenchError:
                raise
            except Exception as exc:  # noqa: BLE001 - `all` must still write the other artefacts
                if args.artefact != "all":
                    raise
                failed.append(name)
                print(f"error: {name} ({budget} budget): {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            for p in paths:
                print(p)
    return 1 if failed else 0
