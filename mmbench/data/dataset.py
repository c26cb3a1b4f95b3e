"""The in-memory dataset every model, trainer and evaluator shares.

Splits are binary users x items CSR matrices (float32 ones; scipy's index dtype, which must be the
same for indptr and indices — int32 below 2**31 stored pairs, as scipy chooses); features are float32
[n_items, d] arrays keyed by modality name. Models only ever receive `train_view()`.

A `Dataset` is frozen: its fields cannot be reassigned, the arrays of its matrices and features are
read-only, and its mappings refuse changes. So its content `fingerprint` (computed once) stays true
for the object's whole life, and whatever is keyed on it (run identities, the evaluator's plans) can
never go stale. A changed dataset is a new object: `Dataset.replace(...)` or `dataclasses.replace`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

SPLITS = ("train", "valid", "test")

# Bump when the bytes hashed by `Dataset.fingerprint` change (the parse cache keys on it).
FINGERPRINT_VERSION = 1


def to_csr(rows, cols, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary CSR with canonical dtypes (float32 ones, sorted indices, scipy's index dtype)."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    m = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_items)
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return canonical_csr(m)


def canonical_csr(m: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sort_indices()
    return m


# --------------------------------------------------------------------------- read-only pieces

class FrozenDict(dict):
    """A dict that refuses every change (a Dataset's `features`, `checksums` and `meta`).

    A dict subclass rather than `types.MappingProxyType` because run records `json.dump` these
    mappings and datasets are pickled (Dask workers) and deep-copied, which a mappingproxy refuses.
    """

    __slots__ = ()

    def _refuse(self, *args, **kwargs):
        raise TypeError("a Dataset's mappings are read-only; build a new Dataset (Dataset.replace)")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):  # pickle/copy rebuild through the constructor, not item by item
        return (type(self), (dict(self),))


def _is_frozen(a: np.ndarray) -> bool:
    """A read-only view of a read-only array that owns its memory: nobody can re-enable writing."""
    b = a.base
    return (not a.flags.writeable and isinstance(b, np.ndarray) and b.flags.owndata
            and not b.flags.writeable)


def freeze_array(a) -> np.ndarray:
    """`a` as a read-only array whose WRITEABLE flag cannot be set again (a view of a read-only owner).

    An array that owns its memory is frozen in place (the Dataset takes it over; no copy); one that
    does not (a slice, a view of someone's buffer) is copied first, since the owner could change it.
    """
    a = np.asarray(a)
    if _is_frozen(a):
        return a
    owner = a if a.flags.owndata else a.copy()
    owner.flags.writeable = False
    return owner.view()


def freeze_csr(m, shape: tuple[int, int], label: str = "split") -> sp.csr_matrix:
    """A canonical binary float32 CSR of `shape` whose data/indices/indptr are frozen arrays.

    Unsorted indices, duplicate pairs or values other than 1 are normalised on a private copy (a
    stored entry is an interaction), so equal pair sets always give equal bytes to fingerprint.
    """
    m = m if isinstance(m, sp.csr_matrix) and m.dtype == np.float32 else sp.csr_matrix(m, dtype=np.float32)
    if m.shape != tuple(shape):
        raise ValueError(f"the {label} matrix has shape {m.shape}, expected (n_users, n_items) = {tuple(shape)}")
    if not (m.has_canonical_format and bool(np.all(m.data == 1))):
        m = m.copy()
        m.sum_duplicates()
        m.eliminate_zeros()
        m.data[:] = 1.0
    idx = np.result_type(m.indptr, m.indices)
    parts = (m.data, m.indices.astype(idx, copy=False), m.indptr.astype(idx, copy=False))
    if type(m) is sp.csr_matrix and all(_is_frozen(a) and a is b for a, b in
                                         zip(parts, (m.data, m.indices, m.indptr))):
        return m
    out = sp.csr_matrix(tuple(freeze_array(a) for a in parts), shape=m.shape, copy=False)
    for attr in ("data", "indices", "indptr"):  # in case scipy re-wrapped one while checking it
        setattr(out, attr, freeze_array(getattr(out, attr)))
    out.has_canonical_format = True
    return out


def _shared_csr(m: sp.csr_matrix) -> sp.csr_matrix:
    """A new matrix object over the same read-only arrays: changing the object (say `m.indices = x`,
    or inserting a pair) cannot reach the Dataset's own matrix."""
    out = sp.csr_matrix((m.data, m.indices, m.indptr), shape=m.shape, copy=False)
    out.has_canonical_format = True
    return out


# --------------------------------------------------------------------------- fingerprint parts

def index_digest(m: sp.csr_matrix) -> str:
    """sha256 of a CSR's structure: for indptr then indices, int64-le(length) + the values as int64-le.

    The values (all ones) are not hashed: `freeze_csr` guarantees them. int32 or int64 storage gives
    the same digest.
    """
    h = hashlib.sha256()
    for a in (m.indptr, m.indices):
        a = np.ascontiguousarray(a, dtype="<i8")
        h.update(np.int64(a.size).astype("<i8").tobytes())
        h.update(a)
    return h.hexdigest()


def array_digest(a: np.ndarray) -> str:
    """sha256 of ascii(dtype.str) + NUL + int64-le(ndim) + int64-le(each dim) + the C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(a.dtype.str.encode("ascii") + b"\0")
    h.update(np.asarray([a.ndim, *a.shape], dtype="<i8").tobytes())
    h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


# --------------------------------------------------------------------------- the dataset

@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    features: Mapping[str, np.ndarray] = field(default_factory=dict)
    checksums: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)  # card facts: provenance, missing modalities, layout
    # Original id tokens per dense index when the files' ids are not already 0..n-1 (ML-100K).
    user_tokens: np.ndarray | None = None
    item_tokens: np.ndarray | None = None
    # Cache of the fingerprint's part digests, filled on first use: {("split", s) | ("feature", m): hex}.
    _digests: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        put = object.__setattr__  # the one place a frozen Dataset's fields are normalised
        n_users, n_items = int(self.n_users), int(self.n_items)
        put(self, "n_users", n_users)
        put(self, "n_items", n_items)
        for s in SPLITS:
            put(self, s, freeze_csr(getattr(self, s), (n_users, n_items), s))
        put(self, "features", FrozenDict({str(m): freeze_array(f) for m, f in self.features.items()}))
        put(self, "checksums", FrozenDict(self.checksums))
        put(self, "meta", FrozenDict(self.meta))
        for attr in ("user_tokens", "item_tokens"):
            if getattr(self, attr) is not None:
                put(self, attr, freeze_array(getattr(self, attr)))

    def __reduce__(self):  # pickle/deepcopy through the constructor, so copies are frozen too
        return (Dataset, (self.name, self.n_users, self.n_items, self.train, self.valid, self.test,
                          dict(self.features), dict(self.checksums), dict(self.meta),
                          self.user_tokens, self.item_tokens))

    # ---- identity ------------------------------------------------------------------------------
    def part_digests(self) -> dict:
        """{"splits": {split: index_digest}, "features": {modality: array_digest}}, each hashed once."""
        d = self._digests
        for s in SPLITS:
            if ("split", s) not in d:
                d[("split", s)] = index_digest(getattr(self, s))
        for m, f in self.features.items():
            if ("feature", m) not in d:
                d[("feature", m)] = array_digest(f)
        return {"splits": {s: d[("split", s)] for s in SPLITS},
                "features": {m: d[("feature", m)] for m in self.features}}

    @property
    def fingerprint(self) -> str:
        """sha256 (64 hex) of the loaded CONTENT: sizes, the three splits' pairs, the features.

        = sha256 of the UTF-8 JSON (sorted keys, separators "," and ":") of
        {"version": 1, "n_users": U, "n_items": I, "splits": {split: index_digest},
         "features": [[modality, array_digest], ...] sorted by modality}.
        Not covered: the name, checksums, meta and id tokens (two copies of the same data in two
        folders are the same data). Generated splits and derived features are covered as loaded.
        """
        fp = self._digests.get("fingerprint")
        if fp is None:
            parts = self.part_digests()
            doc = {"version": FINGERPRINT_VERSION, "n_users": self.n_users, "n_items": self.n_items,
                   "splits": parts["splits"], "features": sorted(parts["features"].items())}
            text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
            fp = self._digests["fingerprint"] = hashlib.sha256(text.encode()).hexdigest()
        return fp

    def replace(self, **changes) -> "Dataset":
        """`dataclasses.replace` that keeps the cached digests of the parts it leaves unchanged, so
        renaming, re-labelling or selecting modalities never re-hashes the arrays."""
        new = dataclasses.replace(self, **changes)
        for key, digest in self._digests.items():
            if key == "fingerprint":
                continue
            kind, part = key
            old = getattr(self, part) if kind == "split" else self.features.get(part)
            now = getattr(new, part) if kind == "split" else new.features.get(part)
            if now is old:
                new._digests[key] = digest
        return new

    # ---- access ---------------------------------------------------------------------------------
    def split(self, name: str) -> sp.csr_matrix:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def statistics(self) -> dict:
        train_user_deg = np.diff(self.train.indptr)
        train_item_deg = np.asarray(self.train.sum(axis=0)).ravel()
        n_inter = {s: int(self.split(s).nnz) for s in SPLITS}
        total = sum(n_inter.values())
        return {
            "n_users": int(self.n_users),
            "n_items": int(self.n_items),
            "interactions": n_inter,
            "density": total / float(self.n_users * self.n_items) if self.n_users and self.n_items else 0.0,
            "users_without_train": int((train_user_deg == 0).sum()),
            "items_without_train": int((train_item_deg == 0).sum()),
            "valid_users": int((np.diff(self.valid.indptr) > 0).sum()),
            "test_users": int((np.diff(self.test.indptr) > 0).sum()),
            "modalities": {m: list(f.shape) for m, f in self.features.items()},
        }

    # ---- derived datasets -----------------------------------------------------------------------
    def select_modalities(self, names: list[str] | None) -> "Dataset":
        """The dataset with only the named modalities (unknown names are an error); its fingerprint
        covers those features only, since a model run on image alone did not see image+audio."""
        if names is None:
            return self
        from mmbench.errors import ConfigError

        unknown = [n for n in names if n not in self.features]
        if unknown:
            raise ConfigError(
                f"modalities {unknown} not in dataset {self.name!r} (has {self.modalities})"
            )
        return self.replace(features={n: self.features[n] for n in names})

    def without_test(self) -> "Dataset":
        """The dataset as the training phase may see it: the test split emptied (same shape)."""
        return self.replace(test=sp.csr_matrix(self.test.shape, dtype=np.float32))

    def train_view(self) -> "TrainData":
        """What a model gets: the train split (a matrix object of its own over the read-only arrays,
        so no model can change the dataset's) and the read-only features."""
        return TrainData(self.n_users, self.n_items, _shared_csr(self.train), self.features, self.name,
                         self.fingerprint)


@dataclass(frozen=True)
class TrainData:
    """What a model may see: the training interactions and the item features, nothing else."""

    n_users: int
    n_items: int
    train: sp.csr_matrix
    features: Mapping[str, np.ndarray]
    name: str = ""
    fingerprint: str = ""  # of the Dataset it was taken from (content identity, for logging/caches)
