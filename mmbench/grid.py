"""The models × seeds grid on Dask: a local cluster (`mmbench run --workers N`) or a running
scheduler (`--scheduler tcp://HOST:PORT`, e.g. `dask scheduler` + `dask worker`, or dask-jobqueue).

`mmbench.runner` says what ONE run is; this module says how many run at once and in which order.
Imported only when a grid goes to Dask: `--workers 1` never imports dask.

- Longest first. Each run's duration is estimated from the newest record of that model and dataset
  (same budget preferred) under `--results` or the committed `results/reference/`, else by the
  model's `heavy` flag; runs start in that order, so the long ones do not end up last, alone.
- The client keeps exactly as many runs in flight as the cluster has worker threads and submits the
  next one when one finishes: the start order is ours, not the result of Dask's queueing and
  work-stealing heuristics, and a worker added later (dask-jobqueue scaling up) gets the next run.
- Tasks get plain data (model, seed, budget label, threads, device, resolved config, results path,
  dataset as given + the client's fingerprint), never the Dataset: each worker loads the dataset by
  name from its own data directory and refuses to train on data whose fingerprint differs.
- The run's claim (flock on `<run folder>/.lock`) is taken on the worker, so several clients, plain
  `mmbench run` processes and Dask workers can share one results folder; the OS drops the lock of a
  worker process that dies, and the next `mmbench run` resumes its run from the checkpoint.
- `--run-timeout`: the run itself stops at the first epoch that starts past the deadline (see
  `runner._deadline_hook`: checkpoint intact, resumable). A run stuck INSIDE an epoch cannot notice,
  so the client also has a backstop: past the deadline plus a grace period, it cancels the task and
  restarts the worker process that runs it (its nanny starts a fresh one), and writes error.json.
- Ctrl-C closes a local cluster (its worker processes die, their claims with them); on a scheduler,
  it cancels this grid's tasks and restarts the workers running them. A rerun resumes.
"""
from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from distributed import Client, LocalCluster

from mmbench import records
from mmbench.config import Config
from mmbench.data.dataset import Dataset
from mmbench.errors import ConfigError, DataError, MMBenchError
from mmbench.runner import (ERROR, LOCK, RunOutcome, RunSpec, checkpoint_epoch, resolve_configs, tuned_of,
                            run_one, write_error)

# The committed reference runs of a source checkout (absent from an installed wheel: then only
# --results and the defaults below inform the estimates).
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
# Seconds assumed for a run with no record to go by, by the model's `heavy` class flag.
DEFAULT_ESTIMATE = {True: 1800.0, False: 300.0}
POLL = 0.5  # seconds between looks at the runs in flight (timeouts, new workers)
CONNECT_TIMEOUT = 20  # seconds to reach a --scheduler
# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the OS).
# Setting it at all stops glibc from adapting its mmap threshold, so torch's many large temporary
# tensors are mmap'ed and page-faulted afresh each time: a grcn smoke run on ML-100K took 13.0 s
# instead of 7.8 s (median of 3, interleaved). Our local workers start without it; this is the
# setting to give `dask worker` (README), and the client warns when a scheduler's workers have it.
UNSET_MALLOC_TRIM = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
WORKER_ENV_FIX = """DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"MALLOC_TRIM_THRESHOLD_": None}'"""
SCHEDULER_ADDRESS = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")


@dataclass(frozen=True)
class GridRun:
    """One run of the grid as the client sees it: where its folder is, how long it should take,
    and the plain data its task gets."""

    model: str
    seed: int
    folder: Path
    estimate: float
    estimate_from: str  # "record <path>" or "default (heavy model)" / "default"
    payload: dict[str, Any]
    order: tuple[int, int] = (0, 0)  # (model, seed) position on the command line, for the summary


# --------------------------------------------------------------------------- planning (client)

def estimate_seconds(model: str, dataset: str, budget: str, roots: list[Path]) -> tuple[float, str]:
    """Seconds a run of `model` on `dataset` should take: `timings.total_seconds` of the newest
    record of that model and dataset (one of the same budget label preferred) under `roots`,
    else `DEFAULT_ESTIMATE` by the model's `heavy` flag."""
    from mmbench.models.base import get_model_class

    best: tuple[tuple[bool, str], float, Path] | None = None
    for root in roots:
        runs = Path(root) / "runs"
        if not runs.is_dir():
            continue
        for ds_dir in sorted(runs.iterdir()):
            # `<name>` (schema-1 reference) or `<name>-<fingerprint[:8]>`; the record has the last word
            if ds_dir.name != dataset and not ds_dir.name.startswith(dataset + "-"):
                continue
            for path in sorted((ds_dir / model).glob(f"*/{records.RECORD}")):
                try:
                    rec = records.read_record(path, verify_arrays=False)
                except MMBenchError:
                    continue
                seconds = (rec.timings or {}).get("total_seconds")
                if rec.model != model or rec.dataset.name != dataset or not isinstance(seconds, (int, float)) \
                        or not math.isfinite(seconds) or seconds <= 0 or getattr(rec, "trial", None) is not None:
                    continue  # another run, no time, or a tuning trial (pruned early: not a run's length)
                key = (rec.budget == budget, rec.created)
                if best is None or key > best[0]:
                    best = (key, float(seconds), path)
    if best is not None:
        return best[1], f"record {best[2].parent}"
    heavy = bool(get_model_class(model).heavy)
    return DEFAULT_ESTIMATE[heavy], "default (heavy model)" if heavy else "default"


def plan(models: list[str], data: Dataset, seeds: list[int], device, results: Path, *, dataset_spec: str,
         data_dir: str | None = None, budget: str = "full", config_file: str | None = None,
         set_items: list[str] | None = None, threads: int = 1, run_timeout: float | None = None,
         reference: Path | None = REFERENCE, tuned: dict | None = None) -> list[GridRun]:
    """Every model × seed as a `GridRun`, longest estimate first (ties: the order given)."""
    cfgs, labels = resolve_configs(models, data.name, budget, config_file, set_items, tuned)
    roots = [Path(results)] + ([Path(reference)] if reference is not None else [])
    shared = Path(results).resolve()  # workers elsewhere see the results folder by its absolute path
    runs: list[tuple[tuple, GridRun]] = []
    for i, name in enumerate(models):
        estimate, source = estimate_seconds(name, data.name, labels[name], roots)
        for j, seed in enumerate(seeds):
            spec = RunSpec(name, cfgs[name], seed, labels[name], int(threads), device, tuned_of(tuned, name))
            folder = spec.folder(results, data)
            payload = {"model": name, "seed": int(seed), "budget": labels[name], "threads": int(threads),
                       "tuned": spec.tuned,
                       "device": str(device), "config": dict(cfgs[name]), "results": str(shared),
                       "folder": str(spec.folder(shared, data)), "dataset": str(dataset_spec),
                       "data_dir": None if data_dir is None else str(data_dir),
                       "fingerprint": data.fingerprint, "run_timeout": run_timeout}
            runs.append(((-estimate, i, j), GridRun(name, seed, folder, estimate, source, payload, (i, j))))
    return [run for _, run in sorted(runs, key=lambda pair: pair[0])]


# --------------------------------------------------------------------------- the task (worker)

_LOADED: dict[tuple[str, str | None], Dataset] = {}


def worker_dataset(spec: str, data_dir: str | None, fingerprint: str) -> Dataset:
    """The dataset `spec` as this worker loads it (kept per process: a grid has one dataset), or a
    DataError when its content fingerprint is not the client's."""
    from mmbench.data.registry import data_dir as resolve_data_dir, load_dataset

    key = (spec, data_dir)
    data = _LOADED.get(key)
    if data is None or data.fingerprint != fingerprint:  # a cached copy is reused only if it is the one
        data = load_dataset(spec, data_dir=data_dir)
        _LOADED.clear()
        _LOADED[key] = data
    if data.fingerprint != fingerprint:
        raise DataError(f"dataset {spec!r} on worker {socket.gethostname()} (data directory "
                        f"{resolve_data_dir(data_dir)}) has fingerprint {data.fingerprint[:12]}, the client's has "
                        f"{fingerprint[:12]}: the worker's copy differs, so this run is refused")
    return data


def execute(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one grid run on this worker: load the data, check it, then `runner.run_one` (claim,
    train or resume, record or error.json). Returns plain data; every failure is a failed run."""
    import torch

    folder = Path(payload["folder"])
    t0 = time.perf_counter()
    where = f"{socket.gethostname()} pid {os.getpid()}"
    try:
        data = worker_dataset(payload["dataset"], payload["data_dir"], payload["fingerprint"])
        spec = RunSpec(payload["model"], Config(payload["config"]), int(payload["seed"]), payload["budget"],
                       int(payload["threads"]), torch.device(payload["device"]), payload.get("tuned"))
        mine = spec.folder(Path(payload["results"]), data)
        if mine != folder:
            raise ConfigError(f"this worker names the run {mine}, the client {folder}: they run different "
                              "versions of mmbench")
    except Exception as exc:  # noqa: BLE001 - the run fails, the grid goes on
        msg = f"{type(exc).__name__}: {exc}"
        try:
            write_error(folder, payload["model"], payload["seed"], msg, "".join(traceback.format_exception(exc)),
                        worker=where)
        except Exception:  # noqa: BLE001 - e.g. the results folder is not reachable from this worker
            pass
        return {"status": "failed", "error": msg, "seconds": time.perf_counter() - t0, "worker": where}
    out = run_one(spec, data, folder, progress="off", timeout=payload["run_timeout"], echo=False, catch_all=True)
    return {"status": out.status, "error": out.error, "seconds": out.seconds, "resumed_from": out.resumed_from,
            "record": out.record.to_dict() if out.record is not None else None, "worker": where}


# --------------------------------------------------------------------------- the cluster (client)

def check_scheduler_address(address: str) -> str:
    if not SCHEDULER_ADDRESS.match(address or ""):
        raise ConfigError(f"--scheduler {address[:100]!r}: expected a Dask address such as tcp://HOST:PORT")
    return address


@contextmanager
def connect(workers: int | None = None, scheduler: str | None = None) -> Iterator[tuple[Client, LocalCluster | None]]:
    """A client of a new local cluster (`workers` processes × 1 thread, loopback only, no dashboard,
    no memory limit: a nanny must never kill a long run for its size) or of `scheduler`."""
    if scheduler:
        try:
            client = Client(check_scheduler_address(scheduler), timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({exc})") from None
        cluster = None
    else:
        import dask

        with dask.config.set(UNSET_MALLOC_TRIM):  # read by each nanny when it is made
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, memory_limit=0, silence_logs=logging.CRITICAL,
                                   scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
        client = Client(cluster, set_as_default=False)
    try:
        yield client, cluster
    finally:
        _close(client, cluster)


def _close(client: Client, cluster: LocalCluster | None) -> None:
    """Close the client, then the local cluster: its nannies kill workers still busy after a few seconds."""
    try:
        client.close(timeout=10)
    except Exception:  # noqa: BLE001 - closing on the way out (Ctrl-C, a lost scheduler) must not mask why
        pass
    if cluster is not None:
        try:
            cluster.close(timeout=30)
        except Exception:  # noqa: BLE001
            pass


def worker_slots(client: Client) -> int:
    """Worker threads the scheduler has now (workers may come and go)."""
    try:
        return int(sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 - a scheduler that does not answer right now: try again later
        return 0


def _stop_runs(client: Client, cluster: LocalCluster | None, futures: list) -> None:
    """Stop this grid's running tasks now. A local cluster is closed by the caller (its worker
    processes die); on a shared scheduler the workers running our tasks are restarted by their
    nannies, which is the only way to end a task's thread, and releases its run's claim."""
    if cluster is not None or not futures:
        return
    ours = {f.key for f in futures}
    try:
        busy = [w for w, keys in client.processing().items() if ours & set(keys)]
    except Exception:  # noqa: BLE001
        busy = []
    try:
        client.cancel(futures, force=True)
    except Exception:  # noqa: BLE001
        pass
    if busy:
        try:
            client.restart_workers(busy, timeout=60, raise_for_error=False)
        except Exception:  # noqa: BLE001
            pass


def _environ(name: str) -> str | None:
    """An environment variable as a worker sees it (`os.environ.get` itself would travel with the
    client's environment)."""
    return os.environ.get(name)


def _slow_malloc_workers(client: Client) -> list[str]:
    """Workers that run with MALLOC_TRIM_THRESHOLD_ set (see UNSET_MALLOC_TRIM)."""
    try:
        found = client.run(_environ, "MALLOC_TRIM_THRESHOLD_")
    except Exception:  # noqa: BLE001 - a check for a warning only
        return []
    return sorted(w for w, value in found.items() if value is not None)


def _restart_worker_of(client: Client, future) -> str:
    """Cancel a task stuck past its deadline and restart the worker process running it (a
    thread cannot be stopped otherwise); returns what happened, for error.json."""
    try:
        addr = next((w for w, keys in client.processing().items() if future.key in set(keys)), None)
    except Exception:  # noqa: BLE001
        addr = None
    try:
        client.cancel([future], force=True)
    except Exception:  # noqa: BLE001
        pass
    if addr is None:
        return "its worker was not found"
    try:
        result = client.restart_workers([addr], timeout=60, raise_for_error=False)
    except Exception as exc:  # noqa: BLE001
        return f"its worker {addr} could not be restarted ({type(exc).__name__}: {exc})"
    status = (result or {}).get(addr, "OK")
    return f"its worker {addr} was restarted" if status == "OK" else \
        f"its worker {addr} could not be restarted ({status}); the run stops at its next epoch"


# --------------------------------------------------------------------------- the grid (client)

def run_grid(runs: list[GridRun], dataset: str, *, workers: int | None = None, scheduler: str | None = None,
             client: Client | None = None, fail_fast: bool = False, run_timeout: float | None = None,
             timeout_grace: float | None = None) -> list[RunOutcome]:
    """Train `runs` (from `plan`, longest first) on Dask: on a new local cluster of `workers`
    processes, on `scheduler`, or with an existing `client`. One line per finished run, a progress
    bar over runs on a terminal; returns the outcomes in grid order (models, then seeds, as given)."""
    outcomes: dict[tuple[str, int], RunOutcome] = {}
    todo = []
    for run in runs:
        if (run.folder / records.RECORD).exists():  # complete: no task needed
            outcomes[(run.model, run.seed)] = RunOutcome(run.model, run.seed, run.folder, "skipped",
                                                         records.read_record(run.folder))
            print(f"[skip] {run.model} {dataset} seed {run.seed}: complete in {run.folder}", file=sys.stderr)
        else:
            todo.append(run)
    if todo and client is not None:
        _Drive(todo, dataset, client, None, outcomes, fail_fast, run_timeout, timeout_grace).run()
    elif todo:
        with connect(workers, scheduler) as (own, cluster):
            _Drive(todo, dataset, own, cluster, outcomes, fail_fast, run_timeout, timeout_grace).run()
    return [outcomes[(r.model, r.seed)] for r in sorted(runs, key=lambda r: r.order)]


class _Drive:
    """The client's loop: keep one run per worker thread in flight, longest first; report each
    finished run; enforce the timeout backstop; stop everything on --fail-fast or Ctrl-C."""

    def __init__(self, todo, dataset, client, cluster, outcomes, fail_fast, run_timeout, grace):
        self.todo, self.dataset, self.client, self.cluster = list(todo), dataset, client, cluster
        self.outcomes, self.fail_fast, self.run_timeout = outcomes, fail_fast, run_timeout
        self.grace = grace if grace is not None else (max(60.0, 0.1 * run_timeout) if run_timeout else None)
        self.running: dict[Any, tuple[GridRun, float]] = {}
        self.bar = None
        self.warned_shared = False
        self.changed = threading.Event()

    def say(self, line: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)

    def run(self) -> None:
        from collections import deque
        from tqdm.auto import tqdm

        pending = deque(self.todo)
        where = (f"a local Dask cluster of {len(self.cluster.workers)} worker processes" if self.cluster is not None
                 else f"the Dask scheduler {self.client.scheduler.address}")
        models = list(dict.fromkeys((r.model, round(r.estimate)) for r in self.todo))
        self.say(f"grid: {len(self.todo)} run(s) on {where} ({worker_slots(self.client)} worker thread(s) now), "
                 f"longest first: " + ", ".join(f"{m} ~{e}s" for m, e in models))
        slow = _slow_malloc_workers(self.client) if self.cluster is None else []
        if slow:
            self.say(f"[warn] {len(slow)} worker(s) run with MALLOC_TRIM_THRESHOLD_ set (Dask's nanny default), "
                     f"which slows torch runs (1.7x here): start `dask worker` with {WORKER_ENV_FIX}")
        self.bar = tqdm(total=len(self.todo), unit="run", desc="runs", file=sys.stderr, dynamic_ncols=True,
                        disable=not getattr(sys.stderr, "isatty", lambda: False)())
        waiting_said = False
        try:
            while pending or self.running:
                slots = worker_slots(self.client)
                while pending and len(self.running) < slots:
                    run = pending.popleft()
                    key = f"mmbench-run-{run.model}-seed{run.seed}-{uuid.uuid4().hex[:8]}"
                    future = self.client.submit(execute, run.payload, key=key, pure=False, retries=0)
                    future.add_done_callback(lambda _: self.changed.set())
                    self.running[future] = (run, time.monotonic())
                if not self.running:
                    if not waiting_said:
                        self.say("grid: waiting for Dask workers to join")
                        waiting_said = True
                    time.sleep(POLL)
                    continue
                self.changed.wait(POLL)  # a task ended (its callback), or time to look at deadlines
                self.changed.clear()
                for future in [f for f in self.running if f.done()]:
                    run, _ = self.running.pop(future)
                    self._finished(run, future)
                self._backstop()
                if self.fail_fast and any(o.status == "failed" for o in self.outcomes.values()):
                    self._cancel_rest(pending, "--fail-fast: a run failed")
                    return
        except KeyboardInterrupt:
            self.say("grid: interrupted: stopping the runs in flight (a rerun resumes them)")
            _stop_runs(self.client, self.cluster, list(self.running))
            raise
        finally:
            self.bar.close()

    def _record(self, outcome: RunOutcome, line: str) -> None:
        self.outcomes[(outcome.model, outcome.seed)] = outcome
        self.say(line)
        self.bar.update(1)

    def _finished(self, run: GridRun, future) -> None:
        """The outcome of a task that ended, by its result or by what went wrong around it."""
        if future.status != "finished":  # lost workers (KilledWorker), a result that did not travel, ...
            exc = future.exception() if future.status == "error" else None
            msg = f"{type(exc).__name__}: {exc}" if exc is not None else f"the task ended as {future.status}"
            trace = "".join(traceback.format_tb(future.traceback())) if exc is not None else None
            self._fail(run, msg, trace, None)
            return
        res = future.result()
        status, seconds = res["status"], res.get("seconds")
        record = records.RunRecord.from_dict(res["record"]) if res.get("record") else None
        outcome = RunOutcome(run.model, run.seed, run.folder, status, record, res.get("error"), seconds,
                             res.get("resumed_from"))
        if status == "done":
            resumed = f" (resumed after epoch {outcome.resumed_from})" if outcome.resumed_from is not None else ""
            self._record(outcome, _line(run, self.dataset, "done", seconds, f"best epoch {record.best_epoch}{resumed}"))
            if not self.warned_shared and not (run.folder / records.RECORD).exists():
                self.warned_shared = True
                self.say(f"[warn] {run.folder / records.RECORD} was written by {res.get('worker')} but is not "
                         "visible here: --results must be a folder every worker and this client share")
        elif status == "failed":
            self._record(outcome, _line(run, self.dataset, "fail", seconds,
                                        f"{outcome.error} (see {run.folder / ERROR})"))
        elif status == "busy":
            self._record(outcome, _line(run, self.dataset, "busy", None,
                                        f"being trained by another process ({run.folder / LOCK})"))
        else:  # skipped: another process finished it after the client looked
            self._record(outcome, _line(run, self.dataset, "skip", None, f"complete in {run.folder}"))

    def _fail(self, run: GridRun, msg: str, trace: str | None, seconds: float | None, **facts) -> None:
        """A run whose task could not say so itself: the client writes its error.json."""
        try:
            write_error(run.folder, run.model, run.seed, msg, trace, written_by="client",
                        checkpoint_epoch=checkpoint_epoch(run.folder), **facts)
            note = f" (see {run.folder / ERROR})"
        except Exception as err:  # noqa: BLE001 - e.g. the results folder is not writable from here
            note = f" (error.json not written: {type(err).__name__}: {err})"
        outcome = RunOutcome(run.model, run.seed, run.folder, "failed", None, msg, seconds)
        self._record(outcome, _line(run, self.dataset, "fail", seconds, msg + note))

    def _backstop(self) -> None:
        """Runs past --run-timeout plus the grace period (stuck inside an epoch): restart their worker."""
        if self.run_timeout is None:
            return
        now = time.monotonic()
        for future, (run, started) in list(self.running.items()):
            if future.done() or now - started <= self.run_timeout + self.grace:
                continue
            what = _restart_worker_of(self.client, future)
            self.running.pop(future, None)
            self._fail(run, f"RunTimeout: ran past --run-timeout {self.run_timeout:g}s and did not reach an "
                            f"epoch boundary within {self.grace:g}s more; {what}; a rerun resumes from its "
                            "checkpoint", None, now - started, timeout=True)

    def _cancel_rest(self, pending, why: str) -> None:
        """Stop the runs in flight and never start the pending ones (they stay resumable)."""
        _stop_runs(self.client, self.cluster, list(self.running))
        for run, _ in list(self.running.values()) + [(r, None) for r in pending]:
            self.outcomes[(run.model, run.seed)] = RunOutcome(run.model, run.seed, run.folder, "cancelled",
                                                              error=why)
        if self.running or pending:
            self.say(f"grid: {why}: {len(self.running)} run(s) stopped, {len(pending)} not started")
        self.running.clear()
        pending.clear()


def _line(run: GridRun, dataset: str, status: str, seconds: float | None, detail: str) -> str:
    """The one console line of a finished run: model, dataset, seed, status, time, what happened."""
    took = f"{seconds:.1f}s, " if seconds is not None else ""
    return f"[{status}] {run.model} {dataset} seed {run.seed}: {took}{detail}"
