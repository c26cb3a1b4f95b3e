"""`mmbench tune`: the same hyper-parameter search for every model, on VALIDATION metrics only.

One Optuna study per (model, dataset): a TPE sampler seeded per trial (trial n draws with
seed(--seed, n), so a study of 6 trials run in one go or as 4 + 2 is the same study, with one
worker), a successive-halving pruner whose first rung is the budget's patience (a trial is judged no
earlier than early stopping would judge it), and every model of an invocation gets the same number
of trials and the same epoch cap and patience: the budget's plain caps (`budget.tune_caps`), never the
heavy-model caps `run` uses.

Validation only, by construction: a trial trains on the dataset WITHOUT its test split, and its
trainer (`_ValidOnlyTrainer`) ends where `Trainer.fit` would evaluate test; the objective is the best
valid metric (`valid_metric`, default recall@20), the one early stopping selects on. Each trial is a
run record (`test` None) under `<results>/tuning/runs/…`, identified by its study and trial number
(`RunRecord.trial`); reports and `check` skip such records.

Resumable and shareable: the study lives in `<results>/tuning/studies.db` (SQLite) or any SQLAlchemy
URL (`--storage postgresql://…`, shared between machines). `--trials` counts the total of finished
(complete + pruned) trials, so a rerun with a larger number runs only the missing ones. A trial cut
short (a killed process) is not resumed: it is marked failed on the next run with a SQLite store,
and another trial takes its place.

The best configuration per (model, dataset) goes to `<results>/tuning/<dataset>.yaml` with its
provenance; `mmbench run --tuned` reads it through `load_tuned` (precedence: defaults < dataset
preset < tuned < budget < --config < --set).

A model's search space is declared next to its code, in `models/spaces/<model>.yaml`:

    space:
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}   # a float or int range (log or linear, optional step)
      n_layers: {low: 1, high: 4}
      feature_norm: {choices: [l2, zscore]}        # a categorical
    extends: mmssl        # optional: start from another model's space ...
    drop: [g_rate]        # ... without these keys

Every key must be a declared config key of the model, every bound and choice a valid value of it,
and the protocol's keys (epochs, patience, the metric, …) cannot be searched; a bad file is one
error naming it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mmbench import records, safeio
from mmbench.atomic import atomic_write
from mmbench.budget import CAPPED_KEYS, check_budget, tune_caps
from mmbench.config import NON_FUNCTIONAL_KEYS, Config, Param, declarations, load_config_file, parse_set_items
from mmbench.errors import ConfigError, MMBenchError

TUNING = "tuning"          # <results>/tuning/: studies, trial records, tuned configurations
STUDIES_DB = "studies.db"  # the default SQLite store
LOCKS = "locks"
SPACES = "spaces"          # models/spaces/<model>.yaml, shipped as package data of mmbench.models
TUNE_VERSION = 1           # part of every study's identity: a change of method starts new studies
REDUCTION_FACTOR = 3       # successive halving keeps the best third at each rung (Hyperband's η)
# Keys that define the protocol or the budget, never searched.
PROTOCOL_KEYS = CAPPED_KEYS + ("eval_every", "eval_ks", "mask", "valid_metric", "modalities",
                               "eval_chunk_size", "checkpoint_every")


class SpaceError(ConfigError):
    """A search-space file that cannot be used (the message names the file)."""


# --------------------------------------------------------------------------- search spaces
@dataclass(frozen=True)
class Dim:
    """One searched key: a float/int range (`log`, `step`) or a categorical (`choices`)."""

    name: str
    kind: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Is `value` a point of this dimension (used to check the authors' values are inside)?"""
        if self.kind == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def as_dict(self) -> dict[str, Any]:
        out = {"choices": list(self.choices)} if self.kind == "categorical" else {
            "type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class Space:
    model: str
    dims: tuple[Dim, ...]
    source: str  # the file it came from (messages, provenance)

    @property
    def keys(self) -> list[str]:
        return [d.name for d in self.dims]

    def without(self, keys) -> "Space":
        return dataclasses.replace(self, dims=tuple(d for d in self.dims if d.name not in set(keys)))

    def as_dict(self) -> dict[str, Any]:
        return {d.name: d.as_dict() for d in self.dims}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:10]


def space_file(model: str) -> Path:
    """Where `model`'s space is declared: models/spaces/<model>.yaml (package data)."""
    return Path(str(resources.files("mmbench.models").joinpath(SPACES, f"{model}.yaml")))


@lru_cache(maxsize=None)
def load_space(model: str) -> Space:
    """`model`'s validated search space; any problem is a SpaceError naming the file."""
    return _load_space(model, ())


def _load_space(model: str, chain: tuple[str, ...]) -> Space:
    from mmbench.models.base import get_model_class

    cls = get_model_class(model)
    path = space_file(model)
    where = f"search space {path}"
    if model in chain:
        raise SpaceError(f"{where}: `extends` loops ({' -> '.join(chain + (model,))})")
    if not path.is_file():
        raise SpaceError(f"model {model!r} has no search space: add {path} (see mmbench/tune.py)")
    raw = safeio.load_yaml(path, "config", SpaceError, label=where)
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: expected a mapping with `space` (and optionally `extends`, `drop`)")
    unknown = sorted(map(str, set(raw) - {"space", "extends", "drop"}))
    if unknown:
        raise SpaceError(f"{where}: unknown top-level key {unknown[0]!r} (use space, extends, drop)")
    params = declarations(cls.defaults)
    dims: dict[str, Dim] = {}
    if raw.get("extends") is not None:
        parent = raw["extends"]
        if not isinstance(parent, str):
            raise SpaceError(f"{where}: `extends` must name a model")
        try:
            base = _load_space(parent, chain + (model,))
        except SpaceError:
            raise
        except ConfigError as exc:
            raise SpaceError(f"{where}: extends {parent!r}: {exc}") from None
        for d in base.dims:
            if d.name not in params:
                raise SpaceError(f"{where}: {d.name!r} (from {parent!r}) is not a config key of {model!r}")
            dims[d.name] = d
    drop = raw.get("drop") or []
    if not isinstance(drop, list) or not all(isinstance(k, str) for k in drop):
        raise SpaceError(f"{where}: `drop` must be a list of keys")
    for key in drop:
        if key not in dims:
            raise SpaceError(f"{where}: drop {key!r}: not in the space it extends")
        del dims[key]
    body = raw.get("space") or {}
    if not isinstance(body, dict):
        raise SpaceError(f"{where}: `space` must map config keys to ranges or choices")
    for key, spec in body.items():
        dims[str(key)] = _dim(str(key), spec, params, model, where)
    from mmbench.models.base import get_model_class

    if not dims and not get_model_class(model).fits_once:  # only a closed-form floor may have nothing
        raise SpaceError(f"{where}: the space is empty")
    return Space(model, tuple(dims.values()), str(path))


def has_nothing_to_tune(model: str) -> bool:
    """A model fitted in closed form whose space file declares no parameter (MostPop)."""
    return not load_space(model).dims


def searchable_space(model: str) -> Space:
    """`model`'s space, or one error line when it has nothing to search."""
    space = load_space(model)
    if not space.dims:
        raise ConfigError(f"model {model!r} has no hyper-parameters (models/spaces/{model}.yaml): nothing to "
                          "tune; `mmbench run` evaluates it")
    return space


def _dim(key: str, spec: Any, params: dict[str, Param], model: str, where: str) -> Dim:
    """One entry of a space file, checked against the key's declaration."""
    at = f"{where}: {key}"
    if key not in params:
        raise SpaceError(f"{where}: {safeio.shown(key)} is not a config key of model {model!r}")
    if key in PROTOCOL_KEYS:
        raise SpaceError(f"{at}: part of the protocol or the budget, never searched")
    if not isinstance(spec, dict):
        raise SpaceError(f"{at}: expected {{low: .., high: ..}} or {{choices: [..]}}")
    param = params[key]
    extra = sorted(map(str, set(spec) - {"low", "high", "log", "step", "choices"}))
    if extra:
        raise SpaceError(f"{at}: unknown field {extra[0]!r} (low, high, log, step or choices)")

    def valid(value: Any) -> Any:
        try:
            typed = param.coerce(value, at, key)
            param.validate(typed, at, key)
        except ConfigError as exc:
            raise SpaceError(str(exc)) from None
        return typed

    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise SpaceError(f"{at}: `choices` goes alone (no low/high/log/step)")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{at}: `choices` must be a non-empty list")
        typed = [valid(c) for c in choices]
        if any(not (v is None or isinstance(v, (bool, int, float, str))) for v in typed):
            raise SpaceError(f"{at}: choices must be scalars")
        if len(set(map(repr, typed))) != len(typed):
            raise SpaceError(f"{at}: a choice is listed twice")
        return Dim(key, "categorical", choices=tuple(typed))
    if "low" not in spec or "high" not in spec:
        raise SpaceError(f"{at}: a range needs `low` and `high` (or give `choices`)")
    if param.type not in (int, float):
        raise SpaceError(f"{at}: a {param.type_name()} key takes `choices`, not a range")
    low, high = valid(spec["low"]), valid(spec["high"])
    if not low < high:
        raise SpaceError(f"{at}: low {low!r} must be below high {high!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{at}: `log` must be true or false")
    step = spec.get("step")
    if step is not None:
        if log:
            raise SpaceError(f"{at}: `step` and `log: true` exclude each other")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0 or (
                param.type is int and not float(step).is_integer()):
            raise SpaceError(f"{at}: `step` must be a positive {'integer' if param.type is int else 'number'}")
        step = int(step) if param.type is int else float(step)
    if log and not low > 0:
        raise SpaceError(f"{at}: a log range needs low > 0")
    return Dim(key, "int" if param.type is int else "float", low, high, log, step)


def check_every_model_has_a_space() -> list[str]:
    """The registered models without a valid space (each as its one-line error)."""
    from mmbench.models.base import registry

    problems = []
    for name in registry():
        try:
            load_space(name)
        except MMBenchError as exc:
            problems.append(str(exc))
    return problems


# --------------------------------------------------------------------------- configs
def pinned_keys(model: str, config_file: str | None, set_items: list[str] | None) -> set[str]:
    """Keys `--config`/`--set` fix for `model` (they sit above a trial's values, so they are not
    searched): flat keys of the file, its section for this model, and every --set key."""
    from mmbench.models.base import registry

    file_cfg = load_config_file(config_file)
    keys = {k for k, v in file_cfg.items() if not (k in registry() and isinstance(v, dict))}
    if isinstance(file_cfg.get(model), dict):
        keys |= set(file_cfg[model])
    return keys | set(parse_set_items(set_items or []))


def trial_config(model: str, dataset: str, budget: str, params: dict[str, Any], source: str,
                 config_file: str | None = None, set_items: list[str] | None = None) -> Config:
    """A trial's config: defaults < dataset preset < the trial's values < the budget's plain caps
    < --config < --set (one resolution path with `run`: `runner.model_config`)."""
    from mmbench.models.base import get_model_class
    from mmbench.runner import model_config

    caps = tune_caps(budget, get_model_class(model).fits_once)
    return model_config(model, dataset, budget, config_file, set_items,
                        tuned={model: {"params": params, "source": source}}, caps=caps)


# --------------------------------------------------------------------------- storage and studies
def tuning_dir(results: str | Path) -> Path:
    return Path(results) / TUNING


def default_storage(results: str | Path) -> str:
    return f"sqlite:///{tuning_dir(results) / STUDIES_DB}"


def shown_url(url: str) -> str:
    """The storage URL without its password (it goes into files and logs)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: check_storage says so
        return safeio.clip(url)


def check_storage(url: str) -> str:
    """A SQLAlchemy URL Optuna can open (the driver is checked when it is opened)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError(f"--storage {safeio.shown(url)}: not a SQLAlchemy database URL "
                          f"(e.g. sqlite:///path/studies.db or postgresql://user@host/db)") from None
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def absolute_sqlite(url: str) -> str:
    """A SQLite URL with its file's path made absolute (unchanged for in-memory databases)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.database or parsed.database == ":memory:" or Path(parsed.database).is_absolute():
        return url
    return parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(hide_password=False)


def open_storage(url: str):
    """Optuna's RDB storage for `url` (SQLite: the folder is made, waits up to a minute on a lock)."""
    import optuna
    from sqlalchemy.engine import make_url

    kwargs: dict[str, Any] = {}
    if is_sqlite(url):
        db = make_url(url).database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except ImportError as exc:
        raise ConfigError(f"--storage {shown_url(url)}: the database driver is not installed ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - unreachable server, bad credentials, …: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"--storage {shown_url(url)}: cannot open it ({safeio.clip(first, 160)})") from None


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number`: a function of the study's seed and the number only, so
    an interrupted or extended study draws exactly what an uninterrupted one would."""
    digest = hashlib.sha256(f"mmbench-tune:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def make_pruner(budget: str):
    """Successive halving from the budget's patience, keeping the best third per rung."""
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, tune_caps(budget)["patience"]),
                                                  reduction_factor=REDUCTION_FACTOR)


@dataclass
class StudyPlan:
    """Everything that identifies one study, resolved before any data-dependent work."""

    model: str
    space: Space
    pinned: list[str]
    base: Config
    budget: str
    seed: int
    threads: int
    device: str
    fingerprint: str  # of the data the model sees (its modalities)

    def identity(self) -> dict[str, Any]:
        searched = set(self.space.keys)
        base = {k: v for k, v in sorted(self.base.items()) if k not in searched and k not in NON_FUNCTIONAL_KEYS}
        return {"version": TUNE_VERSION, "model": self.model, "data": self.fingerprint, "budget": self.budget,
                "base": base, "space": self.space.as_dict(), "seed": self.seed, "threads": self.threads,
                "device": self.device, "sampler": "tpe", "pruner": {
                    "name": "successive-halving", "min_resource": max(1, tune_caps(self.budget)["patience"]),
                    "reduction_factor": REDUCTION_FACTOR}}

    def key(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def study_name(self, dataset: str) -> str:
        return f"{self.model}.{records.dataset_folder(dataset, self.fingerprint)}.{self.budget}.{self.key()}"


# --------------------------------------------------------------------------- one trial
def _trainer_class():
    """The shared Trainer ending where `fit` would evaluate test (built lazily: torch-heavy imports)."""
    from mmbench.train.trainer import Trainer, TrainResult, peak_memory_mb

    class ValidOnlyTrainer(Trainer):
        """The shared training loop (epochs, validation, early stopping, all unchanged) whose
        finish returns the best valid state's metrics without evaluating the test split."""

        def _finish(self, history, best, valid_hits, valid_counts, valid_epochs, t_start) -> TrainResult:
            total = time.perf_counter() - t_start
            epoch_secs = [h["train_seconds"] for h in history]
            evals = [h["eval_seconds"] for h in history if "eval_seconds" in h]
            timings = {"train_seconds_per_epoch": float(np.mean(epoch_secs)) if epoch_secs else None,
                       "eval_seconds_per_validation": float(np.mean(evals)) if evals else None,
                       "test_seconds": None, "total_seconds": total, "epochs_run": len(history)}
            hits = np.stack(valid_hits) if valid_hits else np.zeros((0, self.data.n_items), np.int32)
            return TrainResult(history, int(best["epoch"]), dict(best["valid"]), None, hits, valid_counts,
                               list(valid_epochs), timings, peak_memory_mb(self.device))

    return ValidOnlyTrainer


@dataclass
class TrialOutcome:
    number: int
    state: str  # complete | pruned | failed
    params: dict[str, Any]
    value: float | None = None
    epochs: int = 0
    best_epoch: int = 0
    seconds: float = 0.0
    error: str | None = None
    folder: Path | None = None


def ask_trial(study, plan: StudyPlan):
    """The study's next trial and its parameters, drawn by a TPE sampler seeded by the trial's
    number (with one worker, the number is the count of trials so far)."""
    import optuna

    number_guess = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=trial_seed(plan.seed, number_guess))
    trial = study.ask()
    return trial, {d.name: d.suggest(trial) for d in plan.space.dims}


def run_trial(study, plan: StudyPlan, data, dataset_name: str, results: Path, device, study_name: str,
              storage_text: str, config_file: str | None, set_items: list[str] | None) -> TrialOutcome:
    """Ask the study for a trial, train it on valid only (reporting each validation to the pruner),
    tell the study the outcome, and write the trial's run record."""
    trial, params = ask_trial(study, plan)
    return train_trial(study, trial, params, plan, data, dataset_name, results, device, study_name, storage_text,
                       config_file, set_items)


def train_trial(study, trial, params: dict[str, Any], plan: StudyPlan, data, dataset_name: str, results: Path,
                device, study_name: str, storage_text: str, config_file: str | None,
                set_items: list[str] | None) -> TrialOutcome:
    """Train an asked trial with `params` (in this process, or on a Dask worker: `execute_trial`)."""
    import optuna
    from optuna.trial import TrialState

    from mmbench.models.base import get_model_class
    from mmbench.runner import check_model_fits_data
    from mmbench.train.determinism import deterministic_device, seed_everything, set_threads

    t0 = time.perf_counter()
    metric = plan.base.valid_metric
    seen: list[tuple[int, dict[str, float]]] = []
    best = {"value": -math.inf, "epoch": 0, "metrics": {}}

    def on_validation(epoch: int, valid: dict[str, float]) -> None:
        seen.append((epoch, valid))
        if valid[metric] > best["value"]:
            best.update(value=valid[metric], epoch=epoch, metrics=valid)
        trial.report(best["value"], step=epoch)  # best so far: what early stopping would keep
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    outcome = TrialOutcome(trial.number, "failed", params)
    result = None
    try:
        cfg = trial_config(plan.model, dataset_name, plan.budget, params,
                           f"trial {trial.number} of study {study_name}", config_file, set_items)
        set_threads(plan.threads)
        deterministic_device(device)
        view = check_model_fits_data(plan.model, cfg, data)
        blind = view.without_test()  # the trial never holds the test labels at all
        seed_everything(plan.seed)
        model = get_model_class(plan.model)(blind.train_view(), cfg)
        trainer = _trainer_class()(model, blind, cfg, plan.seed, device, run_dir=None, progress=False,
                                   desc=f"{plan.model}/{dataset_name}/trial{trial.number}",
                                   on_validation=on_validation)
        result = trainer.fit()
    except optuna.TrialPruned:
        outcome.state = "pruned"
        study.tell(trial.number, state=TrialState.PRUNED)
    except MMBenchError:
        study.tell(trial.number, state=TrialState.FAIL)
        raise
    except Exception as exc:  # noqa: BLE001 - a diverging or crashing trial must not end the study
        outcome.error = f"{type(exc).__name__}: {safeio.clip(str(exc), 200)}"
        study.tell(trial.number, state=TrialState.FAIL)
    else:
        outcome.state = "complete"
        study.tell(trial.number, float(result.valid[metric]))
    outcome.seconds = time.perf_counter() - t0
    if outcome.state == "failed":
        return outcome
    if result is not None:
        outcome.value, outcome.best_epoch, outcome.epochs = float(result.valid[metric]), result.best_epoch, len(result.history)
    else:
        outcome.value, outcome.best_epoch = float(best["value"]), int(best["epoch"])
        outcome.epochs = seen[-1][0] if seen else 0
    outcome.folder = _write_trial_record(plan, cfg, data, view, dataset_name, results, device, study_name,
                                         storage_text, outcome, result, seen, best)
    return outcome


def execute_trial(payload: dict[str, Any]) -> TrialOutcome:
    """One asked trial on a Dask worker: load the data (refused if its fingerprint is not the
    client's), open the study from the shared storage, train, report, tell, write the record."""
    import optuna
    import torch

    from mmbench.grid import worker_dataset

    plan: StudyPlan = payload["plan"]
    try:
        data = worker_dataset(payload["dataset"], payload["data_dir"], payload["fingerprint"])
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=payload["study"], storage=open_storage(payload["storage"]),
                                  pruner=make_pruner(plan.budget))
        trial = optuna.trial.Trial(study, payload["trial_id"])
        return train_trial(study, trial, payload["params"], plan, data, data.name, Path(payload["results"]),
                           torch.device(payload["device"]), payload["study"], payload["shown"],
                           payload["config_file"], payload["set_items"])
    except Exception as exc:  # noqa: BLE001 - the trial fails, the study goes on (the client tells it)
        return TrialOutcome(payload["number"], "failed", payload["params"],
                            error=f"{type(exc).__name__}: {safeio.clip(str(exc), 200)}")


def _write_trial_record(plan: StudyPlan, cfg: Config, data, view, dataset_name: str, results: Path, device,
                        study_name: str, storage_text: str, outcome: TrialOutcome, result, seen, best) -> Path:
    """The trial as a run record (validation only, `test` None) under <results>/tuning/runs/…."""
    from mmbench.eval.metrics import NDCG, NDCG_LEGACY

    run_id = f"{plan.key()}-trial{outcome.number:04d}"
    folder = records.run_dir(tuning_dir(results), dataset_name, plan.model, run_id, view.fingerprint)
    if result is not None:
        history, valid, timings = result.history, dict(result.valid), result.timings
        peak = float(result.peak_memory_mb)
        arrays = {"valid_item_hits": result.valid_item_hits, "valid_item_counts": result.valid_item_counts,
                  "valid_epochs": np.asarray(result.valid_epochs, dtype=np.int64)}
    else:  # pruned: the loop ended inside fit, so what is known is what the hook saw
        history = [{"epoch": e, "valid": m} for e, m in seen]
        valid = dict(best["metrics"])
        timings = {"total_seconds": outcome.seconds, "epochs_run": outcome.epochs, "test_seconds": None}
        peak = 0.0
        arrays = {"valid_epochs": np.asarray([e for e, _ in seen], dtype=np.int64)}
    arrays["train_user_degree"] = np.diff(data.train.indptr).astype(np.int64)
    rec = records.RunRecord(
        model=plan.model,
        dataset=records.DatasetRef(name=dataset_name, fingerprint=view.fingerprint,
                                   checksums=dict(data.checksums), statistics=data.statistics(),
                                   modalities=list(view.modalities)),
        config=dict(cfg), config_hash=cfg.hash(), seed=int(plan.seed), budget=plan.budget,
        threads=int(plan.threads), device=device.type, run_id=run_id,
        protocol={"mask": cfg.mask, "ks": list(cfg.eval_ks), "ndcg_variants": [NDCG, NDCG_LEGACY],
                  "valid_metric": cfg.valid_metric, "valid_mask": "train", "tie_break": "lower item id",
                  "evaluated_users": "non-empty split list"},
        env=dict(records.environment(), device=str(device)), history=history,
        best_epoch=int(outcome.best_epoch), valid=valid, test=None, n_test_users=0, timings=timings,
        peak_memory_mb=peak, created=records.now_iso(),
        trial={"study": study_name, "number": outcome.number, "state": outcome.state,
               "params": dict(outcome.params), "value": outcome.value, "storage": storage_text},
    )
    records.write_record(folder, rec, arrays)
    return folder


# --------------------------------------------------------------------------- one study
@dataclass
class ModelOutcome:
    model: str
    study: str
    status: str  # done | busy | failed (a trial failed) | none (no complete trial)
    trials: list[TrialOutcome] = field(default_factory=list)
    done_before: int = 0
    complete: int = 0
    pruned: int = 0
    best: dict[str, Any] | None = None  # {number, value, params}
    seconds: float = 0.0


def plan_study(model: str, data, budget: str, seed: int, threads: int, device,
               config_file: str | None, set_items: list[str] | None) -> StudyPlan:
    """Space (minus pinned keys), base config and identity of `model`'s study on `data`."""
    from mmbench.runner import check_model_fits_data

    space = searchable_space(model)
    pinned = sorted(pinned_keys(model, config_file, set_items) & set(space.keys))
    space = space.without(pinned)
    if not space.dims:
        raise ConfigError(f"model {model!r}: --config/--set fix every key of its search space "
                          f"({', '.join(pinned)}); nothing left to tune")
    base = trial_config(model, data.name, budget, {}, "tuned configuration", config_file, set_items)
    view = check_model_fits_data(model, base, data)
    return StudyPlan(model, space, pinned, base, budget, int(seed), int(threads), device.type, view.fingerprint)


def _count(study) -> tuple[int, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return (sum(t.state == TrialState.COMPLETE for t in trials), sum(t.state == TrialState.PRUNED for t in trials))


def _fail_interrupted(study, storage) -> int:
    """Trials left RUNNING by a process that died (only called while this process holds the study's
    lock and the store is SQLite, i.e. no live worker elsewhere): marked failed, so they never count."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    return len(stale)


def tune_model(model: str, data, n_trials: int, budget: str, results: Path, device, storage_url: str,
               seed: int = 2024, threads: int = 1, config_file: str | None = None,
               set_items: list[str] | None = None, log=print, dask: "DaskTrials | None" = None) -> ModelOutcome:
    """Run `model`'s study on `data` until it holds `n_trials` finished (complete + pruned) trials,
    then write its best configuration to <results>/tuning/<dataset>.yaml. With `dask`, the trials
    run on its cluster's workers, as many at once as it has worker threads."""
    import optuna
    from filelock import FileLock, Timeout

    t0 = time.perf_counter()
    plan = plan_study(model, data, budget, seed, threads, device, config_file, set_items)
    name = plan.study_name(data.name)
    shown = shown_url(storage_url)
    lock_path = tuning_dir(results) / LOCKS / f"{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"[busy] {model}: study {name} is being tuned by another process ({lock_path})")
        return ModelOutcome(model, name, "busy")
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(storage_url)
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=seed), pruner=make_pruner(budget),
                                    load_if_exists=True)
        if not study.user_attrs:
            for k, v in (("model", model), ("dataset", data.name), ("fingerprint", plan.fingerprint),
                         ("budget", budget), ("space", plan.space.as_dict()), ("seed", plan.seed)):
                study.set_user_attr(k, v)
        if is_sqlite(storage_url):
            stale = _fail_interrupted(study, storage)
            if stale:
                log(f"[tune] {model}: {stale} trial(s) cut short by an earlier process marked failed")
        complete, pruned = _count(study)
        out = ModelOutcome(model, name, "done", done_before=complete + pruned)
        missing = max(0, n_trials - out.done_before)
        pinned = f"; pinned by --config/--set: {', '.join(plan.pinned)}" if plan.pinned else ""
        log(f"[tune] {model} on {data.name}: study {name} ({shown}); {n_trials} trials wanted, "
            f"{out.done_before} done, running {missing}; searching {', '.join(plan.space.keys)}{pinned}")
        if dask is None:
            for _ in range(missing):
                t = run_trial(study, plan, data, data.name, Path(results), device, name, shown, config_file,
                              set_items)
                out.trials.append(t)
                log(_trial_line(model, t, plan.base.valid_metric))
        else:
            _trials_on_dask(dask, study, plan, missing, data, Path(results), device, name, storage_url, shown,
                            config_file, set_items, out, log)
        out.complete, out.pruned = _count(study)
        if any(t.state == "failed" for t in out.trials):
            out.status = "failed"
        if out.complete:
            bt = study.best_trial
            out.best = {"number": bt.number, "value": float(bt.value), "params": dict(bt.params)}
            path = write_tuned_entry(results, data, budget, model, plan, name, shown, out, log)
            log(f"[best] {model}: trial {bt.number}, valid {plan.base.valid_metric} {bt.value:.4f}: "
                f"{_params_text(bt.params)} -> {path}")
        elif out.status == "done":
            out.status = "none"
        out.seconds = time.perf_counter() - t0
        return out
    finally:
        lock.release()


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _trial_line(model: str, t: TrialOutcome, metric: str) -> str:
    if t.state == "failed":
        return f"[fail] {model} trial {t.number}: {_params_text(t.params)}: {t.error}"
    what = (f"best epoch {t.best_epoch} of {t.epochs}" if t.state == "complete"
            else f"pruned after epoch {t.epochs}")
    return (f"[{'trial' if t.state == 'complete' else 'pruned'}] {model} trial {t.number}: {_params_text(t.params)}"
            f" -> valid {metric} {t.value:.4f} ({what}, {t.seconds:.1f} s)")


@dataclass
class DaskTrials:
    """Where trials go when they run on Dask: a connected client, and how workers find the data
    (by name or path from their own data directory; refused if the fingerprint differs)."""

    client: Any
    dataset: str
    data_dir: str | None


def _trials_on_dask(dask: DaskTrials, study, plan: StudyPlan, missing: int, data, results: Path, device,
                    name: str, storage_url: str, shown: str, config_file, set_items, out: ModelOutcome,
                    log) -> None:
    """Keep as many trials in flight as the cluster has worker threads: the client asks the study
    for each trial (so the sampler runs in one place), a worker trains, reports and tells it."""
    from distributed import as_completed

    from mmbench.grid import worker_slots

    def submit():
        trial, params = ask_trial(study, plan)
        payload = {"plan": plan, "study": name, "trial_id": trial._trial_id, "number": trial.number,
                   "params": params, "dataset": dask.dataset, "data_dir": dask.data_dir,
                   "fingerprint": data.fingerprint, "storage": storage_url, "shown": shown,
                   "results": str(results.resolve()), "device": str(device), "config_file": config_file,
                   "set_items": list(set_items or [])}
        future = dask.client.submit(execute_trial, payload, key=f"mmbench-trial-{name}-{trial.number}", pure=False)
        return future, trial

    left = missing
    in_flight: dict[Any, Any] = {}
    while left and len(in_flight) < max(1, worker_slots(dask.client)):
        future, trial = submit()
        in_flight[future] = trial
        left -= 1
    if not in_flight:
        return
    pending = as_completed(list(in_flight), loop=dask.client.loop)  # our client is not Dask's default
    for future in pending:
        trial = in_flight.pop(future)
        try:
            t = future.result()
        except Exception as exc:  # noqa: BLE001 - a worker that died: the trial failed, the study goes on
            t = TrialOutcome(trial.number, "failed", dict(trial.params),
                             error=f"{type(exc).__name__}: {safeio.clip(str(exc), 200)}")
        if t.state == "failed":
            _fail_if_running(study, trial)
        out.trials.append(t)
        log(_trial_line(plan.model, t, plan.base.valid_metric))
        if left:
            nxt, ntrial = submit()
            in_flight[nxt] = ntrial
            pending.add(nxt)
            left -= 1


def _fail_if_running(study, trial) -> None:
    """A trial whose worker could not tell the study (lost worker, unreadable data) is marked failed."""
    from optuna.trial import TrialState

    try:
        if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
    except Exception:  # noqa: BLE001 - already finished by its worker
        pass


def tune(models: list[str], data, n_trials: int, budget: str, results: str | Path, device,
         storage: str | None = None, seed: int = 2024, threads: int = 1, config_file: str | None = None,
         set_items: list[str] | None = None, log=None, *, workers: int = 1, scheduler: str | None = None,
         dataset_spec: str | None = None, data_dir: str | None = None) -> list[ModelOutcome]:
    """One study per model on `data`, one after another, the same trials and caps for each. With
    `workers` > 1 (a local Dask cluster of one-thread processes) or `scheduler`, each study's trials
    run side by side on the workers; the storage must then be reachable from every worker."""
    check_budget(budget)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    url = check_storage(storage) if storage else default_storage(results)
    if workers <= 1 and scheduler is None:
        return [tune_model(m, data, n_trials, budget, Path(results), device, url, seed, threads, config_file,
                           set_items, log) for m in models]
    from mmbench.grid import connect

    if is_sqlite(url):
        url = absolute_sqlite(url)  # workers resolve paths from their own working directory
        open_storage(url)  # the database file exists before several workers open it at once
    with connect(workers if scheduler is None else None, scheduler) as (client, _cluster):
        dask = DaskTrials(client, dataset_spec or data.name, data_dir)
        return [tune_model(m, data, n_trials, budget, Path(results), device, url, seed, threads, config_file,
                           set_items, log, dask) for m in models]


def summary_table(outcomes: list[ModelOutcome], metric: str) -> str:
    header = ["model", "trials", "complete", "pruned", "new", f"best valid {metric}", "best trial", "seconds", "status"]
    rows = [[o.model, str(o.complete + o.pruned), str(o.complete), str(o.pruned), str(len(o.trials)),
             f"{o.best['value']:.4f}" if o.best else "–", str(o.best["number"]) if o.best else "–",
             f"{o.seconds:.1f}", o.status] for o in outcomes]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda r: "  ".join(c.ljust(w) if i in (0, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


# --------------------------------------------------------------------------- tuned configurations
TUNED_HEADER = ("# Best configurations found by `mmbench tune`, selected on VALIDATION metrics only (no trial\n"
                "# computed a test metric). Read by `mmbench run --tuned` under the same --budget; written by\n"
                "# mmbench (atomically), not by hand.\n")


def tuned_path(results: str | Path, dataset: str) -> Path:
    return tuning_dir(results) / f"{dataset}.yaml"


def _read_tuned(path: Path) -> dict | None:
    """The tuned file as written, or None when absent; malformed is a ConfigError naming it."""
    if not path.exists():
        return None
    raw = safeio.load_yaml(path, "config", ConfigError, label=f"tuned configurations {path}")
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict) or not isinstance(raw.get("budget"), str):
        raise ConfigError(f"tuned configurations {path}: expected `dataset`, `fingerprint`, `budget` and a "
                          f"`models` mapping (written by `mmbench tune`)")
    return raw


def write_tuned_entry(results: str | Path, data, budget: str, model: str, plan: StudyPlan, study: str,
                      storage_text: str, out: ModelOutcome, log=print) -> Path:
    """Add or replace `model`'s entry of <results>/tuning/<dataset>.yaml, under a lock and atomically.
    A file made under another budget or for other data is replaced as a whole (said in one line)."""
    import yaml
    from filelock import FileLock

    path = tuned_path(results, data.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            current = _read_tuned(path)
        except ConfigError as exc:
            log(f"[tuned] {exc}: replaced")
            current = None
        if current is not None and (current.get("budget") != budget or current.get("fingerprint") != data.fingerprint):
            log(f"[tuned] {path} held configurations tuned under budget {current.get('budget')} "
                f"(data {str(current.get('fingerprint'))[:12]}); replaced by this {budget} tuning")
            current = None
        doc = current or {"dataset": data.name, "fingerprint": data.fingerprint, "budget": budget, "models": {}}
        caps = tune_caps(budget)
        doc["models"][model] = {
            "params": out.best["params"],
            "study": study, "storage": storage_text,
            "trials": out.complete + out.pruned, "complete": out.complete, "pruned": out.pruned,
            "best_trial": out.best["number"], "valid_metric": plan.base.valid_metric,
            "best_valid": round(out.best["value"], 6), "budget": budget,
            "epochs": caps["epochs"], "patience": caps["patience"], "seed": plan.seed,
            "threads": plan.threads, "device": plan.device, "space": plan.space.digest(),
            "space_file": f"models/{SPACES}/{model}.yaml", "pinned": list(plan.pinned),
            "written": records.now_iso(),
        }
        doc["models"] = dict(sorted(doc["models"].items()))
        text = TUNED_HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
        atomic_write(path, text.encode("utf-8"))
    return path


def load_tuned(results: str | Path, dataset: str, budget: str, fingerprint: str | None = None) -> dict:
    """{model: {"params", "provenance", "source"}} of <results>/tuning/<dataset>.yaml, for
    `runner.model_config(..., tuned=)` and `RunRecord.tuned` (`tuned_provenance`). A missing or
    malformed file, one made under another budget (or, given `fingerprint`, for other data), or a
    value its model no longer accepts is a ConfigError naming the file."""
    from mmbench.models.base import registry
    from mmbench.runner import model_config

    check_budget(budget)
    path = tuned_path(results, dataset)
    raw = _read_tuned(path)
    if raw is None:
        raise ConfigError(f"--tuned: no tuned configurations for {dataset!r} ({path} does not exist); "
                          f"run `mmbench tune --dataset {dataset} --budget {budget} --results {results}` first")
    if raw["budget"] != budget:
        raise ConfigError(f"--tuned: {path} was tuned under budget {raw['budget']!r}, not {budget!r}; run with "
                          f"--budget {raw['budget']} or tune again with --budget {budget}")
    if fingerprint is not None and raw.get("fingerprint") != fingerprint:
        raise ConfigError(f"--tuned: {path} was tuned on other data named {dataset!r} (fingerprint "
                          f"{str(raw.get('fingerprint'))[:12]}, this data {fingerprint[:12]})")
    out = {}
    for model, entry in raw["models"].items():
        where = f"tuned configurations {path}: {model}"
        if model not in registry():
            raise ConfigError(f"{where}: not a registered model")
        if not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
            raise ConfigError(f"{where}: expected `params` and its provenance")
        source = f"tuned configuration {path} ({model})"
        item = {"params": dict(entry["params"]), "source": source,
                "provenance": {"file": str(path), "dataset": raw.get("dataset", dataset),
                               "fingerprint": raw.get("fingerprint"), **entry,
                               "params": dict(entry["params"])}}
        model_config(model, dataset, budget, tuned={model: item})  # every value still valid for the model
        out[model] = item
    return out


def check_tuned_data(tuned: dict | None, data) -> None:
    """After loading the data: the tuned file was made on this very data (same fingerprint)."""
    for item in (tuned or {}).values():  # one file, one fingerprint: the first entry says it
        fp = item["provenance"].get("fingerprint")
        if fp != data.fingerprint:
            raise ConfigError(f"--tuned: {item['provenance']['file']} was tuned on other data named "
                              f"{data.name!r} (fingerprint {str(fp)[:12]}, this data {data.fingerprint[:12]})")
        break


def tuned_provenance(tuned: dict | None, model: str) -> dict | None:
    """What `RunRecord.tuned` holds for `model`: the provenance of its tuned config (the same as
    `tuned[model]["provenance"]`), or None when it runs on its defaults."""
    item = (tuned or {}).get(model)
    return dict(item["provenance"]) if item else None
