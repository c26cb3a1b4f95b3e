"""Figure 1 rebuilt, all panels in one figure: (a) users grouped by training interaction count, bars =
#users per group (left axis), lines = each model's metric per group (right axis); (b)–(c)
item-specific accuracy averaged across validation epochs against item training degree, a baseline
vs the reference (MMSSL), long-tail region highlighted.

Item accuracy comes from the VALID split (the per-item hits@20 the trainer records at every
validation epoch): the test split is evaluated once, after training, so it has no per-epoch values.

One figure per budget (`figure1.png`, `figure1-quick.png`, …), its title saying what it was made from;
a model without runs has no line in (a) (the legend lists it as "no run") and its panel in (b)–(c)
says "no run" instead of drawing empty axes.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmbench.eval.metrics import NDCG_20, RECALL_20
from mmbench import stats  # noqa: E402
from mmbench.reports.common import (RunSet, artefact_name, dataset_label, figure_title,  # noqa: E402
                                    metric_label)
from mmbench.reports.table4 import (bucket_means, bucket_view, model_label,  # noqa: E402
                                    resolve_compare)

HEAD_FRACTION = 0.2  # the most popular 20% of items are the head; the rest is the long tail
ITEM_GROUPS = 8      # equal-count item-degree groups for the trend line in (b)–(c)
FIG_WIDTH = 17.0     # inches
PANEL_HEIGHT = 6.0   # inches below the title: the panels, their axis labels and (b)–(c)'s legends


def item_accuracy(rs: RunSet, ds: str, model: str | None) -> np.ndarray | None:
    """Per item: valid hits@20 / valid users of the item, averaged over validation epochs, then
    over seeds; NaN for items nobody holds in valid. None when no run has the arrays."""
    per_seed = []
    for r in rs.runs(ds, model):
        a = r.arrays
        hits, counts = a.get("valid_item_hits"), a.get("valid_item_counts")
        if hits is None or counts is None or hits.ndim != 2 or hits.shape[0] == 0:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = hits.astype(np.float64).mean(axis=0) / counts
        acc[counts == 0] = np.nan
        per_seed.append(acc)
    if not per_seed:
        return None
    if len(per_seed) == 1:
        return per_seed[0]
    stacked = np.stack(per_seed)
    n = np.sum(np.isfinite(stacked), axis=0)
    total = np.nansum(stacked, axis=0)
    return np.divide(total, n, out=np.full(total.shape, np.nan), where=n > 0)


def choose_dataset(rs: RunSet, reference: str) -> str:
    """Amazon-Baby as in the paper, else the dataset with the reference and the most models."""
    ds_all = rs.datasets()
    if "baby" in ds_all and rs.runs("baby", reference):
        return "baby"
    return max(ds_all, key=lambda d: (bool(rs.runs(d, reference)), len(rs.models(d)), -ds_all.index(d)))


def choose_baseline(rs: RunSet, ds: str, models: list[str], reference: str) -> str | None:
    """The compared model with the best test Recall@20 on this dataset."""
    cands = [m for m in models if m != reference and rs.runs(ds, m)]
    if not cands:
        cands = [m for m in rs.models(ds) if m != reference]
    if not cands:
        return None
    return max(cands, key=lambda m: np.nan_to_num(rs.summary(ds, m, RECALL_20)[0], nan=-1.0))


def _panel_users(ax, rs, ds, spec, models, no_run, metric):
    view = bucket_view(rs, ds, spec, metric)
    ax.set_title(f"(a) {dataset_label(ds)}: users by training interactions", fontsize=10)
    if view is None:
        ax.text(0.5, 0.5, "no training degrees available", ha="center", va="center", transform=ax.transAxes)
        return
    labels = view.buckets.labels
    x = np.arange(len(labels))
    n_users = [int(np.sum(view.bucket_of == k)) for k in x]
    ax.bar(x, n_users, color="#c9d6e8", edgecolor="#7f93b2", label="# users")
    ax.set_ylim(0, max(max(n_users), 1) * 1.4)  # headroom for the legend
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("# training interactions of the user")
    ax.set_ylabel("# users in group")
    right = ax.twinx()
    markers = "osD^v<>ph*"
    for i, m in enumerate(models):
        means = [mu for mu, _ in bucket_means(rs, ds, m, view, metric)]
        if not np.any(np.isfinite(means)):
            continue
        right.plot(x, means, marker=markers[i % len(markers)], lw=1.8, label=model_label(m))
    if no_run:
        right.plot([], [], " ", label="no run: " + ", ".join(model_label(m) for m in no_run))
    right.set_ylabel(f"test {metric_label(metric)}")
    top = right.get_ylim()[1]
    right.set_ylim(0, top * 1.35)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = right.get_legend_handles_labels()
    right.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left", ncol=2, framealpha=0.9)


def _say(ax, text: str) -> None:
    """A panel with nothing to draw: the reason instead of an empty box."""
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _panel_items(ax, rs, ds, model, item_deg, tag):
    label = model_label(model) if model else "baseline"
    ax.set_title(f"({tag}) {label}: item accuracy vs item sparsity", fontsize=10)
    if not rs.runs(ds, model):
        _say(ax, f"no run of {label} on {dataset_label(ds)}")
        return
    acc = item_accuracy(rs, ds, model)
    if acc is None or item_deg is None or len(acc) != len(item_deg):
        _say(ax, "no per-item validation hits")
        return
    ok = np.isfinite(acc)
    deg, a = item_deg[ok], acc[ok]
    tail_max = stats.top_share_threshold(item_deg, HEAD_FRACTION)
    ax.axvspan(-0.5, tail_max + 0.5, color="#fbe3c4", alpha=0.7, lw=0,
               label=f"long tail: degree ≤ {tail_max} (all but the top {HEAD_FRACTION:.0%} items)")
    tail = deg <= tail_max
    ax.scatter(deg[~tail], a[~tail], s=9, alpha=0.35, color="#4c72b0", lw=0, label="head items")
    ax.scatter(deg[tail], a[tail], s=9, alpha=0.55, color="#dd8452", lw=0,
               label=f"tail items: {int(np.sum(a[tail] > 0))}/{int(tail.sum())} with accuracy > 0")
    b = stats.Buckets(stats.equal_count_edges(deg, ITEM_GROUPS))
    grp = b.assign(deg)
    xs, ys = [], []
    for k in range(len(b)):
        sel = grp == k
        if sel.any():
            xs.append(float(np.median(deg[sel])))
            ys.append(float(a[sel].mean()))
    ax.plot(xs, ys, color="black", lw=1.6, marker="o", ms=4,
            label=f"mean over items per degree group ({len(b)} groups of ~equal #items)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=-0.5)
    ax.set_xlabel("# training interactions of the item (symlog)")
    ax.set_ylabel("item accuracy on VALID\n(hits@20 / valid users, mean over epochs)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)


def write(rs: RunSet, out: Path, spec: str = "quantile:5", reference: str = "mmssl",
          compare: list[str] | None = None, dataset: str | None = None, baseline: str | None = None,
          metric: str = NDCG_20) -> list[Path]:
    stats.parse_buckets(spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = dataset or choose_dataset(rs, reference)
    models = resolve_compare(rs, compare, reference) + [reference]
    line_models = [m for m in models if rs.runs(ds, m)]
    base = baseline or choose_baseline(rs, ds, models, reference)
    item_deg = rs.item_degree(ds)

    title, title_height = figure_title(
        rs, f"Figure 1 (rebuilt from our runs, {dataset_label(ds)})",
        "(a) test performance w.r.t. user interaction frequency; (b)–(c) item-specific accuracy on VALID "
        "averaged across validation epochs w.r.t. item sparsity", FIG_WIDTH, [ds], set(line_models) | {base})
    height = PANEL_HEIGHT + title_height
    fig, axes = plt.subplots(1, 3, figsize=(FIG_WIDTH, height), gridspec_kw={"width_ratios": [1.25, 1, 1]})
    fig.subplots_adjust(left=0.05, right=0.98, top=1 - (title_height + 0.45) / height,
                        bottom=2.05 / height, wspace=0.38)
    _panel_users(axes[0], rs, ds, spec, line_models, [m for m in models if m not in line_models], metric)
    _panel_items(axes[1], rs, ds, base, item_deg, "b")
    _panel_items(axes[2], rs, ds, reference, item_deg, "c")
    ylims = [ax.get_ylim() for ax in axes[1:] if ax.collections]
    if ylims:
        top = max(hi for _, hi in ylims)
        for ax in axes[1:]:
            ax.set_ylim(-0.02 * top, top * 1.05)  # the same scale in (b) and (c)
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    name = artefact_name("figure1", rs.budget)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths
