"""The one way mmbench opens a file a user named: a regular file, bounded, decoded strictly.

mmbench reads files people download and share (configs, references, run records, recommendation
lists, datasets). A path can name a FIFO (an open for reading blocks until a writer appears), a
device (`/dev/zero` never ends), a directory, a huge file, or bytes in another encoding. Here each of
those is ONE line naming the file, raised as the caller's `MMBenchError` subclass, before anything
hangs or fills memory:

- `require_regular` stats the path BEFORE any open; `open_regular` then opens with O_NONBLOCK (a FIFO
  swapped in between stat and open cannot block) and re-checks the descriptor with fstat.
- Every kind of file has a size limit (`LIMITS`); a read never takes more than limit + 1 bytes.
- Text is UTF-8, with or without a BOM (stripped); a bad byte is reported by its byte offset.
- YAML goes through `NoAliasLoader`: safe tags only, and no anchors or aliases (an alias bomb is
  refused while composing, before anything is constructed).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import yaml

from mmbench.errors import MMBenchError

MiB = 1 << 20
# Bytes allowed per kind of file; None = no limit (the regular-file check still applies).
LIMITS: dict[str, int | None] = {
    "config": 1 * MiB,       # --config YAML/JSON files and dataset cards
    "reference": 1 * MiB,    # `mmbench check --against` reference files
    "record": 64 * MiB,      # a run's record.json
    "recs": 1024 * MiB,      # `mmbench evaluate --recs` files
    "data": None,            # dataset files (JSON splits, .inter, .npy)
    "checkpoint": None,      # training checkpoints
    "cache": None,           # mmbench's own caches (parsed datasets, the file-hash table)
}
# At most this many characters of a value end up in an error message.
SHOWN_CHARS = 100
BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20


def clip(text: Any, limit: int = SHOWN_CHARS) -> str:
    """`text` as str, cut to `limit` characters (with "..."): a hostile value is never echoed whole."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """repr(value) cut to `limit` characters (strings are cut before repr, so huge ones cost nothing)."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
    return clip(repr(value), limit)


def _label(path: Path, label: str | None) -> str:
    return label if label is not None else clip(path, 200)


def _size_text(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _limit(kind: str) -> int | None:
    if kind not in LIMITS:
        raise ValueError(f"unknown file kind {kind!r}; expected one of {', '.join(LIMITS)}")
    return LIMITS[kind]


def _check_stat(st: os.stat_result, kind: str, where: str, error: type[MMBenchError]) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{where}: {_kind_of(st.st_mode)}, not a regular file; refusing to read it")
    limit = _limit(kind)
    if limit is not None and st.st_size > limit:
        raise error(f"{where}: {st.st_size} bytes; a {kind} file may hold at most {_size_text(limit)}")


# --------------------------------------------------------------------------- opening

def require_regular(path: str | Path, kind: str = "data", error: type[MMBenchError] = MMBenchError,
                    label: str | None = None) -> os.stat_result:
    """stat `path` (following links) and refuse anything but a regular file within `kind`'s limit.

    Opens nothing, so it is safe on FIFOs and devices; for files read later (datasets, checkpoints).
    """
    path = Path(path)
    where = _label(path, label)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    _check_stat(st, kind, where, error)
    return st


def open_regular(path: str | Path, kind: str = "data", error: type[MMBenchError] = MMBenchError,
                 label: str | None = None) -> BinaryIO:
    """A binary file object for `path`, after `require_regular`; the descriptor is checked again
    with fstat, so a FIFO or device swapped in after the stat is refused instead of read."""
    path = Path(path)
    where = _label(path, label)
    require_regular(path, kind, error, label)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        _check_stat(os.fstat(fd), kind, where, error)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# --------------------------------------------------------------------------- reading

def read_bytes(path: str | Path, kind: str, error: type[MMBenchError] = MMBenchError,
               label: str | None = None) -> bytes:
    """The whole file, at most `LIMITS[kind]` bytes (never reading more than one byte past it)."""
    path = Path(path)
    where = _label(path, label)
    limit = _limit(kind)
    with open_regular(path, kind, error, label) as fh:
        try:
            blob = fh.read() if limit is None else fh.read(limit + 1)
        except OSError as exc:
            raise error(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if limit is not None and len(blob) > limit:  # grew after the stat
        raise error(f"{where}: more than {_size_text(limit)}; a {kind} file may hold at most "
                    f"{_size_text(limit)}")
    return blob


def decode(blob: bytes, where: str, error: type[MMBenchError] = MMBenchError, offset: int = 0,
           strip_bom: bool = True) -> str:
    """UTF-8 text of `blob` without a leading BOM; a bad byte is one line with its byte offset
    (counted from `offset`, the position of `blob` in its file)."""
    start = 0
    if strip_bom and blob.startswith(BOM):
        start = len(BOM)
    try:
        return blob[start:].decode("utf-8") if start else blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = offset + start + exc.start
        raise error(f"{where}: not UTF-8 text (byte 0x{blob[start + exc.start]:02x} at offset {at})") from None


def read_text(path: str | Path, kind: str, error: type[MMBenchError] = MMBenchError,
              label: str | None = None) -> str:
    """`read_bytes` decoded by `decode`."""
    path = Path(path)
    return decode(read_bytes(path, kind, error, label), _label(path, label), error)


def iter_lines(path: str | Path, kind: str, error: type[MMBenchError] = MMBenchError,
               label: str | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line ending) per line, read as a stream: a 1 GiB
    recommendations file is never held whole, and no line may run past the kind's limit."""
    path = Path(path)
    where = _label(path, label)
    limit = _limit(kind)
    with open_regular(path, kind, error, label) as fh:
        offset, no = 0, 0
        while True:
            room = -1 if limit is None else limit - offset + 1
            try:
                raw = fh.readline(room)
            except OSError as exc:
                raise error(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
            if not raw:
                return
            if limit is not None and offset + len(raw) > limit:
                raise error(f"{where}: more than {_size_text(limit)}; a {kind} file may hold at most "
                            f"{_size_text(limit)}")
            no += 1
            text = decode(raw, where, error, offset, strip_bom=no == 1)
            offset += len(raw)
            yield no, text.rstrip("\r\n")


def load_json(path: str | Path, kind: str, error: type[MMBenchError] = MMBenchError,
              label: str | None = None) -> Any:
    """Parsed JSON of a bounded, UTF-8 file; malformed or too deeply nested JSON is one line."""
    path = Path(path)
    where = _label(path, label)
    text = read_text(path, kind, error, label)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an int past Python's digit limit, deep nesting
        raise error(f"{where}: unreadable JSON ({clip(type(exc).__name__ + ': ' + str(exc))})") from None


# --------------------------------------------------------------------------- YAML

class AliasError(yaml.YAMLError):
    """A YAML anchor or alias, refused by `NoAliasLoader`; names where it sits (`eval_ks[0]`)."""

    def __init__(self, where: str, mark) -> None:
        at = [f"at {clip(where)}"] if where else []
        if mark is not None:
            at.append(f"line {mark.line + 1}, column {mark.column + 1}")
        super().__init__("aliases are not allowed" + (f" ({', '.join(at)})" if at else ""))


class NoAliasLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no python tags) that refuses anchors and aliases while composing.

    A config never needs them, and an alias bomb (a few lines that expand to billions of nodes)
    is stopped at its first anchor, before any object is constructed.
    """

    def compose_node(self, parent, index):
        path = self.__dict__.setdefault("_node_path", [])
        if isinstance(index, yaml.ScalarNode):  # a mapping value: index is its key's node
            step = ("." if any(path) else "") + clip(index.value, 40)
        elif isinstance(index, int) and not isinstance(index, bool) and parent is not None:
            step = f"[{index}]"
        else:
            step = ""
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise AliasError("".join(path) + step, event.start_mark)
        path.append(step)
        try:
            return super().compose_node(parent, index)
        finally:
            path.pop()


def yaml_loads(text: str, where: str, error: type[MMBenchError] = MMBenchError) -> Any:
    """YAML text parsed by `NoAliasLoader`; every failure is one line naming `where`."""
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - NoAliasLoader is a SafeLoader
    except AliasError as exc:
        raise error(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        first = (str(exc).splitlines() or ["?"])[0]
        raise error(f"{where}: malformed YAML ({clip(first)})") from None
    except (ValueError, RecursionError) as exc:  # an int past Python's digit limit, deep nesting
        raise error(f"{where}: unreadable YAML ({clip(type(exc).__name__ + ': ' + str(exc))})") from None


def load_yaml(path: str | Path, kind: str = "config", error: type[MMBenchError] = MMBenchError,
              label: str | None = None) -> Any:
    """YAML of a bounded, UTF-8 file, parsed by `NoAliasLoader`."""
    path = Path(path)
    return yaml_loads(read_text(path, kind, error, label), _label(path, label), error)


# --------------------------------------------------------------------------- hashing

def sha256_file(path: str | Path, kind: str = "data", error: type[MMBenchError] = MMBenchError,
                label: str | None = None) -> str:
    """sha256 of a regular file, read in 1 MiB blocks (never a FIFO or a device)."""
    path = Path(path)
    where = _label(path, label)
    h = hashlib.sha256()
    with open_regular(path, kind, error, label) as fh:
        try:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                h.update(block)
        except OSError as exc:
            raise error(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return h.hexdigest()
