"""The one way mmbench writes a file: a unique temporary file in the target folder, fsync, rename.

Readers never see a half-written file, and concurrent writers (several `mmbench` processes or Dask
workers sharing a results folder) never share a temporary name. Used for records, checkpoints,
caches, `data import` and `check --write`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

Payload = Union[bytes, Callable[[BinaryIO], None]]


def atomic_write(path: str | Path, payload: Payload, mode: int = 0o644) -> Path:
    """Write `payload` (bytes, or a function writing to a binary file object) to `path` atomically.

    `mode` is applied before the rename: mkstemp creates 0600 files, and shared caches and records
    must stay readable by others. On any error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(payload):
                payload(fh)
            else:
                fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_copy(src: str | Path, dest: str | Path, mode: int = 0o644) -> Path:
    """Copy a file into place atomically (same guarantees as `atomic_write`)."""
    def copy(fh: BinaryIO) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, fh, length=1 << 20)

    return atomic_write(dest, copy, mode)
