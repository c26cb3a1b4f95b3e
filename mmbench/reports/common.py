"""What every report shares: loading run records, grouping them by budget, then dataset (name,
fingerprint, protocol) / model (one configuration) / seed, the notes saying what an artefact was made
from, and one table model rendered to Markdown, LaTeX (booktabs) and CSV from the SAME formatted
cells, so the three files can never disagree.

Only what is comparable is compared: each budget gets its own artefacts, and only the full budget's
are ranked (bold, underline, p-values, improvements); the others are labelled smoke checks.

Tuning: trial records (`mmbench tune`, validation only) are never reported. Runs on a tuned
configuration (`mmbench run --tuned`) are reported only with `tuned=True` (`report --tuned`), and then
in place of the model's default-configuration runs wherever they exist; every cell knows its kind
(`RunSet.kind`), and tables compare only cells of the same kind.
"""
from __future__ import annotations

import csv
import io
import json
import sys
import textwrap
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmbench.eval.metrics import HIT, NDCG, NDCG_LEGACY, PRECISION, RECALL
from mmbench import records, stats
from mmbench.atomic import atomic_write
from mmbench.errors import MMBenchError

MISSING = "–"

# The paper's datasets first, in its column order; any other dataset follows alphabetically.
DATASET_ORDER = ("tiktok", "baby", "sports", "allrecipes")
DATASET_NAMES = {"tiktok": "Tiktok", "baby": "Amazon-Baby", "sports": "Amazon-Sports",
                 "allrecipes": "Allrecipes"}
METRIC_SHORT = {RECALL: "R", PRECISION: "P", NDCG: "N", NDCG_LEGACY: "Nleg", HIT: "H"}


class ReportError(MMBenchError):
    """The results directory or a report option is unusable."""


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def dataset_label(key: str) -> str:
    """The paper's name of a dataset group (`tiktok` -> `Tiktok`; a `[fingerprint]` suffix is kept)."""
    name, sep, rest = key.partition(" [")
    return DATASET_NAMES.get(name, name) + (sep + rest if sep else "")


def metric_label(metric: str) -> str:
    """`recall@20` -> `R@20`."""
    base, _, k = metric.partition("@")
    return f"{METRIC_SHORT.get(base, base)}@{k}" if k else metric


# --------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One completed run folder; its arrays are read on first use."""

    folder: Path
    record: records.RunRecord
    dataset: str = ""  # the group key RunSet files it under (the dataset name, made unique)

    def __post_init__(self) -> None:
        self.dataset = self.dataset or self.record.dataset.name

    @property
    def model(self) -> str:
        return self.record.model

    @property
    def seed(self) -> int:
        return int(self.record.seed)

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        try:
            return records.read_arrays(self.folder)
        except MMBenchError as exc:
            warn(f"{exc}; per-user statistics skip this run")
            return {}

    def test_metric(self, metric: str) -> float:
        return self.record.metric("test", metric)

    def per_user(self, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(test users, per-user test metric) or None when the arrays lack it."""
        a = self.arrays
        key = f"test/{metric}"
        if "test_users" not in a or key not in a:
            return None
        return a["test_users"].astype(np.int64), a[key].astype(np.float64)

    def train_user_degree(self) -> np.ndarray | None:
        return self._degree("train_user_degree", user=True)

    def train_item_degree(self) -> np.ndarray | None:
        return self._degree("train_item_degree", user=False)

    def _degree(self, key: str, user: bool) -> np.ndarray | None:
        if key in self.arrays:
            return self.arrays[key].astype(np.int64)
        ds = _load_dataset(self.record.dataset.name, self.record.dataset.fingerprint)
        if ds is None:
            return None
        train = ds.train
        if user:
            return np.diff(train.indptr).astype(np.int64)
        return np.bincount(train.indices, minlength=ds.n_items).astype(np.int64)


_DATASETS: dict[tuple[str, str], Any] = {}


def _load_dataset(name: str, fingerprint: str):
    """Fallback for records without degree arrays: the dataset itself (cached), only when it is the
    data the run saw (same fingerprint); None otherwise."""
    key = (name, fingerprint)
    if key not in _DATASETS:
        try:
            from mmbench.data.registry import load_dataset

            ds = load_dataset(name)
            _DATASETS[key] = ds if ds.fingerprint == fingerprint else None
            if _DATASETS[key] is None:
                warn(f"training degrees for {name!r} are not in the records, and today's {name!r} is not "
                     f"the data those runs saw; sparsity buckets show {MISSING}")
        except Exception as exc:  # noqa: BLE001 - any failure means "no degrees", never a crash
            warn(f"training degrees for {name!r} are not in the records and the dataset cannot be "
                 f"loaded ({type(exc).__name__}: {exc}); sparsity buckets show {MISSING}")
            _DATASETS[key] = None
    return _DATASETS[key]


FULL = "full"
TUNED, DEFAULT = "tuned", "default"  # the two kinds of configuration a cell can report
MIXED = "mixed"  # a RunSet over several budgets (`load_runs` without one); never ranked


def artefact_name(base: str, budget: str | None) -> str:
    """`table2` for the full budget, `table2-quick` etc. otherwise: a smoke check never takes the
    name (or the place in a paper) of a result."""
    return base if budget == FULL else f"{base}-{budget or MIXED}"


def artefact_title(title: str, budget: str | None) -> str:
    if budget == FULL:
        return f"{title} (full budget)"
    return f"{title} — {budget or MIXED} budget: smoke check, not a comparison"


def budget_text(budget: str | None) -> str:
    """What a budget did to the runs, from the budget table itself."""
    from mmbench.budget import BUDGETS, HEAVY_BUDGETS

    def caps(c: dict) -> str:
        return ", ".join(f"{k} ≤ {v}" if k == "epochs" else f"{k} {v}" for k, v in c.items())

    if budget == FULL:
        return "full (to early stopping on valid within each run's epoch cap)"
    if budget in BUDGETS:
        heavy = HEAVY_BUDGETS.get(budget)
        return f"{budget} ({caps(BUDGETS[budget])}{'; heavy models ' + caps(heavy) if heavy else ''})"
    if budget == "custom":
        return "custom (--set/--config changed epochs or patience)"
    return "several budgets mixed"


def _protocol_key(protocol: dict) -> str:
    return json.dumps(protocol, sort_keys=True, default=str)


GroupKey = tuple[str, str, str]  # (dataset name, content fingerprint, protocol as JSON)


def group_key(record: records.RunRecord) -> GroupKey:
    """Runs are comparable only on the same data (name + fingerprint) under the same protocol."""
    return (record.dataset.name, record.dataset.fingerprint, _protocol_key(record.protocol))


def dataset_labels(keys: list[GroupKey]) -> dict[GroupKey, str]:
    """A label per group: the plain name when it is the only group of that name, else the name with
    the fingerprint prefix and/or the protocol settings that tell the groups apart."""
    by_name: dict[str, set[GroupKey]] = {}
    for k in keys:
        by_name.setdefault(k[0], set()).add(k)
    out = {}
    for k in keys:
        same = by_name[k[0]]
        tags = []
        if len({fp for _, fp, _ in same}) > 1:
            tags.append(k[1][:8])
        protocols = [json.loads(p) for p in sorted({p for _, _, p in same})]
        if len(protocols) > 1:
            mine = json.loads(k[2])
            differ = sorted({key for p in protocols for key in p if p.get(key) != mine.get(key)})
            tags.append(",".join(f"{key}={mine.get(key, MISSING)}" for key in differ))
        out[k] = k[0] + "".join(f" [{t}]" for t in tags)
    return out


@dataclass(frozen=True)
class Choice:
    """The configuration a (dataset, model) cell uses when its model ran with several."""

    config_hash: str
    others: tuple[str, ...]  # the configurations not used
    by_option: bool          # chosen by --config-of (else: the newest)


def parse_config_of(items: list[str] | None) -> dict[str, list[str]]:
    """`["mmssl=1a2b", ...]` -> {model: [hash prefixes]}; a malformed item is a ReportError."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        model, sep, prefix = item.partition("=")
        if not sep or not model.strip() or not prefix.strip():
            raise ReportError(f"--config-of expects MODEL=HASH (a config_hash or its prefix), got {item!r}")
        out.setdefault(model.strip(), []).append(prefix.strip())
    return out


def check_config_of(config_of: dict[str, list[str]], runs: list[Run]) -> None:
    """Every --config-of names a model that ran and a configuration of it that ran."""
    hashes: dict[str, set[str]] = {}
    for r in runs:
        hashes.setdefault(r.model, set()).add(r.record.config_hash)
    for model, prefixes in config_of.items():
        if model not in hashes:
            raise ReportError(f"--config-of {model}=…: no run of model {model!r} in the reported budget(s)")
        for prefix in prefixes:
            if not any(h.startswith(prefix) for h in hashes[model]):
                raise ReportError(f"--config-of {model}={prefix}: matches none of its configurations "
                                  f"({', '.join(sorted(hashes[model]))})")


class RunSet:
    """Completed runs of ONE budget grouped as {dataset: {model: [runs sorted by seed]}}, where a
    dataset is a (name, content fingerprint, protocol) group: a modified copy of a dataset, or the
    same data under another protocol, is never pooled with (or ranked against) the original.

    Reports build one RunSet per budget (`load_budgets`), so a full table can never show a quick run.
    A (dataset, model) cell uses ONE configuration (config_hash): the one `config_of` names (a hash
    prefix per model), else its newest; the choice is kept in `choices` for the footnotes. When a seed
    ran twice under it, the most recent run wins. Runs on data of unknown fingerprint (schema-1
    records whose data could not be matched) are shown but never ranked, and nothing but the full
    budget is ever ranked (`rankable`). `budget=None` accepts mixed budgets (each cell then uses
    the newest configuration of any budget), never ranked.
    """

    def __init__(self, runs: list[Run], budget: str | None = None,
                 config_of: dict[str, list[str]] | None = None, tuned: bool = False):
        self.tuned = tuned  # loaded for `report --tuned`: cells are labelled default / tuned
        present = {r.record.budget for r in runs}
        if budget is None and len(present) == 1:
            budget = present.pop()
        elif budget is not None and present - {budget}:
            raise ValueError(f"a {budget} RunSet given runs of budget(s) {sorted(present - {budget})}")
        self.budget = budget
        labels = dataset_labels([group_key(r.record) for r in runs])
        grouped: dict[str, dict[str, list[Run]]] = {}
        self.refs: dict[str, records.DatasetRef] = {}
        for r in runs:
            r.dataset = labels[group_key(r.record)]
            grouped.setdefault(r.dataset, {}).setdefault(r.model, []).append(r)
            self.refs[r.dataset] = r.record.dataset
        self.choices: dict[tuple[str, str], Choice] = {}
        self.groups: dict[str, dict[str, list[Run]]] = {}
        for ds, models in grouped.items():
            for model, rs in models.items():
                self.groups.setdefault(ds, {})[model] = self._select(ds, model, rs, (config_of or {}).get(model))

    @staticmethod
    def _configuration(r: Run) -> tuple[str, str]:
        return (r.record.config_hash, r.record.budget)

    def _select(self, ds: str, model: str, rs: list[Run], prefixes: list[str] | None) -> list[Run]:
        rs = sorted(rs, key=lambda r: r.record.created)
        configs = list(dict.fromkeys(self._configuration(r) for r in reversed(rs)))  # newest first
        chosen = configs[0]
        matches = [c for c in configs if any(c[0].startswith(p) for p in prefixes or ())]
        if len(matches) > 1:
            raise ReportError(f"--config-of {model}={','.join(prefixes)}: matches {len(matches)} configurations "
                              f"on {ds} ({', '.join(c[0] for c in matches)}); give a longer prefix")
        if matches:
            chosen = matches[0]
        elif prefixes:
            warn(f"{ds}/{model}: --config-of {model}={','.join(prefixes)} matches none of its runs here; "
                 f"using its newest configuration {chosen[0]}")
        if len(configs) > 1:
            self.choices[(ds, model)] = Choice(chosen[0], tuple(c[0] for c in configs if c != chosen),
                                               bool(matches))
            warn(f"{ds}/{model}: runs with {len(configs)} different configurations; using config "
                 f"{chosen[0]} ({chosen[1]} budget, {'--config-of' if matches else 'the newest'}), "
                 f"never an average across configurations")
        by_seed: dict[int, Run] = {}
        for r in rs:  # sorted by creation: later runs of a seed replace earlier ones
            if self._configuration(r) != chosen:
                continue
            if r.seed in by_seed:
                warn(f"{ds}/{model}: seed {r.seed} ran twice with the same config; using {r.folder}")
            by_seed[r.seed] = r
        return [by_seed[s] for s in sorted(by_seed)]

    @property
    def ranked(self) -> bool:
        """Only full-budget runs are results; other budgets are smoke checks, never compared."""
        return self.budget == FULL

    def rankable(self, dataset: str) -> bool:
        """May runs on `dataset` be ranked (bold, p-values, Improv.)? Only under the full budget and
        on known data."""
        ref = self.refs.get(dataset)
        return self.ranked and ref is not None and ref.known

    def notes(self, datasets: list[str] | None = None, models=None) -> list[str]:
        """What an artefact was made from: budget, seeds, data fingerprints, and the configuration
        of every cell whose model ran with several (restricted to the datasets/models shown)."""
        datasets = self.datasets() if datasets is None else datasets
        cells = [(ds, m) for ds in datasets for m in self.models(ds) if models is None or m in models]
        lines = [f"Budget: {budget_text(self.budget)}."
                 + ("" if self.ranked else " A smoke check of the pipeline: nothing here is ranked.")]
        seeds: dict[str, list[str]] = {}
        for ds, m in cells:
            seeds.setdefault(", ".join(str(r.seed) for r in self.runs(ds, m)), []).append(
                f"{dataset_label(ds)}/{m}")
        if seeds:
            common_seeds = max(seeds, key=lambda s: len(seeds[s]))
            others = [f"{', '.join(where)}: {s}" for s, where in seeds.items() if s != common_seeds]
            lines.append(f"Seeds: {common_seeds}" + (f" (except {'; '.join(others)})." if others else "."))
        data = [f"{dataset_label(ds)} " + (self.refs[ds].fingerprint[:12] if self.refs[ds].known
                                           else "unknown (shown, never ranked)")
                for ds in datasets if ds in self.refs]
        if data:
            lines.append("Data (content fingerprint): " + "; ".join(data) + ".")
        if self.budget in (FULL, "custom", None):  # the caps the runs shown had (their configs say)
            caps: dict[str, list[str]] = {}
            for ds, m in cells:
                for r in self.runs(ds, m):
                    c = r.record.config
                    where = caps.setdefault(f"{c.get('epochs', MISSING)} / {c.get('patience', MISSING)}", [])
                    if m not in where:
                        where.append(m)
            if len(caps) == 1:
                lines.append(f"Epoch cap / patience: {next(iter(caps))}.")
            elif caps:
                lines.append("Epoch cap / patience: " + "; ".join(
                    f"{k} ({', '.join(sorted(v))})" for k, v in caps.items()) + ".")
        if self.tuned:
            tuned = [f"{dataset_label(ds)}/{m}: {self.kind_label(ds, m)}, study {self.tuning(ds, m).get('study', MISSING)}"
                     for ds, m in cells if self.kind(ds, m) == TUNED]
            lines.append("Configurations: " + ("tuned on valid by `mmbench tune` (the same search for every "
                         "model) for " + "; ".join(tuned) + "; every other cell its defaults and dataset preset."
                         if tuned else "every cell its defaults and dataset preset (no tuned runs)."))
        chosen = [(ds, m, self.choices[(ds, m)]) for ds, m in cells if (ds, m) in self.choices]
        if chosen:
            lines.append("Configurations (models that ran with several; never averaged across them): " + "; ".join(
                f"{dataset_label(ds)}/{m}: {c.config_hash} ({'--config-of' if c.by_option else 'newest'}; "
                f"not used: {', '.join(c.others)})" for ds, m, c in chosen)
                + ". `mmbench report --config-of MODEL=HASH` selects another.")
        return lines

    def datasets(self) -> list[str]:
        order = {name: i for i, name in enumerate(DATASET_ORDER)}
        return sorted(self.groups, key=lambda d: (order.get(d.split(" [")[0], len(order)), d))

    def models(self, dataset: str) -> list[str]:
        return sorted(self.groups.get(dataset, {}))

    def all_models(self) -> set[str]:
        return {m for models in self.groups.values() for m in models}

    def tuning(self, dataset: str, model: str | None) -> dict:
        """The tuned-config provenance of a cell's runs ({} for a default-configuration cell)."""
        runs = self.runs(dataset, model)
        return dict(runs[-1].record.tuned or {}) if runs else {}

    def kind(self, dataset: str, model: str | None) -> str | None:
        """`tuned` or `default` for a cell with runs, None without."""
        if not self.runs(dataset, model):
            return None
        return TUNED if self.tuning(dataset, model) else DEFAULT

    def kind_label(self, dataset: str, model: str | None) -> str:
        """`default`, `tuned (N trials)`, or – for a cell without runs."""
        kind = self.kind(dataset, model)
        if kind == TUNED:
            n = self.tuning(dataset, model).get("trials")
            return f"tuned ({n} trials)" if n is not None else "tuned"
        return kind or MISSING

    def model_kind_label(self, model: str | None, datasets: list[str] | None = None) -> str:
        """One label for a model across the datasets it ran on: `tuned (N trials)` / `default`, or per
        dataset when they differ (`tuned (50 trials) on Tiktok; default on ml100k`)."""
        datasets = self.datasets() if datasets is None else datasets
        by_label: dict[str, list[str]] = {}
        for ds in datasets:
            if self.runs(ds, model):
                by_label.setdefault(self.kind_label(ds, model), []).append(dataset_label(ds))
        if len(by_label) <= 1:
            return next(iter(by_label), MISSING)
        return "; ".join(f"{label} on {', '.join(where)}" for label, where in by_label.items())

    def runs(self, dataset: str, model: str | None) -> list[Run]:
        if model is None:
            return []
        return self.groups.get(dataset, {}).get(model, [])

    # ---- per-metric views ------------------------------------------------------------------
    def summary(self, dataset: str, model: str | None, metric: str) -> tuple[float, float, int]:
        """(mean, std, n seeds) of the records' test metric."""
        return stats.seed_summary(r.test_metric(metric) for r in self.runs(dataset, model))

    def by_seed(self, dataset: str, model: str | None, metric: str) -> dict[int, float]:
        return {r.seed: r.test_metric(metric) for r in self.runs(dataset, model)
                if np.isfinite(r.test_metric(metric))}

    def per_user(self, dataset: str, model: str | None, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-user test metric averaged over the seeds (common users), or None."""
        parts = [p for p in (r.per_user(metric) for r in self.runs(dataset, model)) if p is not None]
        if not parts:
            return None
        return stats.mean_over_seeds(parts)

    def user_degree(self, dataset: str) -> np.ndarray | None:
        return self._first(dataset, Run.train_user_degree)

    def item_degree(self, dataset: str) -> np.ndarray | None:
        return self._first(dataset, Run.train_item_degree)

    def _first(self, dataset: str, getter: Callable[[Run], np.ndarray | None]) -> np.ndarray | None:
        """The split is fixed per dataset, so any run's training degrees serve them all."""
        for model in self.models(dataset):
            for r in self.runs(dataset, model):
                d = getter(r)
                if d is not None:
                    return d
        return None


def read_runs(results: str | Path) -> list[Run]:
    """Every completed run under `results` (its `runs/` subfolder or anywhere below it)."""
    root = Path(results)
    if not root.is_dir():
        raise ReportError(f"--results {root}: no such directory; run `mmbench run` first (it writes "
                          f"results/runs), or pass --results results/reference for the committed reference runs")
    runs: list[Run] = []
    trials = 0
    for folder in records.find_records(root):
        try:
            rec = records.read_record(folder)
        except MMBenchError as exc:
            warn(f"{exc}; skipped")
            continue
        if rec.is_trial:  # a tuning trial: validation only, never a result
            trials += 1
            continue
        runs.append(Run(folder, rec))
    if not runs:
        only = f" (only {trials} tuning trial record(s), which are never reported)" if trials else ""
        raise ReportError(f"--results {root}: no run records (record.json) found{only}")
    from mmbench.upgrade import adopt_sibling_fingerprints

    adopted = adopt_sibling_fingerprints([r.record for r in runs])
    return [Run(r.folder, rec) for r, rec in zip(runs, adopted)]


def select_kind(runs: list[Run], tuned: bool) -> list[Run]:
    """Default-configuration runs only (`tuned=False`); with `tuned=True`, per (budget, dataset
    group, model) the tuned runs where there are any, else the default ones: a cell never mixes."""
    if not tuned:
        return [r for r in runs if r.record.tuned is None]
    has_tuned = {(r.record.budget, group_key(r.record), r.model) for r in runs if r.record.tuned is not None}
    return [r for r in runs
            if (r.record.tuned is not None) == ((r.record.budget, group_key(r.record), r.model) in has_tuned)]


def _kind_filtered(runs: list[Run], tuned: bool, results) -> list[Run]:
    kept = select_kind(runs, tuned)
    if not kept:
        raise ReportError(f"--results {results}: only runs on tuned configurations; pass --tuned to report them")
    return kept


def load_budgets(results: str | Path, budget: str | None = None,
                 config_of: dict[str, list[str]] | None = None, tuned: bool = False) -> dict[str, RunSet]:
    """{budget: RunSet of that budget's runs}, in the order full, quick, smoke, custom: what the
    reports are built from, one set of files per budget. `budget` keeps only that one; `tuned`
    reports tuned-configuration runs where they exist (`select_kind`)."""
    runs = _kind_filtered(read_runs(results), tuned, results)
    by_budget: dict[str, list[Run]] = {b: [] for b in records.BUDGET_LABELS}
    for r in runs:
        by_budget[r.record.budget].append(r)
    by_budget = {b: rs for b, rs in by_budget.items() if rs}
    if budget is not None:
        if budget not in by_budget:
            raise ReportError(f"--budget {budget}: no {budget} runs under {results} (have: {', '.join(by_budget)})")
        by_budget = {budget: by_budget[budget]}
    check_config_of(config_of or {}, [r for rs in by_budget.values() for r in rs])
    return {b: RunSet(rs, b, config_of, tuned) for b, rs in by_budget.items()}


def load_runs(results: str | Path, budget: str | None = None,
              config_of: dict[str, list[str]] | None = None, tuned: bool = False) -> RunSet:
    """One RunSet: of `budget`, else of every run (mixed budgets are never ranked; see RunSet)."""
    if budget is not None:
        return load_budgets(results, budget, config_of, tuned)[budget]
    runs = _kind_filtered(read_runs(results), tuned, results)
    check_config_of(config_of or {}, runs)
    return RunSet(runs, None, config_of, tuned)


# --------------------------------------------------------------------------- formatting
def fmt_value(mean: float, std: float = float("nan"), digits: int = 4) -> str:
    """`0.0921`, or `0.0921 ± 0.0012` when a seed std exists; `–` when missing."""
    if mean is None or not np.isfinite(mean):
        return MISSING
    if std is not None and np.isfinite(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return MISSING
    if p == 0:
        return "0"
    return f"{p:.2e}" if p < 0.001 else f"{p:.3f}"


def fmt_pct(x: float, arrows: bool = False) -> str:
    """A relative change as a percentage; with arrows `↑8.99%` / `↓3.10%` like Table 4."""
    if x is None or not np.isfinite(x):
        return MISSING
    if arrows:
        return f"{'↑' if x >= 0 else '↓'}{abs(x) * 100:.2f}%"
    return f"{x * 100:.2f}%"


def fmt_int(x) -> str:
    return MISSING if x is None else str(int(x))


# --------------------------------------------------------------------------- tables
@dataclass
class Cell:
    text: str = MISSING
    mark: str = ""  # "" | "best" | "second"


@dataclass
class Block:
    """A header (column groups + column names) and rows; tables with one header have one block."""

    name: str
    groups: list[tuple[str, int]]  # (group label, span) over the data columns; label "" = none
    columns: list[str]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    rules: set[int] = field(default_factory=set)  # draw a rule before these row indices

    def add(self, label: str, cells: list[Cell | str], rule: bool = False) -> None:
        if rule:
            self.rules.add(len(self.rows))
        cells = [c if isinstance(c, Cell) else Cell(c) for c in cells]
        if len(cells) != len(self.columns):
            raise ValueError(f"row {label!r}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append((label, cells))

    def column_group(self, j: int) -> str:
        pos = 0
        for label, span in self.groups:
            if pos <= j < pos + span:
                return label
            pos += span
        return ""


@dataclass
class Table:
    name: str
    title: str
    caption: str
    row_header: str
    blocks: list[Block]
    budget: str | None = FULL
    notes: list[str] = field(default_factory=list)  # footnote lines: what the table was made from


TITLE_CHARS_PER_INCH = 12  # characters of a 10-pt figure title per inch of figure width
TITLE_LINE_INCHES = 0.19   # the height of one 10-pt title line


def figure_title(rs: RunSet, title: str, description: str, fig_width: float,
                 datasets: list[str] | None = None, models=None) -> tuple[str, float]:
    """(a figure's title, its height in inches): what it shows under which budget, then the notes a
    table carries as footnotes (budget, seeds, data fingerprints, configurations), wrapped to the
    figure's width so the caller can make room for it."""
    width = int(TITLE_CHARS_PER_INCH * fig_width)
    lines = []
    for text in [artefact_title(title, rs.budget), description] + rs.notes(datasets, models):
        lines += textwrap.wrap(text, width)
    return "\n".join(lines), TITLE_LINE_INCHES * len(lines)


def report_table(rs: RunSet, base: str, title: str, caption: str, row_header: str, blocks: list[Block],
                 datasets: list[str] | None = None, models=None) -> Table:
    """A table of `rs`'s budget: named and titled by it (a smoke check says so first thing), with
    footnotes on the budget, seeds, data and configurations of the datasets/models it shows."""
    if not rs.ranked:
        caption = (f"Smoke check ({rs.budget or MIXED} budget), not a comparison: values only, nothing is "
                   f"ranked. " + caption)
    return Table(artefact_name(base, rs.budget), artefact_title(title, rs.budget), caption, row_header,
                 blocks, rs.budget, rs.notes(datasets, models))


def mark_best(cells: list[Cell], values: list[float]) -> None:
    """Bold the best value(s), underline the second best (ties share the mark)."""
    finite = sorted({v for v in values if v is not None and np.isfinite(v)}, reverse=True)
    if not finite:
        return
    for c, v in zip(cells, values):
        if v is None or not np.isfinite(v):
            continue
        if v == finite[0]:
            c.mark = "best"
        elif len(finite) > 1 and v == finite[1]:
            c.mark = "second"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(t: Table) -> str:
    out = [f"# {t.title}", "", t.caption, ""]
    for b in t.blocks:
        if b.name:
            out += [f"## {b.name}", ""]
        heads = [t.row_header] + [" ".join(x for x in (b.column_group(j), c) if x)
                                  for j, c in enumerate(b.columns)]
        out.append("| " + " | ".join(_md_escape(h) for h in heads) + " |")
        out.append("|" + "|".join([":---"] + ["---:"] * len(b.columns)) + "|")
        for label, cells in b.rows:
            texts = [_marked(_md_escape(c.text), c.mark, "**{}**", "<u>{}</u>") for c in cells]
            out.append("| " + " | ".join([_md_escape(label)] + texts) + " |")
        out.append("")
    for note in t.notes:
        out += [note, ""]
    return "\n".join(out)


def _marked(text: str, mark: str | None, best: str, second: str) -> str:
    """Wrap a formatted cell in the format's emphasis: bold for the best, underline for the second."""
    return best.format(text) if mark == "best" else second.format(text) if mark == "second" else text


_TEX_SUBS = [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
             ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"),
             ("^", r"\textasciicircum{}")]
_TEX_SYMBOLS = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "∞": r"$\infty$",
                MISSING: "--", "−": "$-$", "—": "---", "≥": r"$\geq$", "≤": r"$\leq$", "Δ": r"$\Delta$", "×": r"$\times$"}


def tex_escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in _TEX_SYMBOLS:
            out.append(_TEX_SYMBOLS[ch])
            continue
        for a, b in _TEX_SUBS:
            if ch == a:
                ch = b
                break
        out.append(ch)
    return "".join(out)


def to_latex(t: Table) -> str:
    """One booktabs tabular per block inside one table float."""
    out = [f"% {t.title} -- generated by `mmbench report`; every number comes from a run record",
           r"% needs \usepackage{booktabs} (and graphicx for the \resizebox of wide tables)",
           r"\begin{table*}[t]", r"\centering", r"\small",
           rf"\caption{{{tex_escape(t.caption)}}}", rf"\label{{tab:{t.name}}}"]
    for b in t.blocks:
        if b.name:
            out.append(rf"\par\smallskip\textbf{{{tex_escape(b.name)}}}\par\smallskip")
        wide = len(b.columns) > WIDE_COLUMNS
        if wide:
            out.append(r"\resizebox{\linewidth}{!}{%")
        out.append(r"\begin{tabular}{l" + "r" * len(b.columns) + "}")
        out.append(r"\toprule")
        if any(label for label, _ in b.groups):
            heads, rules, col = [""], [], 2
            for label, span in b.groups:
                heads.append(rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(label)}}}" if span > 1 else tex_escape(label))
                if label:
                    rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
                col += span
            out.append(" & ".join(heads) + r" \\")
            out.append(" ".join(rules))
        out.append(" & ".join([tex_escape(t.row_header)] + [tex_escape(c) for c in b.columns]) + r" \\")
        out.append(r"\midrule")
        for i, (label, cells) in enumerate(b.rows):
            if i in b.rules and i > 0:
                out.append(r"\midrule")
            texts = [_marked(tex_escape(c.text), c.mark, r"\textbf{{{}}}", r"\underline{{{}}}") for c in cells]
            label = tex_escape(label)
            if label.startswith("["):  # `\\` would read a leading [..] as its optional argument
                label = "{}" + label
            out.append(" & ".join([label] + texts) + r" \\")
        out.append(r"\bottomrule")
        out.append(r"\end{tabular}" + ("}" if wide else ""))
    for note in t.notes:
        out.append(rf"\par\smallskip{{\footnotesize {tex_escape(note)}}}")
    out.append(r"\end{table*}")
    return "\n".join(out) + "\n"


WIDE_COLUMNS = 10  # LaTeX tabulars wider than this are scaled to the line width

CSV_COLUMNS = ["budget", "block", "row", "group", "column", "value", "mark"]


def to_csv(t: Table) -> str:
    """Tidy CSV: one line per cell (budget, block, row, column group, column, displayed value,
    mark); a missing value is an empty field, so tools read it as missing rather than as text."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for b in t.blocks:
        for label, cells in b.rows:
            for j, c in enumerate(cells):
                w.writerow([t.budget or MIXED, b.name, label, b.column_group(j), b.columns[j],
                            "" if c.text == MISSING else c.text, c.mark])
    return buf.getvalue()


def write_table(t: Table, out: Path, formats=("md", "tex", "csv")) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    render = {"md": to_markdown, "tex": to_latex, "csv": to_csv}
    paths = []
    for fmt in formats:
        p = out / f"{t.name}.{fmt}"
        atomic_write(p, render[fmt](t).encode("utf-8"))
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- comparisons
@dataclass
class Comparison:
    """One printed test: where it goes in a table and its result (Holm filled in by `correct`)."""

    key: tuple
    result: stats.PairedResult | None
    p_holm: float = float("nan")

    @property
    def p(self) -> float:
        return self.result.p if self.result is not None else float("nan")


def correct(comparisons: list[Comparison]) -> None:
    """Holm–Bonferroni over every comparison of one artefact (its whole printed family)."""
    adjusted = stats.holm([c.p for c in comparisons])
    for c, p in zip(comparisons, adjusted):
        c.p_holm = float(p)


def per_user_test(rs: RunSet, dataset: str, a: str | None, b: str | None, metric: str, test: str,
                  users: np.ndarray | None = None) -> stats.PairedResult | None:
    """Per-user paired test of model a vs b (per-user means over seeds), optionally on a user subset;
    None when either side is missing or the dataset may not be ranked."""
    if not rs.rankable(dataset):
        return None
    pa, pb = rs.per_user(dataset, a, metric), rs.per_user(dataset, b, metric)
    if pa is None or pb is None:
        return None
    common, va, vb = stats.align(pa[0], pa[1], pb[0], pb[1])
    if users is not None:
        keep = np.isin(common, users)
        va, vb = va[keep], vb[keep]
    if len(va) == 0:
        return None
    return stats.paired_test(va, vb, test)


def family_note(test: str, what: str) -> str:
    return (f"p-values: {stats.TEST_NAMES[test]} on per-user {what} (each user's metric averaged over "
            "the seeds), raw and Holm–Bonferroni-corrected; Holm's family is every test printed in "
            "this artefact.")
