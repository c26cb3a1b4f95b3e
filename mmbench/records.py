"""Run records: one `record.json` (atomic) plus `arrays.npz` beside it, enough to recompute every
statistic and report offline.

Layout: `<results>/runs/<dataset>/<model>/<run id>/{record.json, arrays.npz}`.
"""
from __future__ import annotations

import io
import json
import platform
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmbench.atomic import atomic_write

RECORD = "record.json"
ARRAYS = "arrays.npz"
SCHEMA_VERSION = 1


def run_dir(results: Path, dataset: str, model: str, run_id: str) -> Path:
    return Path(results) / "runs" / dataset / model / run_id


def write_record(folder: Path, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Arrays first, record last: a folder with `record.json` is a complete run."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(folder / ARRAYS, buf.getvalue())
    record = dict(record, arrays=ARRAYS, schema_version=SCHEMA_VERSION)
    atomic_write(folder / RECORD, json.dumps(record, indent=1, default=_json_default).encode())
    return folder / RECORD


def _json_default(obj: Any):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def read_record(folder_or_file: Path) -> dict[str, Any]:
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / RECORD
    return json.loads(path.read_text())


def read_arrays(folder_or_file: Path) -> dict[str, np.ndarray]:
    path = Path(folder_or_file)
    folder = path if path.is_dir() else path.parent
    with np.load(folder / ARRAYS) as z:
        return {k: z[k] for k in z.files}


def find_records(results: Path) -> list[Path]:
    """Every completed run folder under `results` (recursively), sorted."""
    return sorted(p.parent for p in Path(results).rglob(RECORD))


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
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
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "torch_threads": torch.get_num_threads(),
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
