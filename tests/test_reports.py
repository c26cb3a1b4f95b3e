"""The report generators on synthetic run records with known values, checked cell by cell; the
Markdown, LaTeX and CSV files must carry the same cells, and the figures must be written."""
from __future__ import annotations

import dataclasses

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from mmbench import records
from mmbench.cli import main as cli_main
from mmbench.reports import common, costs, table2, table3, table4

KS = (10, 20, 50)
METRICS = ("recall", "precision", "ndcg", "ndcg_legacy", "hit")
DATASETS = {"baby": (400, 150), "toyset": (300, 120)}
QUALITY = {"mmssl": 0.30, "lattice": 0.25, "mf-bpr": 0.15, "mmssl-wo-cl": 0.27}
SEEDS = (1, 2)


# --------------------------------------------------------------------------- synthetic records
def dataset_facts(di: int, n_users: int, n_items: int):
    rng = np.random.default_rng(100 + di)
    user_deg = np.where(rng.random(n_users) < 0.7, rng.choice([1, 2, 3], n_users, p=[0.5, 0.3, 0.2]),
                        rng.integers(4, 40, n_users))
    user_deg[:3] = 0  # zero-degree users exist in real data
    item_deg = rng.geometric(0.08, n_items) - 1
    test_users = np.arange(n_users)[np.arange(n_users) % 9 != 4]  # some users are not evaluated
    valid_counts = rng.poisson(2.0, n_items)
    return user_deg.astype(np.int64), item_deg.astype(np.int64), test_users.astype(np.int64), valid_counts


def make_results(root: Path, models=QUALITY, datasets=DATASETS, seeds=SEEDS, with_degrees=True,
                 budget="full", config="h-{model}", created="2024-01-01", noise=0, protocol=None) -> Path:
    """Synthetic records under root/runs: `config` names each model's config_hash, `created` the
    day its runs were made, `noise` shifts the random values (another run of the same models)."""
    for di, (ds, (n_users, n_items)) in enumerate(datasets.items()):
        user_deg, item_deg, users, valid_counts = dataset_facts(di, n_users, n_items)
        for mi, (model, q) in enumerate(models.items()):
            config_hash = config.format(model=model)
            for seed in seeds:
                rng = np.random.default_rng(1000 * di + 10 * mi + seed + 100_000 * noise)
                base = q * (0.5 + 0.5 * np.log1p(user_deg[users]) / np.log(40.0))
                arrays = {"test_users": users}
                test = {}
                for k in KS:
                    for j, m in enumerate(METRICS):
                        v = np.clip(base * (k / 20) ** 0.5 * (1 + 0.1 * j) + rng.normal(0, 0.08, len(users)), 0, 1)
                        arrays[f"test/{m}@{k}"] = v
                        test[f"{m}@{k}"] = float(v.mean())
                n_val = 4 + seed
                p_item = np.clip(q * (0.3 + np.log1p(item_deg) / 4), 0, 1)
                arrays["valid_item_hits"] = rng.binomial(np.tile(valid_counts, (n_val, 1)), p_item).astype(np.int32)
                arrays["valid_item_counts"] = valid_counts
                arrays["valid_epochs"] = np.arange(1, n_val + 1)
                arrays["test_item_counts"] = valid_counts
                arrays["test_item_hits@20"] = np.zeros(n_items, np.int64)
                if with_degrees:
                    arrays["train_user_degree"] = user_deg
                    arrays["train_item_degree"] = item_deg
                history = [{"epoch": e, "losses": {"loss": 1.0 / e}, "train_seconds": q * 10 + seed,
                            "valid": {"recall@20": q * (1 - np.exp(-e / 2)) + 0.001 * seed},
                            "eval_seconds": 0.5} for e in range(1, n_val + 1)]
                record = records.RunRecord(
                    model=model, dataset=records.DatasetRef(name=ds, fingerprint=f"fp-{ds}"),
                    config={}, config_hash=config_hash, seed=seed, budget=budget, threads=1, device="cpu",
                    run_id=f"{config_hash}-{budget}-seed{seed}", protocol=dict(protocol or {}), env={"device": "cpu"},
                    history=history, best_epoch=n_val, valid=history[-1]["valid"], test=test,
                    n_test_users=len(users),
                    timings={"train_seconds_per_epoch": q * 10 + seed, "eval_seconds_per_validation": 0.5,
                             "test_seconds": 0.25 * seed, "total_seconds": 100 * q + seed, "epochs_run": n_val},
                    peak_memory_mb=500 + 10 * seed, created=f"{created}T00:00:{seed:02d}+00:00",
                )
                records.write_record(records.run_dir(root, ds, model, record.run_id, record.dataset.fingerprint),
                                     record, arrays)
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def rs(results):
    return common.load_runs(results)


# --------------------------------------------------------------------------- expected values
def seed_values(results: Path, ds: str, model: str, metric: str, budget="full", config=None) -> list[float]:
    vals = []
    for f in records.find_records(results):
        r = records.read_record(f)
        if (r.dataset.name == ds and r.model == model and r.budget == budget
                and config in (None, r.config_hash)):
            vals.append(r.test[metric])
    return vals


def expected_cell(results, ds, model, metric, budget="full", config=None) -> str:
    v = seed_values(results, ds, model, metric, budget, config)
    if not v:
        return "–"
    return f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def per_user_mean(results, ds, model, metric):
    parts = {}
    for f in records.find_records(results):
        r = records.read_record(f)
        if r.dataset.name == ds and r.model == model:
            a = records.read_arrays(f)
            parts[r.seed] = dict(zip(a["test_users"].tolist(), a[f"test/{metric}"].tolist()))
    users = sorted(set.intersection(*(set(p) for p in parts.values())))
    return users, np.array([[p[u] for p in parts.values()] for u in users]).mean(axis=1)


def fmt_p(p: float) -> str:
    return f"{p:.2e}" if p < 0.001 else f"{p:.3f}"


# --------------------------------------------------------------------------- parsing the files
def parse_md(path: Path) -> dict:
    """{(block, row, column): (text, mark)} from the Markdown file."""
    cells, block, header = {}, "", None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            block, header = line[3:], None
            continue
        if not line.startswith("|"):
            continue
        parts = [p.strip() for p in re.split(r"(?<!\\)\|", line)[1:-1]]
        if header is None:
            header = parts
            continue
        if set(parts[0]) <= {":", "-"}:
            continue
        for col, text in zip(header[1:], parts[1:]):
            mark = ""
            if text.startswith("**"):
                text, mark = text[2:-2], "best"
            elif text.startswith("<u>"):
                text, mark = text[3:-4], "second"
            cells[(block, parts[0], col)] = (text, mark)
    return cells


def parse_csv(path: Path) -> dict:
    """Like parse_md; the CSV's empty (missing) values read back as the Markdown's '–'."""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == common.CSV_COLUMNS
    assert not any(r["value"] == "–" for r in rows)  # a missing value is an empty field
    return {(r["block"], r["row"], " ".join(x for x in (r["group"], r["column"]) if x)): (r["value"] or "–", r["mark"])
            for r in rows}


TEX_BACK = [(r"$\pm$", "±"), (r"$\uparrow$", "↑"), (r"$\downarrow$", "↓"), (r"$\infty$", "∞"),
            (r"$\Delta$", "Δ"), ("--", "–"), (r"\%", "%"), (r"\_", "_"), (r"\&", "&"), (r"\#", "#")]


def untex(s: str) -> tuple[str, str]:
    mark = ""
    m = re.fullmatch(r"\\(textbf|underline)\{(.*)\}", s)
    if m:
        mark, s = ("best" if m.group(1) == "textbf" else "second"), m.group(2)
    for a, b in TEX_BACK:
        s = s.replace(a, b)
    return s, mark


def parse_tex_rows(path: Path) -> list[list[tuple[str, str]]]:
    """Data rows (label + cells) of every tabular, in order."""
    rows, in_body = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(r"\begin{tabular}"):
            in_body = False
        elif line == r"\midrule" and not in_body:
            in_body = True
        elif line in (r"\bottomrule",):
            in_body = False
        elif in_body and line.endswith(r"\\"):
            rows.append([untex(c.strip()) for c in line[:-2].split(" & ")])
    return rows


def assert_same_cells(out: Path, name: str) -> dict:
    """md == csv cell for cell, and tex rows == md rows in order; returns the md cells."""
    md = parse_md(out / f"{name}.md")
    assert md == parse_csv(out / f"{name}.csv")
    if (out / f"{name}.tex").exists():
        tex = parse_tex_rows(out / f"{name}.tex")
        md_rows: dict = {}
        for (block, row, col), v in md.items():
            md_rows.setdefault((block, row), []).append(v)
        assert [[(r[0][0], "")] + r[1:] for r in tex] == [[(row, "")] + v for (_, row), v in md_rows.items()]
    return md


# --------------------------------------------------------------------------- Table 2
def test_table2_cells(results, rs, tmp_path):
    table2.write(rs, tmp_path)
    md = assert_same_cells(tmp_path, "table2")
    shown = {"baby": "Amazon-Baby", "toyset": "toyset"}
    main_models = {"MF-BPR": "mf-bpr", "LATTICE": "lattice", "MMSSL (paper)": "mmssl"}
    for ds, group in shown.items():
        for metric, short in (("recall@20", "R@20"), ("precision@20", "P@20"), ("ndcg@20", "N@20")):
            col = f"{group} {short}"
            for row, model in main_models.items():
                assert md[("", row, col)][0] == expected_cell(results, ds, model, metric)
            assert md[("", "MMSSL (paper)", col)][1] == "best" and md[("", "LATTICE", col)][1] == "second"
            assert md[("", "MF-BPR", col)][1] == ""
            for row in ("HCCF", "NGCF", "CLCRec", "MMSSL (authors' code)", "LightGCN (RecBole)"):
                assert md[("", row, col)] == ("–", "")
            assert md[("", "Best baseline", col)][0] == "LATTICE"
            a = np.mean(seed_values(results, ds, "mmssl", metric))
            b = np.mean(seed_values(results, ds, "lattice", metric))
            assert md[("", "Improv. MMSSL (paper)", col)][0] == f"{(a - b) / b * 100:.2f}%"
    assert not any(k[1] == "mmssl-wo-cl" for k in md)  # ablations belong to Table 3

    # p-values: per-user (means over seeds) and across seeds, one Holm family of 12 tests
    raw, where = [], []
    for ds, group in shown.items():
        for metric, short in (("recall@20", "R@20"), ("precision@20", "P@20"), ("ndcg@20", "N@20")):
            ua, va = per_user_mean(results, ds, "mmssl", metric)
            ub, vb = per_user_mean(results, ds, "lattice", metric)
            assert ua == ub
            raw.append(sps.ttest_rel(va, vb).pvalue)
            where.append(("user", f"{group} {short}"))
            raw.append(sps.ttest_rel(seed_values(results, ds, "mmssl", metric),
                                     seed_values(results, ds, "lattice", metric)).pvalue)
            where.append(("seeds", f"{group} {short}"))
    holm = multipletests(raw, method="holm")[1]
    for (kind, col), p, ph in zip(where, raw, holm):
        label = "per-user" if kind == "user" else "seeds"
        assert md[("", f"p MMSSL (paper) ({label}, raw)", col)][0] == fmt_p(p)
        assert md[("", f"p MMSSL (paper) ({label}, Holm)", col)][0] == fmt_p(ph)
    caption = (tmp_path / "table2.md").read_text(encoding="utf-8")
    assert "Holm family size: 12" in caption and "every test printed in this artefact" in caption


def test_table2_paper_reference(results, rs, tmp_path):
    table2.write(rs, tmp_path, paper_reference=True)
    md = assert_same_cells(tmp_path, "table2")
    ours = np.mean(seed_values(results, "baby", "mmssl", "recall@20"))
    assert md[("", "MMSSL (paper)", "Amazon-Baby paper R@20")] == ("0.0962", "")
    assert md[("", "LATTICE", "Amazon-Baby paper N@20")] == ("0.0368", "")
    assert md[("", "MMSSL (paper)", "Amazon-Baby Δ R@20")][0] == f"{ours - 0.0962:+.4f}"
    assert md[("", "p-value (as published)", "Amazon-Baby paper R@20")][0] == "2.23e-06"
    assert md[("", "Improv. (as published)", "Amazon-Baby paper R@20")][0] == "16.04%"
    assert md[("", "MMSSL (authors' code)", "Amazon-Baby paper R@20")][0] == "0.0962"  # the paper's one MMSSL
    assert md[("", "FREEDOM", "Amazon-Baby paper R@20")][0] == "–"  # the paper has no such row
    assert not any("paper" in k[2] for k in md if k[2].startswith("toyset"))  # no published values
    assert "PUBLISHED" in (tmp_path / "table2.md").read_text(encoding="utf-8")
    assert len(table2.load_paper_table2()) == 17 * 4


def test_table2_reference_switch_and_wilcoxon(results, rs, tmp_path):
    """With another reference, an MMSSL variant is still never its baseline: LATTICE is tested against
    MF-BPR, the best row that is neither an MMSSL variant nor the reference."""
    table2.write(rs, tmp_path, test="wilcoxon", reference="lattice")
    md = parse_md(tmp_path / "table2.md")
    _, va = per_user_mean(results, "baby", "lattice", "ndcg@20")
    _, vb = per_user_mean(results, "baby", "mf-bpr", "ndcg@20")
    assert md[("", "Best baseline", "Amazon-Baby N@20")][0] == "MF-BPR"
    assert md[("", "p LATTICE (per-user, raw)", "Amazon-Baby N@20")][0] == fmt_p(sps.wilcoxon(va, vb).pvalue)
    assert not any(row.startswith("p MMSSL") for _, row, _ in md)


def test_table2_has_two_mmssl_rows_each_tested_against_the_best_baseline(tmp_path):
    """Both MMSSL variants are ranked results with their own p-values and Improv. against the best
    row that is not an MMSSL variant; one Holm family holds both references' tests."""
    results = make_results(tmp_path / "res", models={"mmssl": 0.30, "mmssl-official": 0.33, "lattice": 0.25,
                                                      "freedom": 0.27, "mostpop": 0.1},
                           datasets={"toyset": (300, 120)})
    table2.write(common.load_runs(results), tmp_path / "out")
    md = assert_same_cells(tmp_path / "out", "table2")
    col = "toyset R@20"
    assert md[("", "MMSSL (authors' code)", col)][1] == "best" and md[("", "MMSSL (paper)", col)][1] == "second"
    assert md[("", "Best baseline", col)][0] == "FREEDOM"  # a new row, ranked with the paper's
    for ref, row in (("mmssl", "MMSSL (paper)"), ("mmssl-official", "MMSSL (authors' code)")):
        a = np.mean(seed_values(results, "toyset", ref, "recall@20"))
        b = np.mean(seed_values(results, "toyset", "freedom", "recall@20"))
        assert md[("", f"Improv. {row}", col)][0] == f"{(a - b) / b * 100:.2f}%"
        _, va = per_user_mean(results, "toyset", ref, "recall@20")
        _, vb = per_user_mean(results, "toyset", "freedom", "recall@20")
        assert md[("", f"p {row} (per-user, raw)", col)][0] == fmt_p(sps.ttest_rel(va, vb).pvalue)
    rows = [row for _, row, c in md if c == col]
    assert rows.index("MMSSL (authors' code)") < rows.index("MostPop") < rows.index("FREEDOM") < rows.index("BM3")
    assert "Holm family size: 12" in (tmp_path / "out" / "table2.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- Table 3
def test_table3_cells(results, rs, tmp_path):
    table3.write(rs, tmp_path)
    md = assert_same_cells(tmp_path, "table3")
    raw = []
    for ds, group in (("baby", "Amazon-Baby"), ("toyset", "toyset")):
        for metric, short in (("recall@20", "R@20"), ("ndcg@20", "N@20")):
            col = f"{group} {short}"
            assert md[("", "MMSSL (paper)", col)] == (expected_cell(results, ds, "mmssl", metric), "best")
            assert md[("", "w/o-CL", col)] == (expected_cell(results, ds, "mmssl-wo-cl", metric), "second")
            assert md[("", "w/o-ASL", col)] == ("–", "")
            assert md[("", "p MMSSL vs w/o-ASL (raw)", col)][0] == "–"
            _, va = per_user_mean(results, ds, "mmssl", metric)
            _, vb = per_user_mean(results, ds, "mmssl-wo-cl", metric)
            raw.append((col, sps.ttest_rel(va, vb).pvalue))
    holm = multipletests([p for _, p in raw], method="holm")[1]
    for (col, p), ph in zip(raw, holm):
        assert md[("", "p MMSSL vs w/o-CL (raw)", col)][0] == fmt_p(p)
        assert md[("", "p MMSSL vs w/o-CL (Holm)", col)][0] == fmt_p(ph)


# --------------------------------------------------------------------------- Table 4
def test_table4_explicit_edges(results, rs, tmp_path):
    table4.write(rs, tmp_path, spec="0,1,3,10", compare=["lattice", "mf-bpr", "vbpr"])
    md = assert_same_cells(tmp_path, "table4")
    labels = ["[0,1]", "(1,3]", "(3,10]", "(10,∞)"]
    raw, where = [], []
    for di, (ds, block) in enumerate((("baby", "Amazon-Baby"), ("toyset", "toyset"))):
        user_deg, _, users, _ = dataset_facts(di, *DATASETS[ds])
        bucket = np.searchsorted([1, 3, 10], user_deg[users], side="left")
        for k, lab in enumerate(labels):
            assert md[(block, "#users", lab)][0] == str(int(np.sum(bucket == k)))
            assert md[(block, "#train interactions", lab)][0] == str(int(user_deg[users][bucket == k].sum()))
            per_seed = {}
            for model in ("mmssl", "lattice", "mf-bpr"):
                vals = []
                for f in records.find_records(results):
                    r = records.read_record(f)
                    if r.dataset.name == ds and r.model == model:
                        vals.append(records.read_arrays(f)["test/ndcg@20"][bucket == k].mean())
                per_seed[model] = vals
            ref = np.mean(per_seed["mmssl"])
            assert md[(block, "MMSSL (paper)", lab)][0] == f"{ref:.4f} ± {np.std(per_seed['mmssl'], ddof=1):.4f}"
            for model, row in (("lattice", "LATTICE"), ("mf-bpr", "MF-BPR")):
                m = np.mean(per_seed[model])
                imp = (ref - m) / m
                arrow = f"{'↑' if imp >= 0 else '↓'}{abs(imp) * 100:.2f}%"
                assert md[(block, row, lab)][0] == f"{m:.4f} ± {np.std(per_seed[model], ddof=1):.4f} {arrow}"
                _, va = per_user_mean(results, ds, "mmssl", "ndcg@20")
                _, vb = per_user_mean(results, ds, model, "ndcg@20")
                raw.append(sps.ttest_rel(va[bucket == k], vb[bucket == k]).pvalue)
                where.append((block, f"p MMSSL (paper) vs {row}", lab))
            assert md[(block, "VBPR", lab)][0] == "–"
            assert md[(block, "p MMSSL (paper) vs VBPR (raw)", lab)][0] == "–"
    holm = multipletests(raw, method="holm")[1]
    for (block, row, lab), p, ph in zip(where, raw, holm):
        assert md[(block, f"{row} (raw)", lab)][0] == fmt_p(p)
        assert md[(block, f"{row} (Holm)", lab)][0] == fmt_p(ph)
    assert f"Holm family size: {len(raw)}" in (tmp_path / "table4.md").read_text(encoding="utf-8")


def test_table4_quantile_default_compare(rs, tmp_path):
    # none of the paper's Table 4 models ran except LATTICE: the paper's four rows are shown
    table4.write(rs, tmp_path, spec="quantile:5")
    md = assert_same_cells(tmp_path, "table4")
    rows = {k[1] for k in md if k[0] == "Amazon-Baby"}
    assert {"VBPR", "MMGCN", "LATTICE", "SLMRec", "MMSSL (paper)", "#users"} <= rows
    cols = [k[2] for k in md if k[0] == "Amazon-Baby" and k[1] == "#users"]
    assert cols[0].startswith("[0,") and cols[-1].endswith(",∞)") and 2 <= len(cols) <= 5
    assert sum(int(md[("Amazon-Baby", "#users", c)][0]) for c in cols) == len(dataset_facts(0, 400, 150)[2])


def test_degree_fallback_to_dataset(tmp_path, monkeypatch):
    results = make_results(tmp_path / "res", models={"mmssl": 0.3, "lattice": 0.2}, seeds=(1,),
                           datasets={"baby": (400, 150)}, with_degrees=False)
    user_deg = dataset_facts(0, 400, 150)[0]

    class FakeData:
        n_items = 150
        fingerprint = "fp-baby"  # the data the runs saw (make_results' fingerprint)
        train = sp.csr_matrix((np.ones(user_deg.sum()), np.arange(user_deg.sum()) % 150,
                               np.concatenate([[0], np.cumsum(user_deg)])), shape=(400, 150))

    import mmbench.data.registry as registry

    monkeypatch.setattr(common, "_DATASETS", {})
    monkeypatch.setattr(registry, "load_dataset", lambda name, **kw: FakeData())
    table4.write(common.load_runs(results), tmp_path / "a", spec="0,1,3,10")
    md = parse_md(tmp_path / "a" / "table4.md")
    users = dataset_facts(0, 400, 150)[2]
    assert md[("Amazon-Baby", "#users", "[0,1]")][0] == str(int(np.sum(user_deg[users] <= 1)))

    def broken(name, **kw):
        raise FileNotFoundError("no data here")

    monkeypatch.setattr(common, "_DATASETS", {})
    monkeypatch.setattr(registry, "load_dataset", broken)
    table4.write(common.load_runs(results), tmp_path / "b", spec="0,1,3,10")
    md = parse_md(tmp_path / "b" / "table4.md")
    assert md[("Amazon-Baby", "MMSSL (paper)", "buckets")][0] == "–"


# --------------------------------------------------------------------------- costs, figures, CLI
def test_costs_cells(results, rs, tmp_path):
    costs.write(rs, tmp_path)
    md = parse_md(tmp_path / "costs.md")
    assert md == parse_csv(tmp_path / "costs.csv")
    row = "Amazon-Baby / LATTICE"
    assert md[("", row, "seeds")][0] == "1,2"
    assert md[("", row, "s/epoch (train)")][0] == f"{np.mean([3.5, 4.5]):.2f} ± {np.std([3.5, 4.5], ddof=1):.2f}"
    assert md[("", row, "epochs run")][0] == f"{5.5:.1f} ± {np.std([5, 6], ddof=1):.1f}"
    assert md[("", row, "peak MB")][0] == f"{515:.0f} ± {np.std([510, 520], ddof=1):.0f}"
    assert md[("", row, "device")][0] == "cpu"


def test_report_all_cli(results, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["report", "all", "--results", str(results), "--out", str(out),
                            "--buckets", "0,4,6,9,13", "--paper-reference"]) == 0
    for name in ("table2.md", "table2.tex", "table2.csv", "table3.md", "table3.tex", "table3.csv",
                 "table4.md", "table4.tex", "table4.csv", "figure1.png", "figure1.pdf", "curves.png",
                 "costs.md", "costs.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "figure1.pdf").read_bytes()[:4] == b"%PDF"
    assert "[0,4]" in (out / "table4.md").read_text(encoding="utf-8")


def test_cli_bad_input(results, tmp_path, capsys):
    assert cli_main(["report", "table4", "--results", str(results), "--out", str(tmp_path),
                            "--buckets", "4,2"]) == 2
    assert "strictly increasing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", "all", "--results", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    assert cli_main(["report", "all", "--results", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.glob("*.md"))


def test_lead_cli_registers_report(results, tmp_path):
    from mmbench.cli import build_parser

    assert build_parser().parse_args(["report", "costs", "--results", str(results)]).artefact == "costs"
    assert cli_main(["report", "costs", "--results", str(results), "--out", str(tmp_path)]) == 0


def test_missing_models_never_fail(tmp_path):
    """Only two baselines, one seed each, no MMSSL: every artefact is written, with '–' cells."""
    results = make_results(tmp_path / "res", models={"mf-bpr": 0.1, "lightgcn": 0.2}, seeds=(7,),
                           datasets={"toyset": (200, 80)})
    out = tmp_path / "out"
    assert cli_main(["report", "all", "--results", str(results), "--out", str(out)]) == 0
    md = parse_md(out / "table2.md")
    assert md[("", "MMSSL (paper)", "toyset R@20")] == ("–", "")
    assert md[("", "p MMSSL (paper) (per-user, raw)", "toyset R@20")][0] == "–"
    assert md[("", "LightGCN", "toyset R@20")][1] == "best"
    t3 = parse_md(out / "table3.md")
    assert all(v[0] == "–" for v in t3.values())
    t4 = parse_md(out / "table4.md")
    assert {"MF-BPR", "LightGCN"} <= {k[1] for k in t4}  # fallback: the models that ran
    assert (out / "figure1.png").exists() and (out / "curves.png").exists()


def test_duplicate_runs_latest_config_wins(tmp_path, capsys):
    results = make_results(tmp_path / "res", models={"mmssl": 0.3}, seeds=(1,), datasets={"toyset": (100, 50)})
    folder = records.find_records(results)[0]
    rec = records.read_record(folder)
    rec = dataclasses.replace(rec, config_hash="h-new", created="2025-01-01T00:00:00+00:00",
                              test={k: v + 1 for k, v in rec.test.items()})
    records.write_record(folder.parent / "new-seed1", rec, records.read_arrays(folder))
    rs = common.load_runs(results)
    assert len(rs.runs("toyset", "mmssl")) == 1
    assert rs.runs("toyset", "mmssl")[0].record.config_hash == "h-new"
    assert "different configurations" in capsys.readouterr().err


def test_a_modified_copy_of_a_dataset_is_never_pooled_with_the_original(tmp_path):
    """Same name, other content: its runs form their own group, labelled by fingerprint."""
    results = make_results(tmp_path / "res", models={"mmssl": 0.3, "lightgcn": 0.2}, seeds=(1, 2),
                           datasets={"toyset": (100, 50)})
    for folder in records.find_records(results):
        rec = records.read_record(folder)
        if rec.seed == 2:  # seed 2's runs were made on a modified copy of toyset
            copy = dataclasses.replace(rec, dataset=dataclasses.replace(rec.dataset, fingerprint="fp-modified"))
            records.write_record(folder, copy, records.read_arrays(folder))
    rs = common.load_runs(results)
    assert rs.datasets() == ["toyset [fp-modif]", "toyset [fp-toyse]"]
    for ds in rs.datasets():
        assert [len(rs.runs(ds, m)) for m in ("mmssl", "lightgcn")] == [1, 1]
    t2 = common.to_markdown(table2.build(rs))
    assert "toyset [fp-modif]" in t2 and "toyset [fp-toyse]" in t2


def test_runs_on_unknown_data_are_shown_but_never_ranked(tmp_path):
    results = make_results(tmp_path / "res", models={"mmssl": 0.3, "lightgcn": 0.2}, seeds=(1, 2),
                           datasets={"toyset": (100, 50)})
    for folder in records.find_records(results):
        rec = records.read_record(folder)
        copy = dataclasses.replace(rec, dataset=dataclasses.replace(rec.dataset, fingerprint=records.UNKNOWN))
        records.write_record(folder, copy, records.read_arrays(folder))
    rs = common.load_runs(results)
    assert not rs.rankable("toyset")
    t = table2.build(rs)
    cells = [c for b in t.blocks for _, row in b.rows for c in row]
    assert not any(c.mark for c in cells)  # no bold, no underline
    assert common.per_user_test(rs, "toyset", "mmssl", "lightgcn", "recall@20", "ttest") is None
    assert any(c.text != "–" for c in cells)  # the values themselves are shown


# --------------------------------------------------------------------------- budgets, configurations, defaults
TWO = {"mmssl": 0.30, "lattice": 0.25, "mmssl-wo-cl": 0.27}
ONE_DS = {"toyset": (150, 60)}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Full runs of three models, then NEWER quick runs of the same models with other values."""
    root = tmp_path_factory.mktemp("mixed")
    make_results(root, models=TWO, datasets=ONE_DS)
    return make_results(root, models=TWO, datasets=ONE_DS, budget="quick", config="q-{model}",
                        created="2025-06-01", noise=1)


def marks(md: dict) -> set:
    return {mark for _, mark in md.values()}


def test_full_and_quick_runs_give_one_ranked_and_one_smoke_table(mixed, tmp_path):
    out = tmp_path / "out"
    assert cli_main(["report", "all", "--results", str(mixed), "--out", str(out), "--buckets", "0,1,3,10"]) == 0
    full = assert_same_cells(out, "table2")
    assert full[("", "MMSSL (paper)", "toyset R@20")][1] == "best"
    assert full[("", "p MMSSL (paper) (per-user, raw)", "toyset R@20")][0] != "–"
    assert full[("", "Improv. MMSSL (paper)", "toyset R@20")][0] != "–"
    quick = assert_same_cells(out, "table2-quick")
    assert marks(quick) == {""}
    assert not {row for _, row, _ in quick} & {"Best baseline", "Improv. MMSSL (paper)", "p MMSSL (paper) (per-user, raw)"}
    for model, row in (("mmssl", "MMSSL (paper)"), ("lattice", "LATTICE")):
        assert quick[("", row, "toyset R@20")][0] == expected_cell(mixed, "toyset", model, "recall@20", "quick")
    text = (out / "table2-quick.md").read_text(encoding="utf-8")
    assert text.startswith("# Table 2: performance comparison — quick budget: smoke check, not a comparison")
    assert "Budget: quick" in text and "Seeds: 1, 2." in text and "toyset fp-toyset" in text
    assert "Budget: full" in (out / "table2.md").read_text(encoding="utf-8")
    assert r"\caption{Smoke check (quick budget), not a comparison" in (out / "table2-quick.tex").read_text(encoding="utf-8")
    assert {r["budget"] for r in csv.DictReader(open(out / "table2-quick.csv", encoding="utf-8"))} == {"quick"}
    # the other artefacts split the same way; the quick ones carry no marks, p-values or improvements
    t3 = assert_same_cells(out, "table3-quick")
    assert marks(t3) == {""} and not any(row.startswith("p ") for _, row, _ in t3)
    assert marks(assert_same_cells(out, "table3")) >= {"best"}
    t4 = assert_same_cells(out, "table4-quick")
    assert not any(row.startswith("p ") for _, row, _ in t4)
    assert not any("↑" in text or "↓" in text for text, _ in t4.values())
    assert any("↑" in text or "↓" in text for text, _ in assert_same_cells(out, "table4").values())
    for name in ("figure1.png", "figure1-quick.png", "curves.png", "curves-quick.png", "costs.md",
                 "costs-quick.md"):
        assert (out / name).stat().st_size > 0, name
    assert "Costs — quick budget: smoke check" in (out / "costs-quick.md").read_text(encoding="utf-8")

    only = tmp_path / "only"  # --budget picks one budget's files
    assert cli_main(["report", "table2", "--results", str(mixed), "--out", str(only), "--budget", "quick"]) == 0
    assert sorted(p.name for p in only.iterdir()) == ["table2-quick.csv", "table2-quick.md", "table2-quick.tex"]
    assert cli_main(["report", "table2", "--results", str(mixed), "--out", str(only), "--budget", "smoke"]) == 2


def test_a_newer_quick_run_never_displaces_a_full_run(mixed, tmp_path):
    sets = common.load_budgets(mixed)
    assert list(sets) == ["full", "quick"]
    assert {r.record.budget for ds in sets["full"].datasets() for m in sets["full"].models(ds)
            for r in sets["full"].runs(ds, m)} == {"full"}
    table2.write(sets["full"], tmp_path)
    md = parse_md(tmp_path / "table2.md")
    for model, row in (("mmssl", "MMSSL (paper)"), ("lattice", "LATTICE")):
        assert md[("", row, "toyset R@20")][0] == expected_cell(mixed, "toyset", model, "recall@20", "full")
        assert md[("", row, "toyset R@20")][0] != expected_cell(mixed, "toyset", model, "recall@20", "quick")
    assert not sets["full"].choices  # one configuration per budget: no choice was made
    mixed_set = common.load_runs(mixed)  # every budget in one set (`check`'s view) is never ranked
    assert mixed_set.budget is None and not mixed_set.rankable("toyset")
    with pytest.raises(ValueError):
        common.RunSet(common.read_runs(mixed), "full")


@pytest.fixture(scope="module")
def two_configs(tmp_path_factory) -> Path:
    """mmssl ran with config h-old-mmssl, then (newer) with h-new-mmssl; lattice with one config."""
    root = tmp_path_factory.mktemp("configs")
    make_results(root, models={"mmssl": 0.3, "lattice": 0.25}, datasets=ONE_DS, config="h-old-{model}")
    return make_results(root, models={"mmssl": 0.2}, datasets=ONE_DS, config="h-new-{model}",
                        created="2024-02-01", noise=2)


def test_two_configurations_are_never_averaged(two_configs, tmp_path, capsys):
    out = tmp_path / "newest"
    assert cli_main(["report", "table2", "--results", str(two_configs), "--out", str(out)]) == 0
    md = parse_md(out / "table2.md")
    new = expected_cell(two_configs, "toyset", "mmssl", "recall@20", config="h-new-mmssl")
    old = expected_cell(two_configs, "toyset", "mmssl", "recall@20", config="h-old-mmssl")
    assert md[("", "MMSSL (paper)", "toyset R@20")][0] == new != old
    assert md[("", "LATTICE", "toyset R@20")][1] == "best"  # the newest mmssl config is the worse one
    text = (out / "table2.md").read_text(encoding="utf-8")
    assert "toyset/mmssl: h-new-mmssl (newest; not used: h-old-mmssl)" in text
    assert "lattice: h-old" not in text  # a model with one configuration needs no footnote
    assert "different configurations" in capsys.readouterr().err

    out = tmp_path / "chosen"
    assert cli_main(["report", "table2", "--results", str(two_configs), "--out", str(out),
                     "--config-of", "mmssl=h-old"]) == 0
    md = parse_md(out / "table2.md")
    assert md[("", "MMSSL (paper)", "toyset R@20")] == (old, "best")
    assert "toyset/mmssl: h-old-mmssl (--config-of; not used: h-new-mmssl)" in (out / "table2.md").read_text(encoding="utf-8")

    for bad, says in ((["--config-of", "vbpr=abc"], "no run of model 'vbpr'"),
                      (["--config-of", "mmssl=zzz"], "matches none of its configurations"),
                      (["--config-of", "mmssl=h-"], "matches 2 configurations"),
                      (["--config-of", "mmssl"], "expects MODEL=HASH")):
        capsys.readouterr()
        assert cli_main(["report", "table2", "--results", str(two_configs), "--out", str(tmp_path / "bad")] + bad) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()


def test_csv_missing_values_are_empty(results, rs, tmp_path):
    table2.write(rs, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "table2.csv", encoding="utf-8")))
    hccf = [r for r in rows if r["row"] == "HCCF"]
    assert hccf and all(r["value"] == "" for r in hccf)
    assert all(r["budget"] == "full" for r in rows)
    assert "| HCCF | – |" in (tmp_path / "table2.md").read_text(encoding="utf-8")
    assert "HCCF & -- &" in (tmp_path / "table2.tex").read_text(encoding="utf-8")


def test_runs_under_another_protocol_are_their_own_group(tmp_path):
    res = make_results(tmp_path / "res", models={"mmssl": 0.3, "lattice": 0.2}, seeds=(1,), datasets=ONE_DS,
                       protocol={"mask": "train"})
    make_results(res, models={"mmssl": 0.3}, seeds=(1,), datasets=ONE_DS, protocol={"mask": "train+valid"},
                 config="other-{model}")
    rs = common.load_runs(res, "full")
    assert rs.datasets() == ["toyset [mask=train+valid]", "toyset [mask=train]"]
    assert rs.models("toyset [mask=train+valid]") == ["mmssl"] and not rs.choices


def test_default_report_writes_only_into_reports_local(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["report", "all"]) == 2  # no results/runs yet: one line saying what to do
    err = capsys.readouterr().err
    assert "mmbench run" in err and "--results results/reference" in err and err.count("\n") == 1
    make_results(tmp_path / "results", models={"mmssl": 0.3, "lattice": 0.2}, seeds=(1,), datasets=ONE_DS)
    before = {p for p in tmp_path.rglob("*")}
    assert cli_main(["report", "all"]) == 0
    written = {p for p in tmp_path.rglob("*")} - before
    local = tmp_path / "reports" / "local"
    assert local / "table2.md" in written
    assert all(p == local.parent or p.is_relative_to(local) for p in written), written


def test_report_help_explains_the_defaults(capsys):
    assert cli_main(["report", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("results/runs", "reports/local", "git-ignored", "results/reference", "--budget",
                  "--config-of", "smoke checks, never ranked"):
        assert words in text, words


def test_figure_panels_of_missing_models_say_no_run(rs):
    import matplotlib.pyplot as plt

    from mmbench.reports import figure1

    fig, ax = plt.subplots()
    figure1._panel_items(ax, rs, "baby", "vbpr", rs.item_degree("baby"), "b")
    assert not ax.axison and [t.get_text() for t in ax.texts] == ["no run of VBPR on Amazon-Baby"]
    plt.close(fig)
