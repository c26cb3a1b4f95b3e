"""`mmbench report table2|table3|table4|figure1|curves|costs|all --results DIR --out DIR`.

`all` writes every artefact; one that cannot be built is reported on stderr and the others are still
written (exit 1). Bad options (unknown test, malformed --buckets, no records) exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmbench import stats
from mmbench.errors import MMBenchError

ARTEFACTS = ("table2", "table3", "table4", "figure1", "curves", "costs")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report", help="rebuild the paper's tables and figures from run records",
        description="Build Tables 2–4, Figure 1, training curves and the cost table from the run "
                    "records under --results (every number comes from a record).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("artefact", choices=ARTEFACTS + ("all",), help="what to build")
    p.add_argument("--results", default="results", help="results directory holding runs/")
    p.add_argument("--out", default="reports", help="output directory")
    p.add_argument("--buckets", default="quantile:5",
                   help="user sparsity buckets by training interactions: quantile:N (NGCF: equal "
                        "total interactions), users:N (equal numbers of users) or edges such as "
                        "0,4,6,9,13 ([0,4],(4,6],…,(13,∞)); the last bucket is open-ended")
    p.add_argument("--test", default="ttest", choices=stats.TESTS, help="per-user paired test")
    p.add_argument("--paper-reference", action="store_true",
                   help="Table 2: add the paper's published values (labelled) and our deltas")
    p.add_argument("--reference", default="mmssl",
                   help="the model the tests and improvements are about ('ours')")
    p.add_argument("--compare", default=None,
                   help="Table 4 / Figure 1 models, comma-separated; when omitted, the paper's "
                        "vbpr,mmgcn,lattice,slmrec, or every model that ran when none of those did")
    p.add_argument("--figure-dataset", default=None, help="Figure 1 dataset; when omitted, baby, else "
                                                          "the dataset with the most models")
    p.add_argument("--figure-baseline", default=None,
                   help="Figure 1 (b) model; when omitted, the compared model with the best test R@20")
    p.set_defaults(func=cmd_report)
    return p


def _build(name: str, rs, args) -> list[Path]:
    from mmbench.reports import costs, curves, figure1, table2, table3, table4

    out = Path(args.out)
    compare = [m.strip() for m in args.compare.split(",") if m.strip()] if args.compare else None
    if name == "table2":
        return table2.write(rs, out, args.test, args.reference, args.paper_reference)
    if name == "table3":
        return table3.write(rs, out, args.test, args.reference)
    if name == "table4":
        return table4.write(rs, out, args.buckets, args.test, args.reference, compare)
    if name == "figure1":
        if args.figure_dataset and args.figure_dataset not in rs.datasets():
            from mmbench.reports.common import ReportError

            raise ReportError(f"--figure-dataset {args.figure_dataset!r}: no runs; have {', '.join(rs.datasets())}")
        return figure1.write(rs, out, args.buckets, args.reference, compare, args.figure_dataset,
                             args.figure_baseline)
    if name == "curves":
        return curves.write(rs, out)
    return costs.write(rs, out)


def cmd_report(args) -> int:
    from mmbench.reports.common import load_runs

    stats.parse_buckets(args.buckets)  # bad input fails before any file is written
    rs = load_runs(args.results)
    names = ARTEFACTS if args.artefact == "all" else (args.artefact,)
    failed = []
    for name in names:
        try:
            paths = _build(name, rs, args)
        except MMBenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - `all` must still write the other artefacts
            if args.artefact != "all":
                raise
            failed.append(name)
            print(f"error: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        for p in paths:
            print(p)
    return 1 if failed else 0

