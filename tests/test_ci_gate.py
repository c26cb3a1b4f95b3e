"""The CI metric gate: every registered model runs on ML-100K under the smoke budget (one thread per
run, two runs at a time) and its test metrics must match the committed `ci-ml100k.json`.

A registered model without an entry fails here, so no model can regress silently. A deliberate
change to a model's config or metrics refreshes its entry in the same commit:
    mmbench check --write --models NAME --dataset ml100k --results DIR --against results/reference/ci-ml100k.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmbench.cli import main
from mmbench.models.base import get_model_class, registry

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "ci-ml100k.json"
PROCESSES = 2


def split_for_processes(models: list[str], n: int) -> list[list[str]]:
    """Heavy models (MMSSL, SGL, NCL) spread evenly first, then the rest: balanced wall time."""
    groups: list[list[str]] = [[] for _ in range(n)]
    ordered = sorted(models, key=lambda m: (not get_model_class(m).heavy, m))
    for i, model in enumerate(ordered):
        groups[i % n].append(model)
    return [g for g in groups if g]


def test_every_registered_model_has_a_gate_entry():
    gated = set(json.loads(REFERENCE.read_text())["expect"])
    missing = sorted(set(registry()) - gated)
    stale = sorted(gated - set(registry()))
    assert not missing, f"models without an entry in {REFERENCE.name}: {missing} (add them with check --write)"
    assert not stale, f"entries for models that no longer exist: {stale}"


def test_every_model_matches_the_committed_ml100k_smoke_reference(tmp_path, capsys):
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = []
    for k, group in enumerate(split_for_processes(list(registry()), PROCESSES)):
        log = open(tmp_path / f"run{k}.log", "w")
        cmd = [sys.executable, "-m", "mmbench.cli", "run", "--models", ",".join(group), "--dataset", "ml100k",
               "--budget", "smoke", "--threads", "1", "--results", str(tmp_path / "res"), "--no-progress"]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, group))
    for proc, log, group in procs:
        rc = proc.wait(timeout=900)
        log.close()
        assert rc == 0, f"mmbench run of {group} failed:\n{Path(log.name).read_text()[-3000:]}"
    t_runs = time.perf_counter() - t0
    code = main(["check", "--results", str(tmp_path / "res"), "--against", str(REFERENCE)])
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nmetric gate: {len(registry())} models on ml100k (smoke, 1 thread, {PROCESSES} processes): "
              f"runs {t_runs:.0f} s, total {time.perf_counter() - t0:.0f} s")
    assert code == 0, out


@pytest.mark.parametrize("drift", [0.0, 0.01])
def test_the_gate_trips_on_a_moved_metric(tmp_path, capsys, drift):
    """The same check that gates CI, on a copy of the reference with one metric moved."""
    from mmbench.runner import run_all
    from mmbench.data.registry import load_dataset
    from mmbench.train.trainer import resolve_device

    data = load_dataset("ml100k")
    run_all(["mf-bpr"], data, [2024], resolve_device("cpu"), tmp_path / "res", budget="smoke", progress=False)
    ref = json.loads(REFERENCE.read_text())
    ref["expect"] = {"mf-bpr": ref["expect"]["mf-bpr"]}
    ref["expect"]["mf-bpr"]["metrics"]["recall@20"] += drift
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    code = main(["check", "--results", str(tmp_path / "res"), "--against", str(tmp_path / "ref.json")])
    assert code == (0 if drift == 0 else 1), capsys.readouterr().out
