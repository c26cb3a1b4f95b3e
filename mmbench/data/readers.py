"""One reader per on-disk layout, each returning a validated `Dataset`.

Layouts: MMSSL/LATTICE (JSON splits + `*_feat.npy`), MMRec (`.inter` TSV with `x_label` + `.npy`),
MovieLens-100K from the RecBole wheel (seeded per-user split, content features built here), and
`read_auto` to pick the layout of a directory. Parsing and checks live in `validate.py`; this module
only wires files to splits and modalities, so every layout gets the same validation.
"""
from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import numpy as np

from mmbench import safeio
from mmbench.data.dataset import SPLITS, Dataset, to_csr
from mmbench.data import validate as V
from mmbench.errors import ConfigError, DataError

# Bump when parsing changes what a reader returns or the parse cache's format: the registry keys
# its parse cache on it. 2: the cache stores the fingerprint's part digests. 3: it also stores its
# key and the source files' checksums, and loading refuses empty valid/test splits.
READER_VERSION = 3

# MMSSL's file stem for each split (the valid split lives in `val.json`).
JSON_SPLIT_FILES = {"train": "train.json", "valid": "val.json", "test": "test.json"}


# --------------------------------------------------------------------------- shared

def build_dataset(name: str, splits: dict, features: dict, meta: dict,
                  user_tokens=None, item_tokens=None, n_items: int | None = None) -> Dataset:
    """Validate parsed arrays and assemble the Dataset.

    splits: {split: (users, items, source)}; features: {modality: (float32 array, source)}.
    n_users / n_items = max id + 1 over every split and the feature rows (zero-degree ids are kept).
    """
    n_rows = V.check_feature_rows(features)
    all_items = np.concatenate([s[1] for s in splits.values()])
    if n_rows is not None:
        labels = ", ".join(src for _, src in features.values())
        for users, items, src in splits.values():
            V.check_items_in_features(items, n_rows, src, labels)
    max_item = int(all_items.max()) + 1 if all_items.size else 0
    n_items = max(max_item, n_rows or 0, n_items or 0)
    all_users = np.concatenate([s[0] for s in splits.values()])
    n_users = int(all_users.max()) + 1 if all_users.size else 0
    if user_tokens is not None:
        n_users = max(n_users, len(user_tokens))
    V.check_splits(splits, max(n_items, 1))
    mats = {s: to_csr(splits[s][0], splits[s][1], n_users, n_items) for s in SPLITS}
    feats = {m: arr for m, (arr, _) in features.items()}
    return Dataset(name, n_users, n_items, mats["train"], mats["valid"], mats["test"], feats,
                   meta=meta, user_tokens=user_tokens, item_tokens=item_tokens)


def _load_features(directory: Path, mapping: dict[str, str]) -> dict:
    return {m: (V.load_feature(directory / f), str(directory / f)) for m, f in mapping.items()}


def _meta(layout: str, directory: Path, files: list[str], **extra) -> dict:
    return {"layout": layout, "directory": str(directory), "files": sorted(files), **extra}


def split_per_user(users: np.ndarray, items: np.ndarray, n_users: int, seed: int) -> dict:
    """Seeded per-user split (the MMRec/LATTICE rule), returned as {split: (users, items)}.

    Each user's items (taken in item-id order, so the input order does not matter) are shuffled with
    `np.random.default_rng(seed)`; n < 10: n-2 train / 1 valid / 1 test; n >= 10: valid + test =
    floor(0.2 n), valid = floor of half of that, test = the rest. Users with fewer than 3
    interactions keep all of them in train.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    keys = np.random.default_rng(seed).random(len(users))
    order = np.lexsort((keys, users))
    users, items = users[order], items[order]
    counts = np.bincount(users, minlength=n_users)
    rank = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)
    n = counts[users]
    held = np.where(n < 10, 2, (2 * n) // 10)
    held = np.where(n < 3, 0, held)
    n_valid = held // 2
    n_train = n - held
    label = np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2))
    return {s: (users[label == k], items[label == k]) for k, s in enumerate(SPLITS)}


# --------------------------------------------------------------------------- MMSSL / LATTICE

def _json_prefix(directory: Path, name: str | None) -> str:
    if (directory / "train.json").is_file():
        return ""
    found = sorted(p.name[: -len("train.json")] for p in directory.glob("*_train.json"))
    if name is not None and f"{name}_" in found:
        return f"{name}_"
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{directory}: missing file train.json (or <prefix>_train.json)")
    raise DataError(f"{directory}: several JSON layouts ({', '.join(p + 'train.json' for p in found)}); "
                    f"name one with the prefix argument")


def read_mmssl(directory, name: str | None = None, prefix: str | None = None,
               feature_files: dict[str, str] | None = None) -> Dataset:
    """MMSSL/LATTICE layout: `[prefix]train.json`, `val.json`, `test.json` + `[prefix]*_feat.npy`.

    Without `feature_files` every `<prefix><modality>_feat.npy` is a modality.
    """
    directory = V.require_dir(Path(directory))
    if prefix is None:
        prefix = _json_prefix(directory, name)
    if feature_files is None:
        feature_files = {p.name[len(prefix): -len("_feat.npy")]: p.name
                         for p in sorted(directory.glob(f"{prefix}*_feat.npy"))}
    splits = {}
    for split, fname in JSON_SPLIT_FILES.items():
        path = directory / f"{prefix}{fname}"
        users, items = V.load_json_split(path)
        splits[split] = (users, items, str(path))
    features = _load_features(directory, feature_files)
    files = [f"{prefix}{f}" for f in JSON_SPLIT_FILES.values()] + list(feature_files.values())
    name = name or prefix.rstrip("_") or directory.name
    return build_dataset(name, splits, features, _meta("mmssl", directory, files, prefix=prefix))


# --------------------------------------------------------------------------- MMRec

def _find_inter(directory: Path, name: str | None) -> Path:
    if name is not None and (directory / f"{name}.inter").is_file():
        return directory / f"{name}.inter"
    found = sorted(directory.glob("*.inter"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{directory}: no .inter file")
    raise DataError(f"{directory}: several .inter files ({', '.join(p.name for p in found)}); "
                    f"name one with inter_file")


def default_npy_modalities(directory: Path) -> dict[str, str]:
    """Each `*.npy` is a modality named by its stem, with a `_feat` suffix stripped."""
    out: dict[str, str] = {}
    for p in sorted(directory.glob("*.npy")):
        mod = p.stem[: -len("_feat")] if p.stem.endswith("_feat") else p.stem
        if mod in out:
            raise DataError(f"{directory}: {out[mod]} and {p.name} both give modality {mod!r}; "
                            f"pass feature_files")
        out[mod] = p.name
    return out


def read_mmrec(directory, name: str | None = None, inter_file: str | None = None,
               feature_files: dict[str, str] | None = None) -> Dataset:
    """MMRec layout: one `<name>.inter` TSV (userID, itemID, x_label 0/1/2) + feature `.npy` files."""
    directory = V.require_dir(Path(directory))
    inter = directory / inter_file if inter_file else _find_inter(directory, name)
    if feature_files is None:
        feature_files = default_npy_modalities(directory)
    parsed = V.load_inter(inter)
    splits = {s: (u, i, str(inter)) for s, (u, i) in parsed.items()}
    features = _load_features(directory, feature_files)
    files = [inter.name] + list(feature_files.values())
    return build_dataset(name or inter.stem, splits, features,
                         _meta("mmrec", directory, files, inter_file=inter.name))


# --------------------------------------------------------------------------- MovieLens-100K

def ml100k_dir() -> Path:
    """The `dataset_example/ml-100k` folder of the installed recbole wheel, found without importing it."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("ml100k: the recbole package is not installed (pip install recbole==1.2.1)")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"


ML100K_FILES = ("ml-100k.inter", "ml-100k.item")


def read_ml100k(split_seed: int = 2024, directory=None, text_dim: int = 64) -> Dataset:
    """MovieLens-100K (RecBole atomic files): every rating is an interaction, seeded per-user split.

    Content modalities: `text` = TF-IDF of "title (year) genres" -> TruncatedSVD(text_dim), `genre` =
    multi-hot genres. Dense ids follow the integer order of the tokens; all `.item` items are kept.
    """
    import pandas as pd

    directory = Path(directory) if directory is not None else ml100k_dir()
    inter_path, item_path = (V.require_file(directory / f) for f in ML100K_FILES)
    try:
        with safeio.open_regular(inter_path, "data", DataError) as fh:
            inter = pd.read_csv(fh, sep="\t", dtype=str, usecols=[0, 1])
        with safeio.open_regular(item_path, "data", DataError) as fh:
            item = pd.read_csv(fh, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"{directory}: malformed RecBole atomic file ({V.one_line(exc)})") from None
    u_tok = V.int_column(inter.iloc[:, 0], inter_path, "user_id")
    i_tok = V.int_column(inter.iloc[:, 1], inter_path, "item_id")
    item_ids = V.int_column(item.iloc[:, 0], item_path, "item_id")
    unknown = np.setdiff1d(i_tok, item_ids)
    if unknown.size:
        raise DataError(f"{inter_path}: item {int(unknown[0])} is not in {item_path.name}")
    user_tokens = np.unique(u_tok)
    item_tokens = np.unique(item_ids)
    if item_tokens.size != item_ids.size:
        raise DataError(f"{item_path}: duplicate item ids")
    users = np.searchsorted(user_tokens, u_tok)
    items = np.searchsorted(item_tokens, i_tok)
    parts = split_per_user(users, items, len(user_tokens), split_seed)
    splits = {s: (u, i, str(inter_path)) for s, (u, i) in parts.items()}
    item = item.iloc[np.argsort(item_ids, kind="stable")]
    features = {m: (arr, str(item_path)) for m, arr in _ml100k_features(item, text_dim).items()}
    meta = _meta("ml100k", directory, list(ML100K_FILES), split_seed=split_seed)
    return build_dataset("ml100k", splits, features, meta, user_tokens=user_tokens,
                         item_tokens=item_tokens)


def _ml100k_features(item, text_dim: int) -> dict[str, np.ndarray]:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    title, year, genres = (item.iloc[:, k].to_numpy(dtype=str) for k in (1, 2, 3))
    docs = [f"{t} ({y}) {g}" if y else f"{t} {g}" for t, y, g in zip(title, year, genres)]
    tfidf = TfidfVectorizer().fit_transform(docs)
    text = TruncatedSVD(n_components=text_dim, random_state=0).fit_transform(tfidf)
    genre_lists = [g.split() for g in genres]
    vocab = sorted({g for gs in genre_lists for g in gs})
    col = {g: k for k, g in enumerate(vocab)}
    genre = np.zeros((len(genre_lists), len(vocab)), dtype=np.float32)
    for row, gs in enumerate(genre_lists):
        genre[row, [col[g] for g in gs]] = 1.0
    return {"text": V.check_feature(text, "ml100k text"), "genre": genre}


# --------------------------------------------------------------------------- loaded datasets

def split_sources(meta: dict, name: str = "dataset") -> dict[str, str]:
    """The file each split of a read dataset came from (for messages), rebuilt from its `meta`."""
    layout = meta.get("layout")
    directory = Path(str(meta.get("directory") or "."))
    if layout == "mmssl":
        prefix = meta.get("prefix", "")
        return {s: str(directory / f"{prefix}{f}") for s, f in JSON_SPLIT_FILES.items()}
    if layout == "mmrec":
        inter = directory / str(meta.get("inter_file"))
        return {s: f"{inter} (x_label {code})" for code, s in V.X_LABELS.items()}
    if layout == "ml100k":
        return {s: f"{directory / ML100K_FILES[0]} (split seed {meta.get('split_seed')})" for s in SPLITS}
    return {s: f"dataset {name}" for s in SPLITS}


def require_all_splits(ds: Dataset) -> Dataset:
    """`ds` when its train, valid and test splits all hold interactions, else a DataError naming the
    file of the empty split. Loading (not parsing) checks it: a test split may be emptied on
    purpose later (`Dataset.without_test`), never by a file."""
    V.check_split_rows({s: ds.split(s).nnz for s in SPLITS}, split_sources(dict(ds.meta), ds.name))
    return ds


# --------------------------------------------------------------------------- auto-detection

def detect_layout(directory) -> str:
    """'mmssl' when JSON splits are present (they win), 'mmrec' for exactly one `.inter`."""
    directory = V.require_dir(Path(directory))
    if (directory / "train.json").is_file() or any(directory.glob("*_train.json")):
        return "mmssl"
    inters = list(directory.glob("*.inter"))
    if len(inters) == 1:
        return "mmrec"
    if inters:
        raise DataError(f"{directory}: several .inter files ({', '.join(sorted(p.name for p in inters))}); "
                        f"cannot tell which dataset to read")
    raise DataError(f"{directory}: no recognised dataset layout (expected train.json/val.json/test.json "
                    f"or one <name>.inter)")


def dataset_name_for_directory(path) -> str:
    """The name of a dataset loaded from a directory: the lower-cased basename of its RESOLVED path,
    every character outside [a-z0-9_-] turned into `-` (`.` -> the current folder's name,
    `data/` -> `data`, `My Data.v2` -> `my-data-v2`). The name labels run folders and reports, so it
    must never be empty (`/` has no basename: a ConfigError) nor hold path or shell characters.
    """
    resolved = Path(path).expanduser().resolve()
    name = re.sub(r"[^a-z0-9_-]", "-", resolved.name.lower())
    if not name:
        raise ConfigError(f"{path}: a dataset directory needs a name, and {resolved} has none; "
                          f"move the files into a named folder")
    return name


def read_auto(path, name: str | None = None) -> Dataset:
    """Read a directory in whichever layout it holds, named `name` or by `dataset_name_for_directory`.

    `name` also picks the `<name>_*.json` / `<name>.inter` files where a folder holds several.
    """
    label = name or dataset_name_for_directory(path)
    layout = detect_layout(path)
    ds = read_mmssl(path, name) if layout == "mmssl" else read_mmrec(path, name)
    return ds if ds.name == label else ds.replace(name=label)
