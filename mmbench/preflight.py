"""Checks made before any work: a bad option is refused in the time it takes to parse the command,
before a dataset is loaded, a model built or a folder made (nothing half-written remains).

Each check raises a `ConfigError` (one line, exit code 2) naming the option and the value.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from mmbench.errors import ConfigError
from mmbench.safeio import shown

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")


def positive_int(text: str) -> int:
    """argparse type for counts such as --threads and --workers (a usage error, exit 2, otherwise)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text[:40]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def on_dask(workers: int, scheduler: str | None) -> bool:
    """Whether `--workers`/`--scheduler` send the work to Dask (checked: not both at once)."""
    if scheduler is not None and workers != 1:
        raise ConfigError("--workers and --scheduler: choose one (the scheduler's workers do the work)")
    if scheduler is not None:
        from mmbench.grid import check_scheduler_address

        check_scheduler_address(scheduler)
    return workers > 1 or scheduler is not None


def device(name: str) -> str:
    """A device this machine has: auto, cpu, cuda, cuda:N (N below the GPU count), mps."""
    if not _DEVICE.match(name or ""):
        raise ConfigError(f"--device {shown(str(name))}: expected auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") or name == "mps":
        import torch

        if name == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise ConfigError("--device mps: MPS is not available on this machine")
        elif not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
        elif ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def seeds(values: list[int]) -> list[int]:
    """Training seeds are integers in [0, 2**32): numpy's legacy seeding takes nothing else."""
    bad = [s for s in values if not 0 <= s < 2**32]
    if bad:
        raise ConfigError(f"--seeds: {bad[0]} is outside [0, 2**32)")
    if len(set(values)) != len(values):
        raise ConfigError(f"--seeds: a seed is listed twice ({', '.join(map(str, values))})")
    return values


def writable_folder(path: str | Path, option: str) -> Path:
    """`path` is (or can be made) a folder we may write: refused up front when it, or the nearest
    existing folder above it, is a file or not writable. Nothing is created here: an existing folder
    gets a probe file that is removed at once; a missing one is made later, by the first write."""
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {shown(str(path))}: {existing} is not a folder")
    if existing == path:
        try:
            fd, probe = tempfile.mkstemp(dir=path, prefix=".mmbench-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"{option} {shown(str(path))}: cannot write there ({exc.strerror or exc})") from None
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {shown(str(path))}: cannot create it ({existing} is not writable)")
    return path


def dataset_name(name_or_path: str, data_dir=None) -> str:
    """The name a dataset will have once loaded (a card's name, or a directory's by the naming
    rule), without loading it: configs take per-dataset presets by this name."""
    from mmbench.data.registry import _resolve
    from mmbench.data.readers import dataset_name_for_directory

    target = _resolve(name_or_path)
    return dataset_name_for_directory(target) if isinstance(target, Path) else target["name"]
