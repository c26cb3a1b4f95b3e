"""Dataset cards, data-directory resolution, checksum verification and the parsed-dataset cache.

A card (YAML in the project's `datasets/`, shipped as `mmbench.cards`) states the facts about one
dataset: layout, files with sha256, modalities (and the missing ones), statistics, provenance,
licence, and how to obtain the files we may not redistribute. `load_dataset` checks the files
against the card, then serves a parsed copy from an npz cache keyed by the files' checksums, so a
repeated load costs a few milliseconds and a changed file can never be served stale.
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
import yaml

from mmbench.atomic import atomic_copy, atomic_write
from mmbench.data import readers
from mmbench.data.dataset import FINGERPRINT_VERSION, SPLITS, Dataset, canonical_csr
from mmbench.data.validate import one_line
from mmbench.errors import ConfigError, DataError

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
        try:
            c = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: malformed dataset card ({one_line(exc)})") from None
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
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_checksum(path: Path, use_cache: bool = True) -> str:
    """sha256 of a file, remembered in the cache dir by (path, size, mtime) so it is hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    store = cache_dir() / HASH_CACHE
    try:
        table = json.loads(store.read_text())
    except (OSError, ValueError):
        table = {}
    if not isinstance(table, dict):
        table = {}
    hit = table.get(str(path))
    if use_cache and isinstance(hit, dict) and hit.get("stamp") == stamp:
        return hit["sha256"]
    digest = sha256_file(path)
    table[str(path)] = {"stamp": stamp, "sha256": digest}
    try:
        atomic_write(store, json.dumps(table, sort_keys=True).encode())
    except OSError:
        pass  # the hash cache is an optimisation only
    return digest


def _check_present(c: dict, root: Path) -> None:
    missing = [f for f in c["files"] if not (root / f).is_file()]
    if missing:
        raise DataError(f"dataset {c['name']}: missing file(s) {', '.join(missing)} in {root}; "
                        f"{get_instructions(c)}")


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


def _save_cache(path: Path, ds: Dataset) -> None:
    """Arrays + a JSON header, which holds the fingerprint's part digests so a warm load need not
    re-hash (the file name's key covers the files, the reader and FINGERPRINT_VERSION)."""
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
              "modalities": list(ds.features), "meta": dict(ds.meta), "digests": ds.part_digests()}
    arrays["header"] = np.array(json.dumps(header))
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _load_cache(path: Path) -> Dataset | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            shape = (header["n_users"], header["n_items"])
            mats = {}
            for s in SPLITS:
                indptr, indices = z[f"{s}_indptr"], z[f"{s}_indices"]
                m = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=shape)
                mats[s] = canonical_csr(m)
            feats = {mod: z[f"feature_{k}"] for k, mod in enumerate(header["modalities"])}
            tokens = {a: z[a] for a in ("user_tokens", "item_tokens") if a in z.files}
        ds = Dataset(header["name"], shape[0], shape[1], mats["train"], mats["valid"], mats["test"],
                     feats, meta=header["meta"], **tokens)
        ds.adopt_digests(header["digests"])
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile, EOFError):
        return None  # a damaged cache is rebuilt from the files
    return ds


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
        ds = _parse(c, None)
        return ds.replace(name=c["name"], meta=_card_meta(c, ds, None))
    _check_present(c, root)
    sums = _checksums(c, root, verify_checksums, use_cache)
    path = cache_dir() / f"{c['name']}-{_cache_key(c, sums)}.npz"
    ds = _load_cache(path) if use_cache and path.is_file() else None
    if ds is None:
        ds = _parse(c, root).replace(name=c["name"])
        if use_cache:
            try:
                _save_cache(path, ds)
            except OSError as exc:
                warnings.warn(f"could not write the dataset cache {path}: {exc}", stacklevel=2)
    return ds.replace(checksums=sums, meta=_card_meta(c, ds, root))


def _load_path(path: Path, use_cache=True) -> Dataset:
    """A directory in auto-detected layout, named by `readers.dataset_name_for_directory`."""
    ds = readers.read_auto(path)
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

