"""Training curves (the paper's Figure 3): VALID Recall@20 per epoch per model, one panel per
dataset; with several seeds, the mean over the seeds that reached an epoch and a min–max band. One
figure per budget (`curves.png`, `curves-quick.png`, …), its title saying what it was made from."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmbench.eval.metrics import RECALL_20
from mmbench.reports.common import (RunSet, artefact_name, dataset_label, figure_title,  # noqa: E402
                                    metric_label)
from mmbench.reports.table4 import model_label  # noqa: E402

METRIC = RECALL_20


def curve(run, metric: str = METRIC) -> dict[int, float]:
    """{epoch: valid metric} from a record's history (validation epochs only)."""
    out = {}
    for h in run.record.history:
        v = (h.get("valid") or {}).get(metric)
        if v is not None and "epoch" in h:
            out[int(h["epoch"])] = float(v)
    return out


def seed_curves(rs: RunSet, ds: str, model: str, metric: str = METRIC):
    """(epochs, mean, min, max) over the seeds that validated at each epoch; None if no history."""
    per_seed = [c for c in (curve(r, metric) for r in rs.runs(ds, model)) if c]
    if not per_seed:
        return None
    epochs = sorted(set().union(*per_seed))
    vals = [[c[e] for c in per_seed if e in c] for e in epochs]
    return (np.asarray(epochs), np.asarray([np.mean(v) for v in vals]),
            np.asarray([min(v) for v in vals]), np.asarray([max(v) for v in vals]))


def write(rs: RunSet, out: Path, metric: str = METRIC) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = rs.datasets()
    ncols = min(len(datasets), 3)
    nrows = math.ceil(len(datasets) / ncols)
    width = max(5.6 * ncols, 8.0)
    title, title_height = figure_title(
        rs, f"Training curves (cf. the paper's Figure 3): valid {metric_label(metric)} per epoch",
        "line = mean over the seeds that reached the epoch; band = min–max over seeds", width)
    height = 4.2 * nrows + 0.2 + title_height
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    all_models = sorted(rs.all_models())
    cmap = plt.get_cmap("tab10" if len(all_models) <= 10 else "tab20")
    color = {m: cmap(i % cmap.N) for i, m in enumerate(all_models)}
    for ax, ds in zip(axes.flat, datasets):
        drawn = 0
        for m in rs.models(ds):
            c = seed_curves(rs, ds, m, metric)
            if c is None:
                continue
            ep, mean, lo, hi = c
            n = len(rs.runs(ds, m))
            ax.plot(ep, mean, color=color[m], lw=1.6, marker="o" if len(ep) < 30 else None, ms=3,
                    label=f"{model_label(m)} ({n} seed{'s' if n > 1 else ''})")
            if n > 1:
                ax.fill_between(ep, lo, hi, color=color[m], alpha=0.18, lw=0)
            drawn += 1
        ax.set_title(dataset_label(ds), fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"valid {metric_label(metric)}")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
        else:
            ax.text(0.5, 0.5, "no validation history", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()  # makes room for the suptitle too
    path = out / f"{artefact_name('curves', rs.budget)}.png"
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return [path]
