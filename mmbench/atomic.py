"""The one way mmbench writes a file: a unique temporary file in the target folder, fsync, rename.

Readers never see a half-written file, and concurrent writers (several `mmbench` processes or Dask
workers sharing a results folder) never share a temporary name. Used for records, checkpoints,
caches, `data import` and `check --write`.

A full disk or quota (ENOSPC, EDQUOT) is `DiskFullError`, an `MMBenchError` naming the file: the
temporary file is gone and the previous version of the file, if any, is untouched, so `mmbench run`
can stop with one line and a rerun resumes from the last complete checkpoint.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

from mmbench.errors import DiskFullError

Payload = Union[bytes, Callable[[BinaryIO], None]]


def atomic_write(path: str | Path, payload: Payload, mode: int = 0o644) -> Path:
    """Write `payload` (bytes, or a function writing to a binary file object) to `path` atomically.

    `mode` is applied before the rename: mkstemp creates 0600 files, and shared caches and records
    must stay readable by others. On any error the temporary file is removed and `path` is untouched;
    running out of space or quota raises `DiskFullError` naming `path`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            if callable(payload):
                payload(fh)
            else:
                fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        full = _disk_full(exc)
        if full is not None:
            raise DiskFullError(path, full, f"nothing half-written; the previous {path.name}, "
                                            "if any, is kept") from exc
        raise
    return path


_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _disk_full(exc: BaseException) -> str | None:
    """What ran out, if `exc` (or an exception it wraps: a serialiser may re-raise the write's
    OSError as its own) is ENOSPC or EDQUOT; None otherwise."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return None  # already named (a nested atomic write)
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return _FULL[exc.errno]
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_copy(src: str | Path, dest: str | Path, mode: int = 0o644) -> Path:
    """Copy a file into place atomically (same guarantees as `atomic_write`)."""
    def copy(fh: BinaryIO) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, fh, length=1 << 20)

    return atomic_write(dest, copy, mode)
