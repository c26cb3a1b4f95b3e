"""The cost table: seconds per epoch, epochs run until early stopping, best epoch, total time and
peak memory per model and dataset (mean ± std over seeds), from the records' timings; one table per
budget (`costs.md`, `costs-quick.md`, …), each row naming the configuration it timed."""
from __future__ import annotations

from pathlib import Path


from mmbench import stats
from mmbench.reports.common import (Block, Cell, RunSet, Table, dataset_label, fmt_value, report_table,
                                    write_table)
from mmbench.reports.table4 import model_label

COLUMNS = [  # (column, how to read it from a RunRecord, digits)
    ("seeds", None, 0),
    ("config", None, 0),   # the config_hash every seed of the row ran with
    ("threads", None, 0),  # timings compare only at equal thread counts
    ("s/epoch (train)", lambda r: r.timings.get("train_seconds_per_epoch"), 2),
    ("s/validation", lambda r: r.timings.get("eval_seconds_per_validation"), 2),
    ("epochs run", lambda r: r.timings.get("epochs_run"), 1),
    ("best epoch", lambda r: r.best_epoch, 1),
    ("test s", lambda r: r.timings.get("test_seconds"), 2),
    ("total s", lambda r: r.timings.get("total_seconds"), 1),
    ("peak MB", lambda r: r.peak_memory_mb, 0),
    ("device", None, 0),
]


def _get(fn, rec) -> float:
    try:
        v = fn(rec)
    except (KeyError, TypeError, AttributeError):
        return float("nan")
    return float(v) if v is not None else float("nan")


def build(rs: RunSet) -> Table:
    block = Block("", [], [c for c, _, _ in COLUMNS])
    for i, ds in enumerate(rs.datasets()):
        for j, m in enumerate(rs.models(ds)):
            runs = rs.runs(ds, m)
            cells = []
            for name, fn, digits in COLUMNS:
                if name == "seeds":
                    cells.append(Cell(",".join(str(r.seed) for r in runs)))
                elif name == "config":
                    cells.append(Cell(",".join(sorted({r.record.config_hash for r in runs}))))
                elif name == "threads":
                    cells.append(Cell(",".join(sorted({str(r.record.threads or "?") for r in runs}))))
                elif name == "device":
                    cells.append(Cell(",".join(sorted({str(r.record.env.get("device", r.record.device))
                                                       for r in runs}))))
                else:
                    mean, std, _ = stats.seed_summary(_get(fn, r.record) for r in runs)
                    cells.append(Cell(fmt_value(mean, std, digits)))
            block.add(f"{dataset_label(ds)} / {model_label(m)}", cells, rule=(j == 0 and i > 0))
    caption = ("Training and evaluation cost per dataset and model, from the run records' timings: "
               "seconds per training epoch, seconds per validation pass, epochs run until early stopping "
               "(or the epoch cap), best (selected) epoch, seconds for the single test pass, total wall "
               "seconds, and peak memory in MB (process RSS, or CUDA peak allocation when larger); mean "
               "± sample std over seeds; config = the run's config_hash. Compare timings only at equal "
               "thread counts.")
    return report_table(rs, "costs", "Costs", caption, "Dataset / model", [block])


def write(rs: RunSet, out: Path) -> list[Path]:
    return write_table(build(rs), out, formats=("md", "csv"))
