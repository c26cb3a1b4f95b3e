"""Table 4 rebuilt: NDCG@20 per user-sparsity bucket (by TRAINING interaction count) for the chosen
models and the reference (MMSSL), with the reference's relative improvement over each (↑%) and
per-user paired tests inside every bucket (raw and Holm over the whole table). One table per
budget; only the full one carries improvements and tests (`table4-quick.md` etc. hold values only)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmbench.eval.metrics import NDCG_20
from mmbench import stats
from mmbench.reports.common import (MISSING, Block, Cell, Comparison, RunSet, Table, correct,
                                    dataset_label, family_note, fmt_int, fmt_p, fmt_pct, fmt_value,
                                    metric_label, per_user_test, report_table, warn, write_table)
from mmbench.reports.table2 import ABLATIONS, EXTRA_ROWS, RANKED_ROWS

PAPER_COMPARE = ("vbpr", "mmgcn", "lattice", "slmrec")  # the paper's Table 4 rows
METRIC = NDCG_20


def model_label(model: str) -> str:
    for lab, m in RANKED_ROWS + EXTRA_ROWS:
        if m == model:
            return lab
    return model


def resolve_compare(rs: RunSet, compare: list[str] | None, reference: str) -> list[str]:
    """The requested models; by default the paper's four, or, when none of them ran, every model
    that ran (except the reference and its ablations) so the artefact still says something."""
    if compare:
        return [m for m in compare if m != reference]
    if any(rs.runs(ds, m) for ds in rs.datasets() for m in PAPER_COMPARE):
        return list(PAPER_COMPARE)
    return sorted(m for m in rs.all_models() if m != reference and m not in ABLATIONS)


@dataclass
class BucketView:
    """The evaluated test users of one dataset, their training degrees and bucket ids."""

    buckets: stats.Buckets
    users: np.ndarray
    bucket_of: np.ndarray  # aligned with users; -1 = below the first edge
    degree: np.ndarray     # aligned with users

    def users_in(self, b: int) -> np.ndarray:
        return self.users[self.bucket_of == b]


def bucket_view(rs: RunSet, ds: str, spec: str, metric: str = METRIC) -> BucketView | None:
    deg = rs.user_degree(ds)
    if deg is None:
        return None
    users = None
    for model in rs.models(ds):
        for r in rs.runs(ds, model):
            pu = r.per_user(metric)
            if pu is not None:
                users = pu[0] if users is None else np.union1d(users, pu[0])
    if users is None:
        return None
    if users.max(initial=-1) >= len(deg):
        warn(f"{ds}: test user ids exceed the training-degree array; sparsity buckets skipped")
        return None
    d = deg[users]
    b = stats.make_buckets(d, spec)
    return BucketView(b, users, b.assign(d), d)


def bucket_means(rs: RunSet, ds: str, model: str, view: BucketView, metric: str = METRIC):
    """[(mean, std) over seeds] per bucket of the per-seed bucket means of the per-user metric."""
    per_seed = []
    for r in rs.runs(ds, model):
        pu = r.per_user(metric)
        if pu is None:
            continue
        _, vals, bucket = stats.align(pu[0], pu[1], view.users, view.bucket_of)
        per_seed.append([float(vals[bucket == k].mean()) if np.any(bucket == k) else float("nan")
                         for k in range(len(view.buckets))])
    if not per_seed:
        return [(float("nan"), float("nan"))] * len(view.buckets)
    arr = np.asarray(per_seed)
    return [stats.seed_summary(arr[:, k])[:2] for k in range(arr.shape[1])]


def build(rs: RunSet, spec: str = "quantile:5", test: str = "ttest", reference: str = "mmssl",
          compare: list[str] | None = None, metric: str = METRIC) -> Table:
    stats.parse_buckets(spec)  # a bad spec fails before anything is computed
    models = resolve_compare(rs, compare, reference)
    ref_label = model_label(reference)
    blocks: list[Block] = []
    comps: list[Comparison] = []
    pending: list[tuple[Block, list[tuple[str, list]]]] = []
    for ds in rs.datasets():
        view = bucket_view(rs, ds, spec, metric)
        if view is None:
            block = Block(dataset_label(ds), [], ["buckets"])
            for m in models + [reference]:
                block.add(model_label(m), [MISSING])
            blocks.append(block)
            continue
        labels = view.buckets.labels
        block = Block(dataset_label(ds), [], labels)
        block.add("#users", [fmt_int(np.sum(view.bucket_of == k)) for k in range(len(labels))])
        block.add("#train interactions", [fmt_int(view.degree[view.bucket_of == k].sum())
                                          for k in range(len(labels))])
        ref_means = bucket_means(rs, ds, reference, view, metric)
        # with --tuned, a tuned cell is compared with a cell of its own kind only
        same_kind = {m: rs.kind(ds, m) == rs.kind(ds, reference) for m in models}
        for i, m in enumerate(models):
            means = bucket_means(rs, ds, m, view, metric)
            cells = []
            for (mean, std), (rmean, _) in zip(means, ref_means):
                text = fmt_value(mean, std)
                if text != MISSING and rs.rankable(ds) and same_kind[m] and np.isfinite(rmean) and mean > 0:
                    text += " " + fmt_pct((rmean - mean) / mean, arrows=True)
                cells.append(Cell(text))
            block.add(model_label(m), cells, rule=i == 0)
        block.add(ref_label, [Cell(fmt_value(*ms)) for ms in ref_means], rule=bool(models))
        p_rows = []
        for m in models if rs.ranked else ():
            row = []
            for k in range(len(labels)):
                c = None
                if rs.runs(ds, m) and rs.runs(ds, reference) and same_kind[m]:
                    res = per_user_test(rs, ds, reference, m, metric, test, users=view.users_in(k))
                    c = Comparison((ds, m, k), res)
                    if np.isfinite(c.p):
                        comps.append(c)
                row.append(c)
            p_rows.append((model_label(m), row))
        pending.append((block, p_rows))
        blocks.append(block)
    correct(comps)
    for block, p_rows in pending:
        for i, (lab, row) in enumerate(p_rows):
            block.add(f"p {ref_label} vs {lab} (raw)",
                      [MISSING if c is None else fmt_p(c.p) for c in row], rule=i == 0)
            block.add(f"p {ref_label} vs {lab} (Holm)",
                      [MISSING if c is None else fmt_p(c.p_holm) for c in row])

    kind, val = stats.parse_buckets(spec)
    how = {"quantile": f"up to {val} NGCF-style groups of about equal total training interactions",
           "users": f"up to {val} groups of about equal numbers of users"}.get(kind)
    how = (how + " (users with equal degree share a group, so heavy ties can merge groups)" if how
           else "explicit edges " + ",".join(map(str, val)))
    caption = (
        f"Performance w.r.t. user interaction sparsity (Table 4 of Wei et al., WWW'23, rebuilt from our "
        f"run records): test {metric_label(metric)} of the evaluated test users grouped by their number "
        f"of TRAINING interactions ({how}; the last group is open-ended). Cells: mean over users (± "
        f"sample std of the per-seed means when several seeds ran)"
        + (f"; ↑/↓% = relative improvement of {ref_label} over the row's model, (ours − theirs) / theirs. "
           + family_note(test, metric_label(metric) + " within each bucket")
           + f" Holm family size: {len(comps)}." if rs.ranked else ".")
        + f" {MISSING} = no run or no training degrees."
    )
    return report_table(rs, "table4", "Table 4: performance w.r.t. user sparsity", caption, "Model", blocks,
                        rs.datasets(), set(models) | {reference})


def write(rs: RunSet, out: Path, spec: str = "quantile:5", test: str = "ttest",
          reference: str = "mmssl", compare: list[str] | None = None) -> list[Path]:
    return write_table(build(rs, spec, test, reference, compare), out)
