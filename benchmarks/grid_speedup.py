"""Wall time of one fixed grid on ML-100K: `--workers 1` vs `--workers 2` (a local Dask cluster) vs
the same runs split over two plain `mmbench run` processes (disjoint model lists, one results folder).

Each way is a fresh `mmbench run` subprocess (or two) into its own temporary results folder, timed
from start to exit, so process start-up, data loading and the Dask cluster's start are all counted.
The grid (6 models × 5 seeds, `--budget quick`, one thread per run) takes 3–4 min at `--workers 1` on
an idle 2-core machine. Prints each wall time, the ideal (the runs' own seconds from the
`--workers 1` records, / 2), the plain-process ratio (workers-1 time / two-plain-processes time),
whether the records of all three ways are identical, and LAST `speedup X.XX` (workers 1 / workers 2).
Target: speedup >= 0.9 × the plain-process ratio. Other load on the machine skews all of it: run it
on an otherwise idle machine (it prints the load average before and after).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmbench import records  # noqa: E402

MODELS = ["recbole-ngcf", "lightgcn-m", "recbole-lightgcn", "lightgcn", "vbpr", "mf-bpr"]
SEEDS = "1,2,3,4,5"
BASE = ["--dataset", "ml100k", "--budget", "quick", "--threads", "1", "--seeds", SEEDS, "--no-progress"]
VOLATILE = ("created", "timings", "peak_memory_mb", "env")


def mmbench_run(models: list[str], results: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmbench.cli", "run", "--models", ",".join(models), *BASE,
           "--results", str(results), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def timed(*procs: subprocess.Popen) -> float:
    t0 = time.perf_counter()
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"`mmbench run` failed ({p.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - t0


def load() -> str:
    """The 1-minute load average: above ~2 on a 2-core machine, something else competed."""
    return f"load average {os.getloadavg()[0]:.2f}"


def split_models(models: list[str], seconds: dict[str, float]) -> tuple[list[str], list[str]]:
    """Two disjoint model lists of near-equal total seconds (longest model first, to the lighter side)."""
    sides: tuple[list[str], list[str]] = ([], [])
    load = [0.0, 0.0]
    for m in sorted(models, key=lambda m: -seconds[m]):
        k = 0 if load[0] <= load[1] else 1
        sides[k].append(m)
        load[k] += seconds[m]
    return sides


def comparable(folder: Path) -> tuple[bytes, dict]:
    raw = json.loads((folder / records.RECORD).read_text())
    for key in VOLATILE:
        raw.pop(key, None)
    raw["history"] = [{k: v for k, v in h.items() if not k.endswith("_seconds")} for h in raw["history"]]
    return (folder / records.ARRAYS).read_bytes(), raw


def identical(a: Path, b: Path) -> int:
    """How many records of `a` have an identical twin in `b` (same relative folder)."""
    ra = {f.relative_to(a): f for f in records.find_records(a)}
    rb = {f.relative_to(b): f for f in records.find_records(b)}
    return sum(rel in rb and comparable(ra[rel]) == comparable(rb[rel]) for rel in ra)


def main() -> None:
    print(f"grid: {', '.join(MODELS)} × seeds {SEEDS} on ml100k, budget quick, 1 thread per run; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="grid-speedup-") as tmp:
        tmp = Path(tmp)
        t1 = timed(mmbench_run(MODELS, tmp / "w1", "--workers", "1"))
        print(f"--workers 1: {t1:.1f} s ({load()} at the end)", flush=True)
        recs = [records.read_record(f) for f in records.find_records(tmp / "w1")]
        per_model: dict[str, float] = {}
        for r in recs:
            per_model[r.model] = per_model.get(r.model, 0.0) + float(r.timings["total_seconds"])
        run_seconds = sum(per_model.values())
        t2 = timed(mmbench_run(MODELS, tmp / "w2", "--workers", "2"))
        print(f"--workers 2: {t2:.1f} s ({load()} at the end)", flush=True)
        a, b = split_models(MODELS, per_model)
        tp = timed(mmbench_run(a, tmp / "plain"), mmbench_run(b, tmp / "plain"))
        print(f"two plain processes ({','.join(a)} | {','.join(b)}): {tp:.1f} s ({load()} at the end)", flush=True)
        same = (identical(tmp / "w1", tmp / "w2"), identical(tmp / "w1", tmp / "plain"))
    plain_ratio, speedup = t1 / tp, t1 / t2
    print(f"runs: {len(recs)}, their own seconds {run_seconds:.1f} s; ideal with 2 workers {run_seconds / 2:.1f} s")
    print(f"identical records: workers 2 {same[0]}/{len(recs)}, plain processes {same[1]}/{len(recs)}")
    print(f"plain-process ratio {plain_ratio:.2f} (workers 1 / two plain processes); "
          f"target speedup >= {0.9 * plain_ratio:.2f}: {'met' if speedup >= 0.9 * plain_ratio else 'NOT met'}")
    print(f"speedup {speedup:.2f}")


if __name__ == "__main__":
    main()
