"""Dataset cards, data-directory resolution, checksum verification and the parsed-dataset cache.

A card (YAML in the project's `datasets/`, shipped as `mmbench.cards`) states the facts about one
dataset: layout, files with sha256, modalities (and the missing ones), statistics, provenance,
licence, and how to obtain the files we may not redistribute. `load_dataset` checks the files
against the card, then serves a parsed copy from an npz cache keyed by the files' checksums, so a
repeated load costs a few milliseconds and a changed file can never be served stale: the cache file
also stores the checksums and part digests it was built from, and one that does not match (damaged,
or another dataset's copied under its name) is ignored and rewritten. Every loaded dataset has rows
in train, valid and test.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.resources
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mmbench import safeio
from mmbench.atomic import atomic_copy, atomic_write
from mmbench.data import readers
from mmbench.data.dataset import FINGERPRINT_VERSION, SPLITS, Dataset, canonical_csr
from mmbench.errors import ConfigError, DataError, MMBenchError

FILE_LAYOUTS = ("mmssl", "mmrec")
BUILTIN_LAYOUTS = ("ml100k", "synthetic")
HASH_CACHE = "sha256-cache.json"


# --------------------------------------------------------------------------- locations

def cards_dir() -> Path:
    """The folder of the YAML cards: the `mmbench.cards` package, or `datasets/` of a source checkout."""
    try:
        return Path(str(importlib.resources.files("mmbench.cards")))
    except ModuleNotFoundError:  # running from a checkout that is not installed
        return Path(__file__).resolve().parents[2] / "datasets"


def data_dir(explicit=None) -> Path:
    """Where dataset folders live: `--data-dir` > env MMBENCH_DATA_DIR > the project's `datasets/`."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("MMBENCH_DATA_DIR")
    return Path(env).expanduser() if env else cards_dir()


_data_dir = data_dir  # functions below take a `data_dir` argument that shadows the name


def cache_dir() -> Path:
    """Parsed-dataset cache: env MMBENCH_CACHE_DIR, else the user's cache directory (platformdirs,
    e.g. ~/.cache/mmbench on Linux); never the checkout nor the (read-only) data directory."""
    env = os.environ.get("MMBENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mmbench", appauthor=False))


# --------------------------------------------------------------------------- cards

@functools.lru_cache(maxsize=4)
def _cards(folder: str) -> dict[str, dict]:
    out = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        # a regular file of at most 1 MiB, UTF-8, YAML without aliases (cards are shared too)
        c = safeio.load_yaml(path, "config", ConfigError, label=f"dataset card {path}")
        if not isinstance(c, dict) or c.get("name") != path.stem:
            raise ConfigError(f"{path}: a dataset card needs `name: {path.stem}`")
        layout = c.get("layout")
        if layout not in FILE_LAYOUTS + BUILTIN_LAYOUTS:
            raise ConfigError(f"{path}: unknown layout {layout!r}")
        if layout in FILE_LAYOUTS and not c.get("directory"):
            raise ConfigError(f"{path}: layout {layout} needs a `directory`")
        c.setdefault("files", {})
        c.setdefault("modalities", {})
        c.setdefault("missing_modalities", {})
        c.setdefault("reader", {})
        c.setdefault("params", {})
        out[c["name"]] = c
    return out


def list_cards() -> list[str]:
    """The names of all dataset cards, sorted."""
    return sorted(_cards(str(cards_dir())))


def card(name: str) -> dict:
    """The card called `name`; an unknown name is a ConfigError listing the known ones."""
    cards = _cards(str(cards_dir()))
    if name not in cards:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(cards))}")
    return copy.deepcopy(cards[name])  # callers may not alter the cached card


def card_root(c: dict, data_dir=None) -> Path | None:
    """The folder holding a card's files (None for the synthetic generator)."""
    if c["layout"] == "ml100k":
        return readers.ml100k_dir()
    if c["layout"] == "synthetic":
        return None
    return _data_dir(data_dir) / c["directory"]


def get_instructions(c: dict) -> str:
    """One line: where to download the files and how to import them."""
    dl = c.get("download") or {}
    if c["layout"] in BUILTIN_LAYOUTS:
        return " ".join(str(dl.get("instructions", "")).split()) or f"see `mmbench data info {c['name']}`"
    parts = []
    if dl.get("url"):
        parts.append(f"download them from {dl['url']}")
    parts.append(f"then run `mmbench data import {c['name']} --from PATH` "
                 f"(or point --data-dir / MMBENCH_DATA_DIR at a folder holding {c.get('directory')}/); "
                 f"see `mmbench data info {c['name']}`")
    return "; ".join(parts)


# --------------------------------------------------------------------------- checksums

def sha256_file(path: Path) -> str:
    """sha256 of a dataset file; a FIFO or a device is refused (stat before open), never read."""
    return safeio.sha256_file(path, "data", DataError)


def _stamp(st: os.stat_result) -> list[int]:
    """What identifies a file's version without reading it. Size + mtime alone miss a same-size
    rewrite whose mtime was restored (`cp -p`, `touch -r`, `os.utime`); the inode changes on a
    replace-by-rename and ctime on any write or utime, and neither can be set back by a user."""
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _hash_table(store: Path) -> dict:
    """The hash cache's table ({} when absent, unreadable or damaged: it is an optimisation only)."""
    try:
        table = json.loads(safeio.read_bytes(store, "cache", DataError))
    except (DataError, ValueError, RecursionError):
        return {}
    return table if isinstance(table, dict) else {}


def _remember_hash(store: Path, key: str, stamp: list[int], digest: str) -> None:
    """Add one entry under an exclusive lock on `<store>.lock`: two processes hashing different files
    each re-read the table inside the lock, so neither drops the other's entries."""
    from filelock import FileLock, Timeout

    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{store}.lock", timeout=30):
            table = _hash_table(store)
            table[key] = {"stamp": stamp, "sha256": digest}
            atomic_write(store, json.dumps(table, sort_keys=True).encode())
    except (OSError, Timeout, MMBenchError):
        pass  # a read-only or full cache directory only costs a re-hash next time


def file_checksum(path: Path, use_cache: bool = True) -> str:
    """sha256 of a regular file, remembered in the cache dir by (path, size, mtime_ns, inode,
    ctime_ns) so it is hashed once per version of the file."""
    path = Path(path).resolve()
    stamp = _stamp(safeio.require_regular(path, "data", DataError))
    store = cache_dir() / HASH_CACHE
    if use_cache:
        hit = _hash_table(store).get(str(path))
        if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
            return hit["sha256"]
    digest = sha256_file(path)
    if _stamp(safeio.require_regular(path, "data", DataError)) == stamp:  # unchanged while hashed
        _remember_hash(store, str(path), stamp, digest)
    return digest


def _check_present(c: dict, root: Path) -> None:
    missing = [f for f in c["files"] if not os.path.exists(root / f)]
    if missing:
        raise DataError(f"dataset {c['name']}: missing file(s) {', '.join(missing)} in {root}; "
                        f"{get_instructions(c)}")
    for f in c["files"]:  # a FIFO or device under a card's file name is refused, not read
        safeio.require_regular(root / f, "data", DataError)


def _checksums(c: dict, root: Path, verify: bool, use_cache: bool = True) -> dict[str, str]:
    sums = {f: file_checksum(root / f, use_cache) for f in c["files"]}
    if verify:
        bad = [f for f, s in sums.items() if s != c["files"][f]]
        if bad:
            desc = "; ".join(f"{root / f}: expected {c['files'][f]}, got {sums[f]}" for f in bad)
            raise DataError(f"dataset {c['name']}: sha256 mismatch ({desc}); the file differs from the "
                            f"card's copy (re-download it, or pass verify_checksums=False)")
    return sums


# --------------------------------------------------------------------------- npz cache

def _cache_key(c: dict, sums: dict) -> str:
    key = {"reader": readers.READER_VERSION, "fingerprint": FINGERPRINT_VERSION,
           "name": c["name"], "layout": c["layout"],
           "directory": c.get("directory"), "reader_args": c["reader"], "params": c["params"],
           "modalities": {m: (s or {}).get("file") for m, s in c["modalities"].items()}, "files": sums}
    if c["layout"] == "ml100k":  # TF-IDF/SVD output may change with scikit-learn
        import sklearn
        key["sklearn"] = sklearn.__version__
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _save_cache(path: Path, ds: Dataset, key: str, sums: dict[str, str]) -> None:
    """Arrays + a JSON header. The header holds the fingerprint's part digests, the cache key and the
    source files' checksums it was built from, so `_load_cache` can tell a cache that is not this
    one's (damaged, stale, another dataset's copied under this name) and rebuild it."""
    arrays = {}
    for s in SPLITS:
        m = ds.split(s)
        arrays[f"{s}_indptr"], arrays[f"{s}_indices"] = m.indptr, m.indices
    for k, (mod, feat) in enumerate(ds.features.items()):
        arrays[f"feature_{k}"] = feat
    for attr in ("user_tokens", "item_tokens"):
        if getattr(ds, attr) is not None:
            arrays[attr] = np.asarray(getattr(ds, attr))
    header = {"name": ds.name, "n_users": ds.n_users, "n_items": ds.n_items,
              "modalities": list(ds.features), "meta": dict(ds.meta), "digests": ds.part_digests(),
              "cache_key": key, "files": dict(sums)}
    arrays["header"] = np.array(json.dumps(header))
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


class _StaleCache(Exception):
    """A cache file that is not the one its name promises (internal: it is rebuilt)."""


def _cached_csr(z, split: str, n_users: int, n_items: int) -> sp.csr_matrix:
    """One split from the cache, after the shape checks that keep scipy from reading out of bounds."""
    indptr, indices = z[f"{split}_indptr"], z[f"{split}_indices"]
    if (indptr.ndim != 1 or indices.ndim != 1 or indptr.dtype.kind not in "iu"
            or indices.dtype.kind not in "iu" or len(indptr) != n_users + 1):
        raise _StaleCache(f"{split}: bad index arrays")
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise _StaleCache(f"{split}: bad indptr")
    if indices.size and (indices.min() < 0 or indices.max() >= n_items):
        raise _StaleCache(f"{split}: item id out of range")
    m = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(n_users, n_items))
    return canonical_csr(m)


def _load_cache(path: Path, key: str, sums: dict[str, str], name: str) -> Dataset | None:
    """The cached Dataset, or None (rebuild) unless the file is what `_save_cache` wrote for this
    key: the same key, dataset name and source checksums in its header, arrays of the right shapes
    that pass the load-time rules (`_validate_cached`) and hash to the part digests stored beside
    them (a cache rewritten with other valid data is rebuilt, never served under another fingerprint)."""
    try:
        with safeio.open_regular(path, "cache", DataError) as fh, np.load(fh, allow_pickle=False) as z:
            header = json.loads(str(z["header"][()]))
            if (not isinstance(header, dict) or header.get("cache_key") != key
                    or header.get("files") != sums or header.get("name") != name):
                raise _StaleCache("another dataset's or an older cache")
            n_users, n_items = header["n_users"], header["n_items"]
            if not all(type(n) is int and n >= 0 for n in (n_users, n_items)):
                raise _StaleCache("bad sizes")
            mats = {s: _cached_csr(z, s, n_users, n_items) for s in SPLITS}
            mods = header["modalities"]
            feats = {mod: z[f"feature_{k}"] for k, mod in enumerate(mods)}
            if (len(set(map(str, mods))) != len(mods)
                    or any(f.dtype != np.float32 or f.ndim != 2 or f.shape[0] != n_items for f in feats.values())):
                raise _StaleCache("bad features")
            tokens = {a: z[a] for a in ("user_tokens", "item_tokens") if a in z.files}
            for a, n in (("user_tokens", n_users), ("item_tokens", n_items)):
                if a in tokens and (tokens[a].ndim != 1 or len(tokens[a]) != n):
                    raise _StaleCache(f"bad {a}")
        _validate_cached(mats, feats, n_items)
        ds = Dataset(header["name"], n_users, n_items, mats["train"], mats["valid"], mats["test"],
                     feats, meta=header["meta"], **tokens)
        if ds.part_digests() != header["digests"]:  # ~5 ms on TikTok: the content is what was cached
            raise _StaleCache("arrays do not match the digests they were cached with")
    except (_StaleCache, DataError, OSError, KeyError, IndexError, ValueError, TypeError,
            AttributeError, zipfile.BadZipFile, EOFError, RecursionError):
        return None  # a damaged or foreign cache is rebuilt from the files
    return ds


def _validate_cached(mats: dict[str, sp.csr_matrix], feats: dict[str, np.ndarray], n_items: int) -> None:
    """The load-time rules again, on the cached arrays (milliseconds, no hashing): every split has
    rows, no pair twice or in two splits, finite features. Bytes damaged on disk already fail the
    zip's CRC-32 when read; this catches arrays rewritten into a valid but impossible file."""
    from mmbench.data import validate as V

    splits = {}
    for s, m in mats.items():
        if m.nnz == 0:
            raise _StaleCache(f"{s}: empty split")
        users = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
        splits[s] = (users, np.asarray(m.indices, dtype=np.int64), s)
    V.check_splits(splits, max(n_items, 1))  # a DataError here means: rebuild
    for mod, f in feats.items():
        V.check_feature(f, mod)


# --------------------------------------------------------------------------- loading

def _parse(c: dict, root: Path | None) -> Dataset:
    layout, name = c["layout"], c["name"]
    feature_files = {m: (s or {}).get("file") for m, s in c["modalities"].items()}
    if layout in FILE_LAYOUTS and None in feature_files.values():
        raise ConfigError(f"dataset card {name}: every modality of a {layout} card needs a `file`")
    if layout == "mmssl":
        return readers.read_mmssl(root, name, prefix=c["reader"].get("prefix", ""),
                                  feature_files=feature_files)
    if layout == "mmrec":
        return readers.read_mmrec(root, name, inter_file=c["reader"].get("inter_file"),
                                  feature_files=feature_files)
    if layout == "ml100k":
        return readers.read_ml100k(directory=root, **c["params"])
    from mmbench.data.synthetic import make_synthetic
    return make_synthetic(**c["params"])


def _card_meta(c: dict, ds: Dataset, root: Path | None) -> dict:
    meta = dict(ds.meta)
    meta.update({"card": c["name"], "layout": c["layout"], "directory": str(root) if root else None,
                 "provenance": c.get("provenance"), "licence": c.get("licence"),
                 "missing_modalities": sorted(c["missing_modalities"])})
    return meta


def _load_card(c: dict, data_dir=None, verify_checksums=True, use_cache=True) -> Dataset:
    root = card_root(c, data_dir)
    if root is None:  # synthetic: generated in milliseconds, nothing to verify or cache
        ds = readers.require_all_splits(_parse(c, None))
        return ds.replace(name=c["name"], meta=_card_meta(c, ds, None))
    _check_present(c, root)
    sums = _checksums(c, root, verify_checksums, use_cache)
    key = _cache_key(c, sums)
    path = cache_dir() / f"{c['name']}-{key}.npz"
    ds = _load_cache(path, key, sums, c["name"]) if use_cache and os.path.lexists(path) else None
    if ds is None:
        ds = readers.require_all_splits(_parse(c, root).replace(name=c["name"]))
        if use_cache:
            try:
                _save_cache(path, ds, key, sums)
            except (OSError, MMBenchError) as exc:
                warnings.warn(f"could not write the dataset cache {path}: {exc}", stacklevel=2)
    return ds.replace(checksums=sums, meta=_card_meta(c, ds, root))


def _load_path(path: Path, use_cache=True) -> Dataset:
    """A directory in auto-detected layout, named by `readers.dataset_name_for_directory`."""
    ds = readers.require_all_splits(readers.read_auto(path))
    root = Path(ds.meta["directory"])
    sums = {f: file_checksum(root / f, use_cache) for f in ds.meta["files"]}
    return ds.replace(checksums=sums, meta={**ds.meta, "card": None, "missing_modalities": []})


def _resolve(name_or_path) -> dict | Path:
    if isinstance(name_or_path, str) and name_or_path in _cards(str(cards_dir())):
        return card(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if os.sep in text or "/" in text or path.exists():
        raise DataError(f"{path}: no such data directory")
    raise ConfigError(f"unknown dataset {text!r}: not a card ({', '.join(list_cards())}) "
                      f"nor a directory")


def load_dataset(name_or_path, data_dir=None, verify_checksums: bool = True) -> Dataset:
    """A validated Dataset from a card name (verified, cached) or a dataset directory (auto layout)."""
    target = _resolve(name_or_path)
    if isinstance(target, Path):
        return _load_path(target)
    return _load_card(target, data_dir, verify_checksums)


def verify(name_or_path, data_dir=None) -> dict:
    """Re-hash and re-parse (no caches) and report; any problem raises a DataError."""
    target = _resolve(name_or_path)
    if isinstance(target, Path):
        ds = _load_path(target, use_cache=False)
        expected = {}
    else:
        ds = _load_card(target, data_dir, verify_checksums=True, use_cache=False)
        expected = target["files"]
    files = {f: {"sha256": s, "expected": expected.get(f), "ok": expected.get(f, s) == s}
             for f, s in ds.checksums.items()}
    return {"name": ds.name, "card": ds.meta.get("card"), "layout": ds.meta.get("layout"),
            "matches_cards": _matching_cards(ds.checksums),
            "directory": ds.meta.get("directory"), "files": files,
            "checksums_ok": all(v["ok"] for v in files.values()) if expected else None,
            "missing_modalities": ds.meta.get("missing_modalities", []),
            "statistics": ds.statistics()}


def _matching_cards(sums: dict[str, str]) -> list[str]:
    """Cards whose every file is among `sums` with the same sha256 (a directory copy of a card)."""
    cards = _cards(str(cards_dir()))
    return [n for n, c in sorted(cards.items())
            if c["files"] and all(sums.get(f) == h for f, h in c["files"].items())]


def import_dataset(name: str, from_path, data_dir=None) -> dict:
    """Copy a card's files from `from_path` into `<data_dir>/<directory>/`, all verified first.

    Nothing is written unless every file is present and matches the card's sha256.
    """
    c = card(name)
    if c["layout"] not in FILE_LAYOUTS:
        raise ConfigError(f"dataset {name} is built in ({c['layout']}); there is nothing to import")
    src = Path(from_path).expanduser()
    if not src.is_dir():
        raise DataError(f"{src}: no such directory to import from")
    if not all((src / f).is_file() for f in c["files"]) and (src / c["directory"]).is_dir():
        src = src / c["directory"]
    missing = [f for f in c["files"] if not (src / f).is_file()]
    if missing:
        raise DataError(f"dataset {name}: missing file(s) {', '.join(missing)} in {src}")
    for f, expected in c["files"].items():
        got = sha256_file(src / f)
        if got != expected:
            raise DataError(f"{src / f}: sha256 mismatch (expected {expected}, got {got}); nothing imported")
    dest = _data_dir(data_dir) / c["directory"]
    copied, kept = [], []
    dest.mkdir(parents=True, exist_ok=True)
    for f, expected in c["files"].items():
        target = dest / f
        if target.is_file() and sha256_file(target) == expected:
            kept.append(f)
            continue
        atomic_copy(src / f, target)
        copied.append(f)
    return {"name": name, "source": str(src), "destination": str(dest), "copied": copied,
            "already_present": kept}

