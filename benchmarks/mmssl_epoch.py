"""Seconds per TikTok training epoch for both MMSSL variants, beside the authors' code, and flat memory.
(about 40 minutes on TikTok; a minute on ML-100K)

Why: the authors' code takes 214 s per TikTok epoch on this class of machine at 2 intra-op threads
(59 batches × 3.6 s). This measures whole epochs of `mmssl` and `mmssl-official` as `mmbench run`
trains them, and checks that a long run's resident memory does not creep from epoch to epoch.

How: each (variant, threads) runs in its own fresh child process (this script with `--child`), so thread
settings and RSS start clean; the children run one at a time: 2 threads (mmssl, mmssl-official), then
1 thread. A child builds the run as `mmbench.runner.train_one` does (the variant's resolved config,
seed 2024, `torch.set_num_threads`) and drives the real `Trainer.fit`, so each epoch is a real one:
training, then validation with the shared evaluator. Wrappers on the model's `on_epoch_start` /
`on_epoch_end` and the trainer's `on_validation` callback time the two halves, reset the resident-set
peak before each epoch (`reset_peak_memory`) and print, per epoch, train and validation seconds, the
RSS (VmRSS), the live RSS and the epoch's peak (VmHWM) in MiB. After E epochs the child ends the run
(no test pass). "Live" is the RSS after `gc.collect()` and glibc's `malloc_trim(0)`: glibc keeps freed
blocks in its heap and hands them back unevenly, so the raw RSS between epochs wanders by a few percent
(measured: 1270, 1270, 1296, 1335, 1302 MiB over five `mmssl` epochs) without anything being held; the
live RSS is what a leak (the authors' code: about +70 MB per epoch) would grow. The growth check uses it.

Environment:
  MMBENCH_DATA_DIR        data folder (default ROOT/../shared/data)
  MMSSL_EPOCH_DATASET     dataset (default tiktok; e.g. ml100k for a smoke test: no 214 s comparison,
                          no checks)
  MMSSL_EPOCH_THREADS     thread counts, in order (default 2,1)
  MMSSL_EPOCH_EPOCHS      epochs per run at more than 1 thread (default 5)
  MMSSL_EPOCH_EPOCHS_1T   epochs per run at 1 thread, for timing only (default 2)

Output: per-epoch lines of each child, then per variant and thread count the median train and
validation seconds per epoch, the largest epoch peak RSS, the RSS after epoch 2 and after the last
epoch (and after epoch 5 / after epoch 2), and beside 2-thread numbers the authors' 214 s and the
ratio. Checks (TikTok, 2-thread runs of ≥ 5 epochs): median train ≤ 70 s, peak RSS ≤ 1700 MiB,
live RSS after epoch 5 ≤ 1.02 × after epoch 2; exit 1 if one fails (or a child fails). Last line:
`epoch_speedup X.XX` = 214 / the slower variant's 2-thread median train seconds (`n/a` off TikTok).
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import mmbench  # noqa: E402,F401  (before torch: its allocator setting, see mmbench/__init__.py)
import torch  # noqa: E402
os.environ.setdefault("MMBENCH_DATA_DIR", str(ROOT / ".." / "shared" / "data"))

MODELS, SEED, RESULT = ("mmssl", "mmssl-official"), 2024, "RESULT "
AUTHORS_S, MAX_TRAIN_S, MAX_PEAK_MB, MAX_GROWTH = 214.0, 70.0, 1700.0, 1.02
DATASET = os.environ.get("MMSSL_EPOCH_DATASET", "tiktok")
THREADS = [int(t) for t in os.environ.get("MMSSL_EPOCH_THREADS", "2,1").split(",") if t.strip()]
EPOCHS = {1: int(os.environ.get("MMSSL_EPOCH_EPOCHS_1T", "2"))}
EPOCHS_MT = int(os.environ.get("MMSSL_EPOCH_EPOCHS", "5"))


class _Done(Exception):
    """Raised from `on_validation` after the last measured epoch: ends the run without a test pass."""


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024.0 for line in fh if line.startswith("VmRSS:"))


def live_rss_mb() -> float:
    """RSS once Python's garbage and glibc's cached free blocks are released (raw RSS off glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_mb()


def child(name: str, threads: int, epochs: int) -> None:
    """Train `name` for `epochs` real epochs through the trainer; one line per epoch, then RESULT json."""
    from mmbench.data.registry import load_dataset
    from mmbench.models.base import get_model_class
    from mmbench.runner import check_model_fits_data, model_config
    from mmbench.train.determinism import seed_everything, set_threads
    from mmbench.train.trainer import Trainer, peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    data = load_dataset(DATASET)
    cfg = model_config(name, DATASET, "full", None, [])
    if cfg.eval_every != 1:
        raise SystemExit(f"{name}: eval_every {cfg.eval_every}, not every epoch validates")
    set_threads(threads)
    view = check_model_fits_data(name, cfg, data)
    seed_everything(SEED)
    model = get_model_class(name)(view.train_view(), cfg)
    print(f"{name} on {DATASET}: {threads} thread(s), {epochs} epoch(s), batch {cfg.batch_size}, "
          f"{data.n_users} users, {data.n_items} items, RSS {rss_mb():.0f} MiB", flush=True)
    marks: dict[str, float] = {}
    rows: list[dict] = []
    start, end = model.on_epoch_start, model.on_epoch_end

    def on_start(epoch: int) -> None:  # the trainer's epoch clock starts just before this
        reset_peak_memory(cpu)
        marks["t0"] = time.perf_counter()
        start(epoch)

    def on_end(epoch: int) -> None:  # after the last batch: training ends, validation follows
        end(epoch)
        marks["t1"] = time.perf_counter()

    def on_validation(epoch: int, _valid: dict) -> None:
        row = {"epoch": epoch, "train_s": marks["t1"] - marks["t0"], "valid_s": time.perf_counter() - marks["t1"],
               "peak_mb": peak_memory_mb(cpu), "raw_rss_mb": rss_mb()}
        row["rss_mb"] = live_rss_mb()
        rows.append(row)
        print(f"epoch {epoch}: train {row['train_s']:.1f} s, validation {row['valid_s']:.1f} s, "
              f"RSS {row['raw_rss_mb']:.0f} MiB (live {row['rss_mb']:.0f}), peak {row['peak_mb']:.0f} MiB", flush=True)
        if epoch >= epochs:
            raise _Done

    model.on_epoch_start, model.on_epoch_end = on_start, on_end
    trainer = Trainer(model, view, cfg, SEED, cpu, run_dir=None, progress=False,
                      desc=f"{name}/{DATASET}/s{SEED}", on_validation=on_validation)
    try:
        trainer.fit()  # returns only if the run stopped early (patience) before `epochs`
    except _Done:
        pass
    print(RESULT + json.dumps(rows), flush=True)


def run_child(name: str, threads: int, epochs: int) -> list[dict] | None:
    """One measurement in a fresh process, its lines echoed as they come; its rows, or None if it failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, str(threads), str(epochs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    rows = None
    for line in proc.stdout:
        if line.startswith(RESULT):
            rows = json.loads(line[len(RESULT):])
        else:
            print(f"  [{name} {threads}t] {line.rstrip()}", flush=True)
    if proc.wait() != 0 or not rows:
        print(f"  [{name} {threads}t] FAILED: child exited {proc.returncode}", flush=True)
        return None
    return rows


def rss_after(rows: list[dict], epoch: int) -> float | None:
    return next((r["rss_mb"] for r in rows if r["epoch"] == epoch), None)


def main() -> int:
    tiktok = DATASET == "tiktok"
    results: dict[tuple[str, int], list[dict] | None] = {}
    for threads in THREADS:
        for name in MODELS:
            epochs = EPOCHS.get(threads, EPOCHS_MT)
            print(f"== {name}, {threads} thread(s), {epochs} epoch(s) on {DATASET}", flush=True)
            results[name, threads] = run_child(name, threads, epochs)

    print(f"\nsummary ({DATASET}; authors' code: {AUTHORS_S:.0f} s per TikTok epoch at 2 threads)")
    checks: list[tuple[bool, str]] = [(False, f"{n}, {t} thread(s): the child failed")
                                      for (n, t), rows in results.items() if rows is None]
    medians: dict[str, float] = {}
    for (name, threads), rows in results.items():
        if rows is None:
            continue
        train = statistics.median(r["train_s"] for r in rows)
        valid = statistics.median(r["valid_s"] for r in rows)
        peak = max(r["peak_mb"] for r in rows)
        rss2, last = rss_after(rows, 2), rows[-1]
        line = (f"{name:15s} {threads}t {len(rows)} ep: train {train:.1f} s/epoch (median), validation "
                f"{valid:.1f} s, peak RSS {peak:.0f} MiB, live RSS after epoch 2 "
                f"{'n/a' if rss2 is None else f'{rss2:.0f} MiB'}, after epoch {last['epoch']} {last['rss_mb']:.0f} MiB")
        rss5 = rss_after(rows, 5)
        if rss2 is not None and rss5 is not None:
            line += f", epoch 5 / epoch 2 {rss5 / rss2:.3f}"
        if threads == 2:
            medians[name] = train
            line += (f"; authors {AUTHORS_S:.0f} s: {AUTHORS_S / train:.2f}× faster" if tiktok
                     else f"; authors {AUTHORS_S:.0f} s: n/a (not tiktok)")
        print(line, flush=True)
        if tiktok and threads == 2 and len(rows) >= 5:
            checks += [(train <= MAX_TRAIN_S, f"{name}: median train {train:.1f} s/epoch <= {MAX_TRAIN_S:.0f} s"),
                       (peak <= MAX_PEAK_MB, f"{name}: peak RSS {peak:.0f} MiB <= {MAX_PEAK_MB:.0f} MiB"),
                       (rss5 <= MAX_GROWTH * rss2, f"{name}: live RSS after epoch 5 {rss5:.0f} MiB <= "
                        f"{MAX_GROWTH} × after epoch 2 {rss2:.0f} MiB (ratio {rss5 / rss2:.3f})")]
    if not tiktok:
        print(f"checks: not applicable on {DATASET}")
    for ok, text in checks:
        print(f"{'ok' if ok else 'FAILED'}: {text}", flush=True)
    complete = tiktok and all(m in medians for m in MODELS)
    print(f"epoch_speedup {AUTHORS_S / max(medians.values()):.2f}" if complete else "epoch_speedup n/a", flush=True)
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
