"""Run records: the typed `RunRecord` (one `record.json`) plus `arrays.npz` beside it, enough to
recompute every statistic and report offline.

This module is the only way runner, reports and check read or write records: the keys of
`record.json` are spelled out here and nowhere else. A record names the sha256 of its
`arrays.npz`, so an arrays file that does not belong to its record is an error, not a silent mix-up.

Layout: `<results>/runs/<dataset name>-<fingerprint[:8]>/<model>/<run id>/{record.json, arrays.npz}`.
Schema 2 (this version) added budget, threads, device, run id, the dataset's content fingerprint
and the arrays' sha256; schema-1 records (the committed reference of wave 1) are upgraded in memory
when read (`_upgrade_schema1`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import platform
import subprocess
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mmbench import safeio
from mmbench.atomic import atomic_write
from mmbench.errors import MMBenchError

RECORD = "record.json"
ARRAYS = "arrays.npz"
SCHEMA_VERSION = 2
UNKNOWN = "unknown"  # a fingerprint that could not be established (schema-1 record, data absent)
BUDGET_LABELS = ("full", "quick", "smoke", "custom")


class RecordError(MMBenchError):
    """A run record that cannot be trusted: unreadable, another schema, or arrays that don't match."""


@dataclass(frozen=True)
class DatasetRef:
    """Which data a run saw: the name, the content fingerprint (what identifies it) and facts."""

    name: str
    fingerprint: str
    checksums: dict[str, str] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        """What runs are grouped by: two datasets are never pooled, whatever their names."""
        return (self.name, self.fingerprint)

    @property
    def known(self) -> bool:
        return self.fingerprint != UNKNOWN


@dataclass
class RunRecord:
    """One completed run. `test` is None for records that never touched test (tuning trials)."""

    model: str
    dataset: DatasetRef
    config: dict[str, Any]
    config_hash: str
    seed: int
    budget: str
    threads: int
    device: str  # the resolved device type: cpu, cuda, mps
    run_id: str
    protocol: dict[str, Any]
    env: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float] | None
    n_test_users: int
    timings: dict[str, Any]
    peak_memory_mb: float
    created: str
    arrays_sha256: str | None = None  # None only for upgraded schema-1 records
    schema_version: int = SCHEMA_VERSION
    upgraded_from: int | None = None  # set in memory when read from an older schema
    # Optional (absent from older schema-2 records, and from the JSON when None):
    # a tuning trial's {study, number, params, state, ...}: validation only, `test` None; reports
    # and `check` skip these records.
    trial: dict[str, Any] | None = None
    # the provenance of a tuned configuration (`mmbench run --tuned`): {file, study, trials, budget,
    # valid_metric, best_valid, ...}; None for a run on the default configuration.
    tuned: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.budget not in BUDGET_LABELS:
            raise ValueError(f"budget must be one of {BUDGET_LABELS}, got {self.budget!r}")
        for name in ("trial", "tuned"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping or null, got {type(getattr(self, name)).__name__}")
        for split, metrics in (("valid", self.valid), ("test", self.test)):
            for key, value in (metrics or {}).items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"{split} metric {key} must be a finite number, got {value!r}")
                metrics[key] = float(value)

    # ---- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("upgraded_from")
        for optional in ("trial", "tuned"):  # a default run's record.json stays as before
            if out[optional] is None:
                out.pop(optional)
        out["arrays"] = ARRAYS
        return out

    @property
    def is_trial(self) -> bool:
        """A tuning trial (validation only): never reported, gated or ranked."""
        return self.trial is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunRecord":
        d = dict(d)
        d.pop("arrays", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown record keys {unknown}")
        ds = d.get("dataset")
        if not isinstance(ds, dict):
            raise ValueError("'dataset' must be a mapping")
        d["dataset"] = DatasetRef(**ds)
        return cls(**d)

    def __getitem__(self, key: str) -> Any:
        """Read-only mapping access by field name (`record["test"]`), for callers and tests that
        handle records and JSON side by side; writing always goes through the typed fields."""
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    # ---- conveniences for reports -------------------------------------------------------------
    def metric(self, split: str, key: str) -> float:
        """A mean metric of `split`, NaN when absent (a model without that metric, a trial record)."""
        values = self.valid if split == "valid" else (self.test or {})
        v = values.get(key)
        return float(v) if v is not None else float("nan")

    @property
    def rankable(self) -> bool:
        """Only runs whose data is known may be ranked against others."""
        return self.dataset.known


# --------------------------------------------------------------------------- paths
def dataset_folder(name: str, fingerprint: str) -> str:
    """The folder a dataset's runs are filed under: two datasets of one name never share it."""
    return f"{name}-{fingerprint[:8]}" if fingerprint and fingerprint != UNKNOWN else name


def run_dir(results: Path, dataset: str, model: str, run_id: str, fingerprint: str | None = None) -> Path:
    folder = dataset_folder(dataset, fingerprint) if fingerprint else dataset
    return Path(results) / "runs" / folder / model / run_id


def find_records(results: Path) -> list[Path]:
    """Every completed run folder under `results` (recursively), sorted."""
    return sorted(p.parent for p in Path(results).rglob(RECORD))


# --------------------------------------------------------------------------- write
def arrays_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The npz bytes of `arrays` (compressed; byte-identical for identical arrays)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def write_record(folder: Path, record: RunRecord, arrays: dict[str, np.ndarray]) -> Path:
    """Arrays first, record last: a folder with `record.json` is a complete run."""
    if not isinstance(record, RunRecord):
        raise TypeError(f"write_record needs a RunRecord, got {type(record).__name__}")
    blob = arrays_bytes(arrays)
    record = dataclasses.replace(record, arrays_sha256=hashlib.sha256(blob).hexdigest(),
                                 schema_version=SCHEMA_VERSION, upgraded_from=None)
    folder = Path(folder)
    atomic_write(folder / ARRAYS, blob)
    text = json.dumps(record.to_dict(), indent=1, default=_json_default, allow_nan=False)
    atomic_write(folder / RECORD, text.encode())
    return folder / RECORD


def _json_default(obj: Any):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


# --------------------------------------------------------------------------- read
def _record_path(folder_or_file: Path) -> Path:
    path = Path(folder_or_file)
    return path / RECORD if path.is_dir() else path


def read_record(folder_or_file: Path, verify_arrays: bool = True) -> RunRecord:
    """The typed record of a run folder. Any problem is a RecordError naming the file: unreadable
    JSON, a schema other than 1 (upgraded) or 2, a bad field, or arrays whose sha256 differs."""
    path = _record_path(folder_or_file)
    text = safeio.read_text(path, "record", RecordError)  # a regular file of at most 64 MiB, UTF-8
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"{path}: malformed run record ({safeio.clip(str(exc).splitlines()[0])})") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: a run record must be a JSON object")
    version = raw.get("schema_version")
    try:
        if version == 1:
            record = _upgrade_schema1(raw, path.parent)
        elif version == SCHEMA_VERSION:
            record = RunRecord.from_dict(raw)
        else:
            raise RecordError(f"{path}: unsupported record schema_version {str(version)[:20]!r} "
                              f"(this mmbench reads 1 and {SCHEMA_VERSION})")
    except (TypeError, ValueError, KeyError) as exc:
        raise RecordError(f"{path}: invalid run record ({str(exc)[:200]})") from None
    if verify_arrays and record.arrays_sha256 is not None:
        _verify_arrays(path.parent, record)
    return record


def _verify_arrays(folder: Path, record: RunRecord, blob: bytes | None = None) -> None:
    """The arrays' sha256 (of `blob` when the caller already read them) against the record's."""
    target = folder / ARRAYS
    if blob is None:
        digest = safeio.sha256_file(target, "data", RecordError,
                                    label=f"{target} (the run's arrays)")
    else:
        digest = hashlib.sha256(blob).hexdigest()
    if digest != record.arrays_sha256:
        raise RecordError(f"{target}: sha256 {digest[:12]}… does not match its record.json "
                          f"({record.arrays_sha256[:12]}…): the arrays belong to another run")


def read_arrays(folder_or_file: Path) -> dict[str, np.ndarray]:
    """The per-user/per-item arrays of a run (after checking they belong to its record)."""
    path = Path(folder_or_file)
    folder = path if path.is_dir() else path.parent
    record = read_record(folder, verify_arrays=False)
    # Read once, verify and parse the same bytes: a file swapped in between cannot be served.
    blob = safeio.read_bytes(folder / ARRAYS, "data", RecordError, label=f"{folder / ARRAYS} (the run's arrays)")
    if record.arrays_sha256 is not None:
        _verify_arrays(folder, record, blob)
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise RecordError(f"{folder / ARRAYS}: unreadable arrays ({safeio.clip(exc)})") from None


# --------------------------------------------------------------------------- schema 1
# Hooks that need the model zoo and the data layer (imported lazily: records sit below both).
BudgetOf = Callable[[str, str, dict], str]
FingerprintOf = Callable[[str, dict, list], str]


def _upgrade_schema1(raw: dict[str, Any], folder: Path) -> RunRecord:
    """A wave-1 record in today's type: budget by matching its epochs/patience to the budget
    table (else custom), threads from `env.torch_threads`, and the card data's fingerprint when the
    record's file checksums match today's files (else `unknown`: shown, never ranked)."""
    from mmbench.upgrade import budget_of_schema1, fingerprint_of_schema1

    ds = raw["dataset"]
    env = dict(raw.get("env") or {})
    config = dict(raw.get("config") or {})
    device = str(env.get("device", "cpu")).split(":")[0]
    modalities = list(ds.get("modalities") or [])
    dataset = DatasetRef(name=ds["name"], checksums=dict(ds.get("checksums") or {}),
                         statistics=dict(ds.get("statistics") or {}), modalities=modalities,
                         fingerprint=fingerprint_of_schema1(ds["name"], dict(ds.get("checksums") or {}),
                                                            modalities))
    return RunRecord(
        model=raw["model"], dataset=dataset, config=config, config_hash=raw["config_hash"],
        seed=int(raw["seed"]), budget=budget_of_schema1(raw["model"], ds["name"], config),
        threads=int(env.get("torch_threads") or 0), device=device, run_id=folder.name,
        protocol=dict(raw.get("protocol") or {}), env=env, history=list(raw.get("history") or []),
        best_epoch=int(raw["best_epoch"]), valid=dict(raw.get("valid") or {}), test=dict(raw["test"]),
        n_test_users=int(raw.get("n_test_users", 0)), timings=dict(raw.get("timings") or {}),
        peak_memory_mb=float(raw.get("peak_memory_mb") or 0.0), created=str(raw.get("created", "")),
        arrays_sha256=None, schema_version=SCHEMA_VERSION, upgraded_from=1)


# --------------------------------------------------------------------------- environment
@lru_cache(maxsize=1)
def _static_environment() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=5)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for pkg in ("mmbench", "torch", "numpy", "scipy", "pandas", "recbole", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "platform": platform.platform(), "packages": versions}


def environment() -> dict[str, Any]:
    """Code and library versions (cached per process) plus the torch thread count read NOW, so a
    record states the threads its own run used."""
    env = dict(_static_environment())
    env["packages"] = dict(env["packages"])
    env["torch_threads"] = torch.get_num_threads()
    return env


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
