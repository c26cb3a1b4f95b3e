"""Table 2 rebuilt from our runs: the paper's rows in its order, datasets as column groups,
R@20 / P@20 / N@20 (mean ± std over seeds), best bold and second underlined, then each reference
model against the best baseline: per-user and across-seed p-values (raw and Holm) and the relative
improvement. Optionally the paper's published numbers beside ours, labelled as such.

MMSSL is two results, never one: `mmssl` (the paper's equations) and `mmssl-official` (what the
authors' code computes) are two ranked rows where the paper has one, each with its own p-values and
Improv. against the best baseline (the best ranked row that is not an MMSSL variant, an ablation or a
reference). Rows the paper lacks — the floors (MostPop, ItemKNN) and the newer multimodal models
(FREEDOM, BM3) — follow the paper's rows and are ranked with them; the RecBole cross-check rows are
not ranked.

One table per budget (`table2.md`, `table2-quick.md`, …): only the full one ranks anything; the others
are smoke checks with values only (no marks, p-values, Improv. or paper columns).

With `report --tuned` each row is labelled `default` or `tuned (N trials)` (per dataset where they
differ), and bold/underline, the best baseline, p-values and Improv. compare only cells of the same
kind: a tuned model is never ranked against a default one.
"""
from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import numpy as np

from mmbench.eval.metrics import NDCG_20, PRECISION_20, RECALL_20
from mmbench.reports.common import (DEFAULT, MISSING, TUNED, Block, Cell, Comparison, RunSet, Table, correct,
                                    dataset_label, family_note, fmt_p, fmt_pct, fmt_value,
                                    mark_best, metric_label, per_user_test, report_table, write_table)
from mmbench import stats

# (our row label, our registered model or None when we have no implementation), the paper's order;
# MMSSL is the paper's one row as our two variants.
PAPER_ROWS: list[tuple[str, str | None]] = [
    ("MF-BPR", "mf-bpr"), ("NGCF", "recbole-ngcf"), ("LightGCN", "lightgcn"), ("SGL", "recbole-sgl"),
    ("NCL", "recbole-ncl"), ("HCCF", "hccf"), ("VBPR", "vbpr"), ("LightGCN-M", "lightgcn-m"),
    ("MMGCN", "mmgcn"), ("GRCN", "grcn"), ("LATTICE", "lattice"), ("CLCRec", "clcrec"), ("MMGCL", "mmgcl"),
    ("SLMRec", "slmrec"), ("MMSSL (paper)", "mmssl"), ("MMSSL (authors' code)", "mmssl-official"),
]
# Rows the paper lacks, ranked with its rows: the non-neural floors, then newer multimodal models.
NEW_ROWS: list[tuple[str, str]] = [
    ("MostPop", "mostpop"), ("ItemKNN", "itemknn"), ("FREEDOM", "freedom"), ("BM3", "bm3"),
]
RANKED_ROWS: list[tuple[str, str | None]] = PAPER_ROWS + NEW_ROWS
# Cross-check implementations, shown below the ranked rows and never ranked.
EXTRA_ROWS: list[tuple[str, str]] = [
    ("BPR (RecBole)", "recbole-bpr"), ("LightGCN (RecBole)", "recbole-lightgcn"),
]
MMSSL_VARIANTS = ("mmssl", "mmssl-official")  # the proposed method: never anybody's baseline
PAPER_ROW_OF = {"mmssl": "MMSSL", "mmssl-official": "MMSSL"}  # our row -> the paper's row it mirrors
ABLATIONS = ("mmssl-wo-asl", "mmssl-wo-cl", "mmssl-wo-gt", "mmssl-rp-gae")  # Table 3's rows
METRICS = (RECALL_20, PRECISION_20, NDCG_20)
PAPER_FILE = "paper_table2.csv"


def load_paper_table2() -> dict[tuple[str, str], dict[str, float]]:
    """{(paper row, paper dataset name): {metric: value}} from the typed copy of the paper's table."""
    text = resources.files("mmbench.reports").joinpath(PAPER_FILE).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    out = {}
    for row in csv.DictReader(lines):
        out[(row["row"], row["dataset"])] = {m: float(row[m]) for m in METRICS}
    return out


def _fmt_delta(x: float) -> str:
    return MISSING if not np.isfinite(x) else f"{x:+.4f}"


def references_of(reference: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The models whose improvement Table 2 tests: both MMSSL variants unless named (comma-separated)."""
    if reference is None:
        return list(MMSSL_VARIANTS)
    names = reference.split(",") if isinstance(reference, str) else list(reference)
    return [n.strip() for n in names if n.strip()]


def build(rs: RunSet, test: str = "ttest", reference: str | list[str] | None = None,
          paper_reference: bool = False) -> Table:
    refs = references_of(reference)
    datasets = rs.datasets()
    main = list(RANKED_ROWS)
    known = {m for _, m in main if m} | {m for _, m in EXTRA_ROWS} | set(ABLATIONS)
    extras = list(EXTRA_ROWS) + [(m, m) for m in sorted(rs.all_models() - known)]
    extras += [(r, r) for r in refs if r not in {m for _, m in main + extras}]
    label_of = {m: lab for lab, m in main + extras if m}
    paper_row = {lab: PAPER_ROW_OF.get(m, lab) for lab, m in PAPER_ROWS}  # rows the paper has
    paper = load_paper_table2() if paper_reference and rs.ranked else {}  # Δ is a comparison too
    paper_ds = {ds for ds in datasets if any(k[1] == dataset_label(ds) for k in paper)}

    # ---- columns: per dataset our three metrics (+ the paper's and the deltas) ----------------
    columns: list[tuple[str, str, str]] = []  # (dataset, kind: ours|paper|delta, metric)
    groups = []
    for ds in datasets:
        kinds = ("ours", "paper", "delta") if ds in paper_ds else ("ours",)
        cols = [(ds, kind, m) for kind in kinds for m in METRICS]
        columns += cols
        groups.append((dataset_label(ds), len(cols)))
    names = {"ours": "{}", "paper": "paper {}", "delta": "Δ {}"}
    block = Block("", groups, [names[k].format(metric_label(m)) for _, k, m in columns])

    # ---- model rows ------------------------------------------------------------------------
    def model_cells(label: str, model: str | None) -> list[Cell]:
        cells = []
        for ds, kind, m in columns:
            mean, std, _ = rs.summary(ds, model, m)
            published = paper.get((paper_row.get(label), dataset_label(ds)), {}).get(m, float("nan"))
            if kind == "ours":
                cells.append(Cell(fmt_value(mean, std)))
            elif kind == "paper":
                cells.append(Cell(fmt_value(published)))
            else:
                cells.append(Cell(_fmt_delta(mean - published)))
        return cells

    def row_label(label: str, model: str | None) -> str:
        kind = rs.model_kind_label(model, datasets) if rs.tuned and model else MISSING
        return label if kind == MISSING else f"{label} · {kind}"  # no runs: nothing to label

    main_cells = [model_cells(lab, m) for lab, m in main]
    for j, (ds, kind, m) in enumerate(columns):
        if kind == "ours" and rs.rankable(ds):
            for config_kind in (DEFAULT, TUNED):  # marks compare cells of the same kind only
                rows = [i for i, (_, mdl) in enumerate(main) if rs.kind(ds, mdl) == config_kind]
                mark_best([main_cells[i][j] for i in rows], [rs.summary(ds, main[i][1], m)[0] for i in rows])
    for i, ((lab, mdl), cells) in enumerate(zip(main, main_cells)):
        block.add(row_label(lab, mdl), cells, rule=i == len(PAPER_ROWS))
    for i, (lab, m) in enumerate(extras):
        block.add(row_label(lab, m), model_cells(lab, m), rule=i == 0)
    shown_models = {m for _, m in main + extras if m}
    if not rs.ranked:
        caption = (
            "Table 2's rows rebuilt from our run records: test Recall@20 (R@20), Precision@20 (P@20) and "
            "NDCG@20 (N@20); mean ± sample std over seeds when a model ran with several seeds. MMSSL is two "
            "rows: the paper's equations and the authors' code. Rows below the second rule are cross-check "
            f"implementations. {MISSING} = no run.")
        return report_table(rs, "table2", "Table 2: performance comparison", caption, "Model", [block],
                            datasets, shown_models)

    # ---- each reference against the best baseline ------------------------------------------
    baselines = [m for _, m in main if m and m not in refs and m not in MMSSL_VARIANTS]
    comps: dict[tuple, Comparison] = {}
    best_of: dict[tuple, str | None] = {}
    for ds in datasets:
        for m in METRICS:
            for ref in refs:
                ref_kind = rs.kind(ds, ref) or DEFAULT  # no reference runs: as without --tuned
                # the best baseline of the reference's own kind (default vs tuned, never across)
                means = {b: rs.summary(ds, b, m)[0] for b in baselines if rs.kind(ds, b) == ref_kind}
                means = {b: v for b, v in means.items() if np.isfinite(v)}
                best = max(means, key=lambda b: (means[b], -baselines.index(b))) if means else None
                best_of[(ref, ds, m)] = best
                if best is None or not rs.runs(ds, ref) or not rs.rankable(ds):
                    continue
                comps[(ref, "user", ds, m)] = Comparison((ref, "user", ds, m),
                                                         per_user_test(rs, ds, ref, best, m, test))
                sa, sb = rs.by_seed(ds, ref, m), rs.by_seed(ds, best, m)
                if len(set(sa) & set(sb)) >= 2:
                    comps[(ref, "seed", ds, m)] = Comparison((ref, "seed", ds, m), stats.seed_test(sa, sb))
    family = [c for c in comps.values() if np.isfinite(c.p)]
    correct(family)

    def stat_row(fn, paper_fn=None) -> list[Cell]:
        cells = []
        for ds, kind, m in columns:
            if kind == "ours":
                cells.append(Cell(fn(ds, m)))
            elif kind == "paper" and paper_fn is not None:
                cells.append(Cell(paper_fn(ds, m)))
            else:
                cells.append(Cell(MISSING))
        return cells

    def p_text(ref: str, kind: str, holm: bool):
        def f(ds, m):
            c = comps.get((ref, kind, ds, m))
            return MISSING if c is None else fmt_p(c.p_holm if holm else c.p)
        return f

    def improv(ref: str):
        def f(ds, m):
            best = best_of[(ref, ds, m)]
            a, b = rs.summary(ds, ref, m)[0], rs.summary(ds, best, m)[0]
            return fmt_pct((a - b) / b) if best and rs.rankable(ds) and np.isfinite(a) and b else MISSING
        return f

    def paper_val(row, scale=1.0, fmt=fmt_p):
        def f(ds, m):
            v = paper.get((row, dataset_label(ds)), {}).get(m)
            return MISSING if v is None else fmt(v * scale)
        return f

    def best_label(ds, m):
        best = {best_of[(ref, ds, m)] for ref in refs} - {None}
        return " / ".join(label_of.get(b, b) for b in sorted(best, key=baselines.index)) or MISSING

    block.add("Best baseline", stat_row(best_label), rule=True)
    for ref in refs:
        lab = label_of.get(ref, ref)
        block.add(f"p {lab} (per-user, raw)", stat_row(p_text(ref, "user", False)))
        block.add(f"p {lab} (per-user, Holm)", stat_row(p_text(ref, "user", True)))
        block.add(f"p {lab} (seeds, raw)", stat_row(p_text(ref, "seed", False)))
        block.add(f"p {lab} (seeds, Holm)", stat_row(p_text(ref, "seed", True)))
        block.add(f"Improv. {lab}", stat_row(improv(ref)))
    if paper_ds:  # the paper's one MMSSL row: its p-value and Improv., in the paper's columns only
        block.add("p-value (as published)", stat_row(lambda ds, m: MISSING, paper_val("p-value")))
        block.add("Improv. (as published)", stat_row(lambda ds, m: MISSING, paper_val("Improv.", 0.01, fmt_pct)))

    ref_labels = " and ".join(label_of.get(r, r) for r in refs)
    mapping = ", ".join(f"{lab}={m}" for lab, m in main if m)
    missing = ", ".join(lab for lab, m in main if m is None)
    caption = (
        "Performance comparison (Table 2 of Wei et al., WWW'23, rebuilt from our run records): test "
        "Recall@20 (R@20), Precision@20 (P@20) and NDCG@20 (N@20); mean ± sample std over seeds when a "
        "model ran with several seeds. The paper's one MMSSL row is two results here: MMSSL (paper) "
        "implements the paper's equations, MMSSL (authors' code) what the authors' code computes. Rows "
        "below the first rule are not in the paper (the MostPop and ItemKNN floors, the newer FREEDOM and "
        "BM3); they are ranked with the paper's rows. Bold = best, underlined = second best among the "
        "ranked rows; rows below the second rule are cross-check implementations (not ranked). Best "
        "baseline = the ranked row with the highest mean that is not an MMSSL variant, an ablation or a "
        f"reference, per column; each of {ref_labels} is compared with it in its own p-value and Improv. "
        "rows. " + family_note(test, "metrics")
        + f" p (seeds): two-sided paired t-test over the per-seed means matched by seed (≥2 common "
        f"seeds). Holm family size: {len(family)} (both references' tests together). Improv. = (reference "
        f"− best baseline) / best baseline. Rows map to models {mapping}"
        + (f"; {missing} have no implementation" if missing else "") + f". {MISSING} = no run."
    )
    if paper_ds:
        caption += (" Columns 'paper' hold the values PUBLISHED in the paper's Table 2 (typed into "
                    f"mmbench/reports/{PAPER_FILE}), not ours; Δ = ours − paper; both MMSSL rows are set "
                    "beside the paper's one MMSSL row; the rows 'as published' hold the paper's p-value and "
                    "Improv. of its MMSSL.")
    if rs.tuned:
        caption += (" Each row says whether its runs used the model's default configuration or one tuned "
                    "on valid by `mmbench tune` (N trials, the same search for every model); marks, the best "
                    "baseline, p-values and Improv. compare only rows of the reference's kind per dataset "
                    "(bold/underline: within each kind).")
    return report_table(rs, "table2", "Table 2: performance comparison", caption, "Model", [block],
                        datasets, shown_models)


def write(rs: RunSet, out: Path, test: str = "ttest", reference: str | list[str] | None = None,
          paper_reference: bool = False) -> list[Path]:
    return write_table(build(rs, test, reference, paper_reference), out)
