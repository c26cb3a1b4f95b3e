"""Validation at load time: every bad input becomes one `DataError` line naming the file and the problem.

Readers parse files into flat id arrays and feature arrays; the checks here run on those arrays,
vectorised, so that ~300k-row datasets validate in milliseconds. Nothing is written before a dataset
passes (the cache is filled only from validated data).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mmbench import safeio
from mmbench.errors import DataError

# The column names of the MMRec layout and the x_label codes of its splits.
REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
X_LABELS = {0: "train", 1: "valid", 2: "test"}


def one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line (DataErrors are printed as a single line)."""
    return " ".join(str(exc).split())


def require_file(path: Path) -> Path:
    """The path itself when it is a regular file, else a DataError naming it (checked with stat,
    before any open: a FIFO or a device named like a dataset file must not hang or stream forever)."""
    path = Path(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: missing file")
    safeio.require_regular(path, "data", DataError)
    return path


def require_dir(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such data directory")
    return path


# --------------------------------------------------------------------------- JSON splits

def load_json_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse an MMSSL/LATTICE split file `{"<user>": [items]}` into (users, items) int64 arrays."""
    path = require_file(path)
    text = safeio.read_text(path, "data", DataError)  # UTF-8 (BOM allowed); a bad byte by offset
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an int past Python's digit limit, deep nesting
        raise DataError(f"{path}: unreadable JSON ({safeio.clip(one_line(exc))})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: malformed split, expected a JSON object {{\"user\": [items]}}, "
                        f"got {type(data).__name__}")
    keys = list(data.keys())
    lists = list(data.values())
    for key, value in zip(keys, lists):
        if not isinstance(value, list):
            raise DataError(f"{path}: malformed split, user {key!r} maps to {type(value).__name__}, "
                            f"expected a list of item ids")
    users = _str_ids(keys, path, "user")
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    flat = [i for lst in lists for i in lst]
    if not all(type(i) is int for i in flat):  # bool, float, str, null are not ids
        bad = next(i for i in flat if type(i) is not int)
        raise DataError(f"{path}: non-integer item id {json.dumps(bad)}")
    try:
        items = np.array(flat, dtype=np.int64)
    except OverflowError:
        raise DataError(f"{path}: item id out of the int64 range") from None
    check_non_negative(items, path, "item")
    return np.repeat(users, lengths), items


def _str_ids(keys: list[str], path: Path, what: str) -> np.ndarray:
    """int64 ids parsed from decimal strings; anything else is a DataError naming the value."""
    try:
        out = np.array(keys, dtype=str).astype(np.int64) if keys else np.zeros(0, np.int64)
    except (ValueError, OverflowError):
        bad = next((k for k in keys if not _is_int_text(k)), None)
        if bad is None:
            raise DataError(f"{path}: {what} id out of the int64 range") from None
        raise DataError(f"{path}: non-integer {what} id {bad!r}") from None
    check_non_negative(out, path, what)
    return out


def _is_int_text(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return text.strip().lstrip("+-").isdigit()


def check_non_negative(ids: np.ndarray, path: Path | str, what: str) -> None:
    if ids.size and ids.min() < 0:
        raise DataError(f"{path}: negative {what} id {int(ids.min())}")


# --------------------------------------------------------------------------- MMRec TSV

def load_inter(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Parse an MMRec `.inter` TSV (header with userID, itemID, x_label) into per-split id arrays."""
    import pandas as pd

    path = require_file(path)
    try:
        with safeio.open_regular(path, "data", DataError) as fh:
            df = pd.read_csv(fh, sep="\t", keep_default_na=False, na_values=[], engine="c")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file, expected a TSV header with {', '.join(REQUIRED_COLUMNS)}") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: malformed TSV ({one_line(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({one_line(exc)})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)} "
                        f"(header has: {', '.join(df.columns)})")
    raw = None  # a non-integer column is re-read as text, so errors quote the cell as written
    if any(df[c].dtype.kind not in "iu" for c in REQUIRED_COLUMNS):
        with safeio.open_regular(path, "data", DataError) as fh:
            raw = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False, engine="c")
        raw.columns = [str(c).strip() for c in raw.columns]
    cols = {c: int_column(df[c] if raw is None else raw[c], path, c) for c in REQUIRED_COLUMNS}
    check_non_negative(cols["userID"], path, "user")
    check_non_negative(cols["itemID"], path, "item")
    labels = cols["x_label"]
    unknown = ~np.isin(labels, list(X_LABELS))
    if unknown.any():
        row = int(np.argmax(unknown))
        raise DataError(f"{path}: line {row + 2}: unknown x_label {int(labels[row])} "
                        f"(expected 0=train, 1=valid, 2=test)")
    return {name: (cols["userID"][labels == code], cols["itemID"][labels == code])
            for code, name in X_LABELS.items()}


def int_column(col, path: Path, name: str) -> np.ndarray:
    """A column as int64; the first non-integer cell is reported with its (1-based, header = 1) line."""
    if col.dtype.kind in "iu":
        return col.to_numpy(dtype=np.int64)
    values = col.to_numpy(dtype=str)
    try:
        if col.dtype.kind == "f":
            raise ValueError("floats are not ids")
        return values.astype(np.int64)
    except (ValueError, OverflowError):
        row = next((r for r, v in enumerate(values) if not _is_int_text(v)), None)
        if row is None:
            raise DataError(f"{path}: {name} out of the int64 range") from None
        raise DataError(f"{path}: line {row + 2}: non-integer {name} {str(values[row])!r}") from None


# --------------------------------------------------------------------------- features

def load_feature(path: Path) -> np.ndarray:
    """Load one `.npy` feature matrix as float32 [n_items, d]; it must be 2-D, numeric and finite."""
    path = require_file(path)
    with safeio.open_regular(path, "data", DataError) as fh:
        _check_npy_size(fh, path)
        try:
            arr = np.load(fh, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{path}: not a numeric .npy array ({safeio.clip(one_line(exc))})") from None
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: unreadable .npy file ({safeio.clip(one_line(exc))})") from None
        if not isinstance(arr, np.ndarray):
            arr.close()
            raise DataError(f"{path}: expected one array, found an archive")
    return check_feature(arr, path)


def _check_npy_size(fh, path: Path) -> None:
    """A .npy header must promise no more data than the file holds: numpy would allocate the
    promised shape before reading (a 100-byte file claiming 10^12 floats). Leaves `fh` at 0."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        shape, _, dtype = (fmt.read_array_header_1_0(fh) if version == (1, 0)
                           else fmt.read_array_header_2_0(fh))
    except (ValueError, OSError, EOFError, TypeError, SyntaxError):
        fh.seek(0)
        return  # not a .npy (an .npz, or junk): np.load reports it
    have = os.fstat(fh.fileno()).st_size - fh.tell()
    fh.seek(0)
    if dtype.hasobject:
        return  # np.load refuses it (allow_pickle=False)
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > have:
        raise DataError(f"{path}: the .npy header promises {need} bytes of data for shape "
                        f"{safeio.clip(tuple(shape))}, the file holds {have}")


def check_feature(arr: np.ndarray, path: Path | str) -> np.ndarray:
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: non-numeric feature dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DataError(f"{path}: features must be 2-D [n_items, dim], got shape {tuple(arr.shape)}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        n_bad = int(finite.size - finite.sum())
        row = int(np.argmin(finite.all(axis=1)))
        raise DataError(f"{path}: {n_bad} NaN/inf value(s) in features (first in row {row})")
    return out


def check_feature_rows(features: dict[str, tuple[np.ndarray, str]]) -> int | None:
    """The common row count of all feature files (None without features); disagreement is an error."""
    rows = {label: arr.shape[0] for arr, label in features.values()}
    if len(set(rows.values())) > 1:
        desc = ", ".join(f"{label} has {n}" for label, n in rows.items())
        raise DataError(f"feature files disagree in rows: {desc}")
    return next(iter(rows.values()), None)


# --------------------------------------------------------------------------- interactions

def check_items_in_features(items: np.ndarray, n_rows: int, source: str, feature_label: str) -> None:
    if items.size and items.max() >= n_rows:
        raise DataError(f"{source}: item id {int(items.max())} is beyond the {n_rows} rows of the "
                        f"feature files ({feature_label})")


def check_split_rows(counts: dict[str, int], sources: dict[str, str]) -> None:
    """Every split has rows: an empty valid split stops nothing early, an empty test split scores
    nobody, and either would print metrics that look like results. `sources` name the files."""
    for split in ("train", "valid", "test"):
        if not counts.get(split):
            raise DataError(f"{sources.get(split, '?')}: the {split} split is empty (no interactions); "
                            f"a dataset needs train, valid and test interactions")


def check_splits(splits: dict[str, tuple[np.ndarray, np.ndarray, str]], n_items: int) -> None:
    """Train non-empty, no duplicate pair inside a split, no pair in two splits.

    `splits` maps split name -> (users, items, source label used in messages).
    """
    users, items, source = splits["train"]
    if users.size == 0:
        raise DataError(f"{source}: the train split is empty")
    uniques = {}
    for name, (u, i, src) in splits.items():
        keys = np.sort(u.astype(np.int64) * n_items + i)
        dup = keys[1:] == keys[:-1]
        if dup.any():
            k = int(keys[1:][dup][0])
            raise DataError(f"{src}: duplicate pair (user {k // n_items}, item {k % n_items}) in the "
                            f"{name} split ({int(dup.sum())} duplicate row(s) in all)")
        uniques[name] = keys
    names = list(uniques)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            both = np.intersect1d(uniques[names[a]], uniques[names[b]], assume_unique=True)
            if both.size:
                k = int(both[0])
                src_a, src_b = splits[names[a]][2], splits[names[b]][2]
                where = src_a if src_a == src_b else f"{src_a} and {src_b}"
                raise DataError(f"{where}: pair (user {k // n_items}, item {k % n_items}) is in both the "
                                f"{names[a]} and {names[b]} splits ({both.size} pair(s) in all)")
