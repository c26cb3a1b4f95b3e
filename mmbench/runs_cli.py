"""`mmbench runs`: the state of every run in a results folder, one line each, plus counts.

- done: the folder has its record.json.
- claimed: a live process holds the run's lock (`.lock`): it is being trained right now.
- failed: its last attempt left an error.json (and nobody is retrying it now).
- stale: started, not finished, not failed, and nobody holds its claim: a process died or was
  stopped; `mmbench run` with the same arguments resumes it (from its checkpoint, if it has one).

The claim is probed with a shared flock taken and dropped at once on a read-only descriptor: the
listing needs no write access, and a claimer that hits the probe retries (`runner.CLAIM_WAIT`).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from mmbench import records
from mmbench.errors import ConfigError, MMBenchError
from mmbench.runner import ERROR, LOCK, checkpoint_epoch

STATES = ("done", "failed", "claimed", "stale")


def add_parser(sub) -> None:
    p = sub.add_parser("runs", help="list the runs of a results folder: done, failed, claimed, stale",
                       description="One line per run folder under <results>/runs/: done (record written), "
                                   "failed (error.json), claimed (a live process holds its lock) or stale "
                                   "(unfinished, nobody on it: `mmbench run` resumes it); then the counts.")
    p.add_argument("--results", default="results", help="results directory (run folders are under <results>/runs/)")
    p.set_defaults(func=cmd_runs)


def lock_held(path: Path) -> bool:
    """Whether a live process holds the flock on `path` (a claim; see `runner.claim_run`)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # no lock file: never claimed
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def run_state(folder: Path) -> tuple[str, str]:
    """(state, detail) of one run folder."""
    if (folder / records.RECORD).exists():
        try:
            rec = records.read_record(folder, verify_arrays=False)
        except MMBenchError as exc:
            return "done", f"record unreadable: {exc}"
        seconds = (rec.timings or {}).get("total_seconds")
        took = f", {seconds:.1f}s" if isinstance(seconds, (int, float)) else ""
        return "done", f"{rec.budget} budget, best epoch {rec.best_epoch}{took}"
    epoch = checkpoint_epoch(folder)
    saved = f"checkpoint after epoch {epoch}" if epoch is not None else "no checkpoint yet"
    if lock_held(folder / LOCK):
        return "claimed", f"being trained ({saved})"
    if (folder / ERROR).exists():
        try:
            message = json.loads((folder / ERROR).read_text(encoding="utf-8")).get("message", "?")
        except (OSError, ValueError, AttributeError):
            message = "error.json unreadable"
        return "failed", f"{message} ({saved}; rerun to retry)"
    return "stale", f"{saved}, nobody on it: rerun to resume"


def run_folders(results: Path) -> list[Path]:
    """Every run folder: <results>/runs/<dataset>/<model>/<run id>/."""
    runs = Path(results) / "runs"
    return sorted(p for p in runs.glob("*/*/*") if p.is_dir()) if runs.is_dir() else []


def cmd_runs(args) -> int:
    results = Path(args.results)
    if not results.is_dir():
        raise ConfigError(f"--results {str(results)[:100]!r}: no such folder")
    counts = dict.fromkeys(STATES, 0)
    folders = run_folders(results)
    width = max((len(str(f.relative_to(results / "runs"))) for f in folders), default=0)
    for folder in folders:
        state, detail = run_state(folder)
        counts[state] += 1
        print(f"{state:8s} {str(folder.relative_to(results / 'runs')):{width}s}  {detail}")
    print(f"{len(folders)} run(s) in {results / 'runs'}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0
