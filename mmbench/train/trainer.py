"""The training loop: epochs, valid-only early stopping, in-memory best state, one test pass.

One loop for every model, RecBole adapters included (they plug in through the same hooks), so every
run checkpoints and resumes: parameters, `extra_state()`, optimisers, the sampler's state and the
global torch (and CUDA) and numpy RNGs, saved after an epoch and restored before the next.

Checkpoints run no code when read: they hold tensors and plain containers only (dict, list, tuple,
str, int, float, bool, None; see `to_checkpoint`) and are loaded with `weights_only=True`, so a
checkpoint planted in a results folder cannot execute anything. One that cannot be loaded (planted,
truncated, from another version of a model) is moved aside to `checkpoint.pt.bad-<UTC time>` with a
one-line warning, and the run starts fresh.

Leakage-proof by construction: the loop runs on a copy of the dataset whose test split is EMPTY, and
the model itself only ever sees `train_view()`. The test split is evaluated exactly once, after the
loop, with the best-valid state.
"""
from __future__ import annotations

import copy
import re
import resource
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmbench import safeio
from mmbench.atomic import atomic_write
from mmbench.data.dataset import Dataset
from mmbench.errors import DiskFullError
from mmbench.eval import EvalResult, evaluate
from mmbench.train.determinism import seed_everything  # noqa: F401  (re-exported)
from mmbench.train.progress import EpochProgress

CHECKPOINT = "checkpoint.pt"
# what a checkpoint holds besides tensors and containers (all that `weights_only=True` unpickles)
_PLAIN = (str, bytes, int, float, complex, bool, type(None), torch.Size, torch.dtype, torch.device)
_NUMPY = "__numpy__"  # the tag of an encoded numpy array or scalar
_KEYS = ("epoch", "model", "extra", "optimizers", "sampler", "torch_rng", "np_rng", "history",
         "valid_hits", "valid_epochs", "best", "bad_evals")


def to_checkpoint(obj: Any, where: str = "checkpoint") -> Any:
    """`obj` in the form a checkpoint may hold: numpy arrays and scalars become tagged dicts around
    a uint8 tensor of their bytes (exact for every dtype, so resumed runs stay byte-identical);
    tensors, plain values and dict/list/tuple/set containers pass through. Anything else is a
    TypeError naming where it is: `weights_only=True` would refuse to load it back."""
    if isinstance(obj, (np.ndarray, np.generic)):  # first: np.float64 is also a float
        arr = np.asarray(obj)  # tobytes() below is C order whatever the strides
        if arr.dtype.hasobject:
            raise TypeError(f"{where}: a numpy array of Python objects cannot be checkpointed")
        data = torch.from_numpy(np.frombuffer(arr.tobytes(), dtype=np.uint8).copy())
        return {_NUMPY: "scalar" if isinstance(obj, np.generic) else "array",
                "dtype": arr.dtype.str, "shape": list(arr.shape), "data": data}
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN):
        return obj
    if type(obj) in (dict, OrderedDict):
        out = copy.copy(obj)  # an OrderedDict keeps its attributes (a state_dict's `_metadata`)
        for k, v in obj.items():
            out[k] = to_checkpoint(v, f"{where}[{k!r}]")
        return out
    if type(obj) in (list, tuple, set):
        return type(obj)(to_checkpoint(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be checkpointed "
                    f"(tensors, numpy arrays and dict/list/tuple of plain values only)")


def _why(exc: BaseException) -> str:
    """One short line on why a checkpoint was refused (torch's weights-only refusal is a page: keep
    the phrase that names what it refused, e.g. `Unsupported global: GLOBAL posix.system`)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "Weights only load failed" in text:
        found = re.search(r"(?:Unsupported|Trying to load unsupported)[^\n]*", text)
        detail = found.group(0).split(" was not an allowed")[0].split(" whose module")[0] if found else ""
        return "refused by weights_only" + (f": {detail[:160]}" if detail else "")
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__


def from_checkpoint(obj: Any) -> Any:
    """The inverse of `to_checkpoint`: tagged dicts back to numpy arrays (writable) and scalars."""
    if type(obj) in (dict, OrderedDict):
        if obj.get(_NUMPY) in ("array", "scalar"):
            arr = np.frombuffer(obj["data"].cpu().numpy().tobytes(), dtype=np.dtype(obj["dtype"]))
            arr = arr.reshape(tuple(obj["shape"])).copy()
            return arr[()] if obj[_NUMPY] == "scalar" else arr
        out = copy.copy(obj)
        for k, v in obj.items():
            out[k] = from_checkpoint(v)
        return out
    if type(obj) in (list, tuple, set):
        return type(obj)(from_checkpoint(v) for v in obj)
    return obj


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best_epoch: int
    valid: dict[str, float]
    test: EvalResult
    valid_item_hits: np.ndarray  # [n_validations, n_items] hits@20 on valid per validation epoch
    valid_item_counts: np.ndarray  # [n_items] valid users per item
    valid_epochs: list[int]
    timings: dict[str, Any]
    peak_memory_mb: float
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        from mmbench.errors import ConfigError

        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        from mmbench.errors import ConfigError

        raise ConfigError("--device cuda requested but CUDA is not available")
    return dev


def without_test(data: Dataset) -> Dataset:
    """The dataset as the training phase may see it: test labels removed (a new frozen Dataset)."""
    return data.without_test()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for this run: several runs share one process (`mmbench run --models a,b`).
    Linux resets the resident-set high-water mark on `5 > /proc/self/clear_refs`."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass  # elsewhere the process-wide peak (ru_maxrss) is reported
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory since `reset_peak_memory` (CPU), or peak CUDA allocation on GPU runs."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024.0
                    break
    except OSError:
        pass
    if device.type == "cuda":
        peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**20)
    return float(peak)


class Trainer:
    """Owns epochs, validation, early stopping and the single test pass for one run."""

    def __init__(self, model, data: Dataset, cfg, seed: int, device: torch.device,
                 run_dir: Path | None = None, progress: bool = True, desc: str = "",
                 on_validation=None):
        """`on_validation(epoch, valid_metrics)`, if given, is called after every validation (after
        the early-stopping bookkeeping); it may raise to end the run there, e.g. `optuna.TrialPruned`
        when a tuning trial is pruned (`mmbench.tune`)."""
        self.on_validation = on_validation
        self.model = model.to(device)
        self.full_data = data
        self.data = without_test(data)
        self.cfg = cfg
        self.seed = seed
        self.device = device
        self.run_dir = Path(run_dir) if run_dir else None
        self.progress = progress
        self.desc = desc or getattr(model, "name", "model")
        self.ks = tuple(cfg.eval_ks)
        self.hit_k = 20 if 20 in self.ks else max(self.ks)

    # ---- evaluation ---------------------------------------------------------------------------
    def _scorer(self):
        def score(users: torch.Tensor) -> torch.Tensor:
            return self.model.score(users.to(self.device))

        return score

    def _evaluate(self, data: Dataset, split: str, mask: str, keep_topk: bool = False) -> EvalResult:
        self.model.eval()
        with torch.no_grad():
            self.model.begin_scoring()
            try:
                return evaluate(self._scorer(), data, split=split, ks=self.ks, mask=mask,
                                chunk_size=self.cfg.eval_chunk_size, keep_topk=keep_topk)
            finally:
                self.model.end_scoring()

    def validate(self) -> EvalResult:
        return self._evaluate(self.data, "valid", "train")

    # ---- checkpoints --------------------------------------------------------------------------
    def _save(self, state: dict) -> None:
        if self.run_dir is None:
            return
        path = self.run_dir / CHECKPOINT
        state = to_checkpoint(state)
        try:
            atomic_write(path, lambda fh: torch.save(state, fh))
        except DiskFullError as exc:
            kept = "the last complete checkpoint is kept" if path.exists() else "no earlier checkpoint"
            raise DiskFullError(path, exc.reason, f"nothing half-written; {kept}") from exc

    def _load(self, n_optimizers: int) -> dict | None:
        """The checkpoint of this run folder, or None: none there, or an unusable one (moved aside)."""
        if self.run_dir is None or not (self.run_dir / CHECKPOINT).exists():
            return None
        try:
            safeio.require_regular(self.run_dir / CHECKPOINT, "checkpoint")  # a FIFO would hang torch.load
            state = torch.load(self.run_dir / CHECKPOINT, map_location=self.device, weights_only=True)
            self._check_checkpoint(state, n_optimizers)
            return from_checkpoint(state)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the run starts fresh
            self._set_aside(exc)
            return None

    def _check_checkpoint(self, state: Any, n_optimizers: int) -> None:
        """Refuse, before anything is restored, a checkpoint that does not fit this run's model."""
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a dict")
        missing = [k for k in _KEYS if k not in state]
        if missing:
            raise ValueError(f"lacks {', '.join(missing)}")
        ours = self.model.state_dict()
        theirs = state["model"]
        if not isinstance(theirs, dict) or set(theirs) != set(ours):
            raise ValueError("its parameters are not this model's")
        for k, v in ours.items():
            if not isinstance(theirs[k], torch.Tensor) or theirs[k].shape != v.shape:
                raise ValueError(f"parameter {k} has another shape")
        if not isinstance(state["optimizers"], list) or len(state["optimizers"]) != n_optimizers:
            raise ValueError("its optimisers are not this model's")

    def _set_aside(self, exc: BaseException) -> None:
        """Move an unusable checkpoint to `checkpoint.pt.bad-<UTC time>` and say so in one line."""
        path = self.run_dir / CHECKPOINT
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        bad, n = path.with_name(f"{CHECKPOINT}.bad-{stamp}"), 1
        while bad.exists():
            bad, n = path.with_name(f"{CHECKPOINT}.bad-{stamp}-{n}"), n + 1
        path.rename(bad)
        print(f"[warn] {path}: cannot be loaded ({_why(exc)}); moved aside to {bad.name}, starting fresh",
              file=sys.stderr)

    def _snapshot(self) -> dict:
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "extra": copy.deepcopy(self.model.extra_state()),
        }

    def _restore(self, snap: dict) -> None:
        self.model.load_state_dict(snap["model"])
        self.model.load_extra_state(snap["extra"])

    def _resume(self, resumed: dict, optimizers, sampler) -> None:
        """Parameters, extra state, optimisers, sampler and the global RNGs from a checkpoint."""
        self._restore({"model": resumed["model"], "extra": resumed["extra"]})
        for opt, st in zip(optimizers, resumed["optimizers"]):
            opt.load_state_dict(st)
        sampler.load_state_dict(resumed["sampler"])
        torch.set_rng_state(resumed["torch_rng"].cpu())  # loaded with map_location=device
        if resumed.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(resumed["cuda_rng"].cpu(), self.device)
        np.random.set_state(resumed["np_rng"])

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        t_start = time.perf_counter()
        reset_peak_memory(self.device)
        cfg = self.cfg
        seed_everything(self.seed)
        sampler = self.model.make_sampler(self.data.train, cfg.batch_size, self.seed)
        optimizers = self.model.configure_optimizers()
        history: list[dict[str, Any]] = []
        valid_hits: list[np.ndarray] = []
        valid_epochs: list[int] = []
        best = {"score": -np.inf, "epoch": 0, "state": self._snapshot(), "valid": {}}
        bad_evals = 0
        start_epoch = 1
        resumed = self._load(len(optimizers))
        if resumed is not None:
            try:
                self._resume(resumed, optimizers, sampler)
            except Exception as exc:  # noqa: BLE001 - fitted the checks but not the model: start fresh
                self._set_aside(exc)
                resumed = None
                self._restore(best["state"])
                seed_everything(self.seed)
                sampler = self.model.make_sampler(self.data.train, cfg.batch_size, self.seed)
                optimizers = self.model.configure_optimizers()
        if resumed is not None:
            history, valid_hits, valid_epochs = resumed["history"], resumed["valid_hits"], resumed["valid_epochs"]
            best, bad_evals, start_epoch = resumed["best"], resumed["bad_evals"], resumed["epoch"] + 1
        valid_counts = None
        last_save = time.perf_counter()
        stopped = start_epoch > cfg.epochs or (resumed is not None and resumed.get("stopped", False))
        bar = EpochProgress(self.progress, self.desc, cfg.epochs, initial=start_epoch - 1, run_dir=self.run_dir)
        epoch = start_epoch - 1
        for epoch in range(start_epoch, cfg.epochs + 1):
            if stopped:
                break
            t0 = time.perf_counter()
            self.model.train()
            self.model.on_epoch_start(epoch)
            sums: dict[str, float] = {}
            n_batches = 0
            for batch in sampler.epoch():
                losses = self.model.train_step(batch.to(self.device), optimizers)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_batches += 1
            self.model.on_epoch_end(epoch)
            losses_mean = {k: v / max(n_batches, 1) for k, v in sums.items()}
            if not np.isfinite(losses_mean.get("loss", 0.0)):
                raise FloatingPointError(f"{self.desc}: training loss is {losses_mean.get('loss')} at epoch {epoch}")
            t_train = time.perf_counter() - t0
            entry: dict[str, Any] = {"epoch": epoch, "losses": losses_mean, "train_seconds": t_train}
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                t1 = time.perf_counter()
                res = self.validate()
                entry["valid"] = res.mean
                entry["eval_seconds"] = time.perf_counter() - t1
                valid_hits.append(res.item_hits[self.hit_k].astype(np.int32))
                valid_epochs.append(epoch)
                score = res.mean[cfg.valid_metric]
                if score > best["score"]:
                    best = {"score": score, "epoch": epoch, "state": self._snapshot(), "valid": res.mean}
                    bad_evals = 0
                else:
                    bad_evals += 1
                    if bad_evals * cfg.eval_every >= cfg.patience and cfg.patience > 0:
                        stopped = True
                if self.on_validation is not None:
                    self.on_validation(epoch, dict(res.mean))
            history.append(entry)
            bar.epoch(epoch, losses_mean, t_train, entry.get("valid"), cfg.valid_metric, best["epoch"])
            now = time.perf_counter()
            if now - last_save >= cfg.checkpoint_every or stopped or epoch == cfg.epochs:
                self._save({
                    "epoch": epoch, "model": self.model.state_dict(), "extra": self.model.extra_state(),
                    "optimizers": [o.state_dict() for o in optimizers], "sampler": sampler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "np_rng": np.random.get_state(),
                    "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                    "history": history, "valid_hits": valid_hits, "valid_epochs": valid_epochs,
                    "best": best, "bad_evals": bad_evals, "stopped": stopped,
                })
                last_save = now
        bar.close()
        if not valid_epochs:  # resumed after everything was done, or epochs < eval_every
            res = self.validate()
            best = {"score": res.mean[cfg.valid_metric], "epoch": epoch, "state": self._snapshot(), "valid": res.mean}
        valid_counts = self.validate_counts()
        return self._finish(history, best, valid_hits, valid_counts, valid_epochs, t_start)

    def validate_counts(self) -> np.ndarray:
        valid = self.data.valid
        return np.bincount(valid.indices, minlength=self.data.n_items).astype(np.int64)

    def _finish(self, history, best, valid_hits, valid_counts, valid_epochs, t_start) -> TrainResult:
        self._restore(best["state"])
        t_test = time.perf_counter()
        test = self._evaluate(self.full_data, "test", self.cfg.mask, keep_topk=True)
        t_test = time.perf_counter() - t_test
        total = time.perf_counter() - t_start
        epoch_secs = [h["train_seconds"] for h in history]
        timings = {
            "train_seconds_per_epoch": float(np.mean(epoch_secs)) if epoch_secs else None,
            "eval_seconds_per_validation": float(np.mean([h["eval_seconds"] for h in history if "eval_seconds" in h]))
            if any("eval_seconds" in h for h in history) else None,
            "test_seconds": t_test,
            "total_seconds": total,
            "epochs_run": len(history),
        }
        hits = np.stack(valid_hits) if valid_hits else np.zeros((0, self.data.n_items), np.int32)
        return TrainResult(history, int(best["epoch"]), dict(best["valid"]), test, hits, valid_counts,
                           list(valid_epochs), timings, peak_memory_mb(self.device))
