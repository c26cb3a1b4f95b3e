"""Readers: layouts on small fixtures, the per-user split rule, ML-100K, synthetic, and the real files."""
import copy
import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from mmbench.data.dataset import Dataset, index_digest, to_csr
from mmbench.data.readers import (dataset_name_for_directory, detect_layout, read_auto, read_ml100k,
                                  read_mmrec, read_mmssl, split_per_user)
from mmbench.data.synthetic import make_synthetic
from mmbench.errors import ConfigError, DataError

LFM_FEATURES = {"text": "all-MiniLM-L6-v2.npy", "audio": "vggish.npy", "audio_whisper": "whisper.npy"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_CACHE_DIR", str(tmp_path / "cache"))


def real_dir(sub: str) -> Path:
    root = os.environ.get("MMBENCH_DATA_DIR")
    if not root:
        pytest.skip("real-data test: set MMBENCH_DATA_DIR to the shared data (e.g. ../shared/data)")
    path = Path(root) / sub
    if not path.is_dir():
        pytest.skip(f"real-data test: {path} is absent")
    return path


def same_splits(a, b):
    return all((a.split(s) != b.split(s)).nnz == 0 for s in ("train", "valid", "test"))


def write_json(d, prefix="", train=None, val=None, test=None):
    d.mkdir(exist_ok=True)
    for f, v in (("train", train or {"0": [0, 1], "2": [3]}), ("val", val or {"0": [2]}),
                 ("test", test or {"1": [4]})):
        (d / f"{prefix}{f}.json").write_text(json.dumps(v))
    return d


# ---------------------------------------------------------------- MMSSL layout

def test_mmssl_layout_features_and_ids(tmp_path):
    d = write_json(tmp_path / "d")
    np.save(d / "image_feat.npy", np.arange(14, dtype=np.float16).reshape(7, 2))
    np.save(d / "text_feat.npy", np.ones((7, 3), dtype=np.float64))
    ds = read_mmssl(d)
    assert ds.name == "d" and (ds.n_users, ds.n_items) == (3, 7)  # items 5, 6 only in features
    assert ds.valid.nnz == 1 and ds.valid[0, 2] == 1  # val.json is the valid split
    assert ds.test[1, 4] == 1 and np.diff(ds.train.indptr)[1] == 0  # user 1: no train, kept
    assert sorted(ds.features) == ["image", "text"]
    assert all(f.dtype == np.float32 for f in ds.features.values())
    assert ds.features["image"][3, 1] == 7
    assert ds.train.indptr.dtype == ds.train.indices.dtype and ds.train.has_sorted_indices
    assert ds.meta["layout"] == "mmssl" and "val.json" in ds.meta["files"]


def test_mmssl_prefix_detected_and_explicit(tmp_path):
    d = write_json(tmp_path / "amazon", prefix="baby_")
    ds = read_mmssl(d)
    assert ds.name == "baby" and ds.meta["prefix"] == "baby_" and ds.features == {}
    write_json(d, prefix="toys_")
    with pytest.raises(DataError, match="several JSON layouts"):
        read_mmssl(d)
    assert read_mmssl(d, prefix="toys_").name == "toys"
    assert read_mmssl(d, name="baby").meta["prefix"] == "baby_"


def test_mmssl_prefixed_features(tmp_path):
    d = write_json(tmp_path / "d", prefix="baby_")
    np.save(d / "baby_image_feat.npy", np.ones((5, 2)))
    assert list(read_mmssl(d).features) == ["image"]


# ---------------------------------------------------------------- MMRec layout

def test_mmrec_layout_extra_columns_and_features(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "toy.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n"
                                 "0\t0\t5\t1\t0\n0\t1\t3\t2\t0\n1\t2\t4\t3\t0\n0\t2\t1\t4\t1\n3\t3\t1\t5\t2\n")
    np.save(d / "image_feat.npy", np.zeros((6, 4), dtype=np.float64))
    np.save(d / "vggish.npy", np.zeros((6, 2), dtype=np.float32))
    ds = read_mmrec(d)
    assert ds.name == "toy" and (ds.n_users, ds.n_items) == (4, 6)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (3, 1, 1)
    assert sorted(ds.features) == ["image", "vggish"]  # `_feat` suffix stripped
    ds = read_mmrec(d, feature_files={"audio": "vggish.npy"})
    assert list(ds.features) == ["audio"]
    assert read_mmrec(d, feature_files={}).features == {}


def test_mmrec_picks_named_inter(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for n in ("a", "b"):
        (d / f"{n}.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    with pytest.raises(DataError, match="several .inter files"):
        read_mmrec(d)
    assert read_mmrec(d, "b").name == "b"
    assert read_mmrec(d, inter_file="a.inter").name == "a"


def test_read_auto_prefers_json(tmp_path):
    d = write_json(tmp_path / "d")
    (d / "d.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    assert detect_layout(d) == "mmssl" and read_auto(d).train.nnz == 3
    for f in ("train", "val", "test"):
        (d / f"{f}.json").unlink()
    assert detect_layout(d) == "mmrec" and read_auto(d).train.nnz == 1


def test_read_auto_unrecognised(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match=f"{tmp_path}: no recognised dataset layout"):
        read_auto(tmp_path)


# ---------------------------------------------------------------- directory names

def test_dataset_name_for_directory(tmp_path, monkeypatch):
    d = tmp_path / "My Data.v2"
    d.mkdir()
    assert dataset_name_for_directory(d) == "my-data-v2"
    assert dataset_name_for_directory(f"{d}/") == "my-data-v2"  # a trailing slash changes nothing
    monkeypatch.chdir(d)
    assert dataset_name_for_directory(".") == "my-data-v2"  # `.` is named by its resolved path
    assert dataset_name_for_directory("./") == "my-data-v2"
    with pytest.raises(ConfigError, match="needs a name") as info:
        dataset_name_for_directory("/")
    assert "\n" not in str(info.value)


def test_read_auto_names_by_directory(tmp_path, monkeypatch):
    d = write_json(tmp_path / "Toy Set")
    assert read_auto(d).name == "toy-set" and read_mmssl(d).name == "Toy Set"
    monkeypatch.chdir(d)
    assert read_auto(".").name == "toy-set"
    assert read_auto(".", name="mine").name == "mine"  # an explicit name wins
    with pytest.raises(ConfigError, match="needs a name"):
        read_auto("/")  # before any file of the root is looked at


# ---------------------------------------------------------------- fingerprint and freezing

def two_modalities(tmp_path, name="d"):
    d = write_json(tmp_path / name)
    np.save(d / "image_feat.npy", np.arange(14, dtype=np.float32).reshape(7, 2))
    np.save(d / "text_feat.npy", np.linspace(0, 1, 21, dtype=np.float32).reshape(7, 3))
    return d


def test_fingerprint_is_of_the_loaded_content(tmp_path):
    d = two_modalities(tmp_path)
    ds = read_mmssl(d)
    fp = ds.fingerprint
    assert len(fp) == 64 and int(fp, 16) >= 0 and ds.fingerprint is fp  # hashed once
    other = tmp_path / "copy"
    shutil.copytree(d, other)
    assert read_mmssl(other).name == "copy" and read_mmssl(other).fingerprint == fp  # name: not content
    (other / "test.json").write_text(json.dumps({"1": [5]}))  # one interaction changed
    assert read_mmssl(other).fingerprint != fp
    shutil.copy(d / "test.json", other / "test.json")
    feat = np.load(other / "text_feat.npy")
    feat[6, 2] += 1e-3  # one feature value changed
    np.save(other / "text_feat.npy", feat)
    assert read_mmssl(other).fingerprint != fp
    np.save(other / "text_feat.npy", feat[:, :2])  # same rows, another width
    assert read_mmssl(other).fingerprint != fp


def test_fingerprint_ignores_storage_details(tmp_path):
    ds = read_mmssl(two_modalities(tmp_path))

    def int64(m):
        m = sp.csr_matrix(m, copy=True)
        m.indices, m.indptr = m.indices.astype(np.int64), m.indptr.astype(np.int64)
        return m

    assert ds.train.indices.dtype == np.int32 and int64(ds.train).indices.dtype == np.int64
    assert index_digest(int64(ds.train)) == index_digest(ds.train)
    wide = Dataset("other", ds.n_users, ds.n_items, int64(ds.train), int64(ds.valid), int64(ds.test),
                   dict(reversed(list(ds.features.items()))))
    assert list(wide.features) == ["text", "image"] and wide.fingerprint == ds.fingerprint
    # unsorted indices, a duplicate pair and a non-one value are normalised to the same binary CSR
    rows, cols = [0, 0, 2, 0], [1, 0, 3, 1]
    messy = sp.csr_matrix((np.array([2.0, 1, 1, 1]), (rows, cols)), shape=(3, 7))
    same = dataclasses.replace(ds, train=messy)
    assert same.fingerprint == ds.fingerprint and set(same.train.data) == {1.0}
    with pytest.raises(ValueError, match=r"train matrix has shape \(3, 8\)"):
        dataclasses.replace(ds, train=sp.csr_matrix((3, 8), dtype=np.float32))


def test_select_modalities_has_its_own_fingerprint(tmp_path):
    ds = read_mmssl(two_modalities(tmp_path))
    image = ds.select_modalities(["image"])
    assert list(image.features) == ["image"] and image.fingerprint != ds.fingerprint
    alone = Dataset("x", ds.n_users, ds.n_items, ds.train, ds.valid, ds.test, {"image": ds.features["image"]})
    assert alone.fingerprint == image.fingerprint
    assert ds.select_modalities(["text", "image"]).fingerprint == ds.fingerprint  # sorted names
    assert ds.select_modalities(None) is ds
    assert ds.train_view().fingerprint == ds.fingerprint


def test_synthetic_fingerprint_follows_generation_parameters():
    kw = dict(n_users=40, n_items=30, seed=1)
    base = make_synthetic(**kw)
    assert make_synthetic(**kw).fingerprint == base.fingerprint
    for change in ({"seed": 2}, {"split_seed": 5}, {"feature_noise": 0.9}, {"density": 0.2},
                   {"temperature": 2.0}, {"n_factors": 4}, {"modalities": {"image": 32, "text": 8}}):
        assert make_synthetic(**{**kw, **change}).fingerprint != base.fingerprint, change


def test_a_dataset_cannot_be_changed():
    ds = make_synthetic(n_users=30, n_items=20, seed=0)
    fp = ds.fingerprint
    for field in ("name", "train", "features", "meta"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(ds, field, getattr(ds, field))
    arrays = [ds.train.data, ds.train.indices, ds.train.indptr, ds.valid.indices, ds.test.data,
              ds.features["image"], ds.features["text"]]
    for arr in arrays:
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = arr[0]
        with pytest.raises(ValueError):
            arr.flags.writeable = True  # and nobody can switch writing back on
    with pytest.raises(ValueError, match="read-only"):
        ds.features["image"] *= 2
    with pytest.raises(ValueError):
        ds.train[0, int(ds.train[0].indices[0])] = 5  # an existing entry lives in the read-only data
    for mapping in (ds.features, ds.checksums, ds.meta):
        with pytest.raises(TypeError, match="read-only"):
            mapping["x"] = 1
        with pytest.raises(TypeError, match="read-only"):
            mapping.update({})
    view = ds.train_view()
    with pytest.raises(ValueError, match="read-only"):
        view.train.data[:] = 2.0
    with pytest.raises(ValueError, match="read-only"):
        view.features["text"][0, 0] = 1.0
    view.train.indices = np.zeros_like(view.train.indices)  # the model's own matrix object only
    assert dataclasses.replace(ds).fingerprint == fp  # re-hashed from the arrays: unchanged
    assert json.loads(json.dumps({"meta": ds.meta}))["meta"]["layout"] == "synthetic"
    for twin in (pickle.loads(pickle.dumps(ds)), copy.deepcopy(ds)):
        assert twin.fingerprint == fp and not twin.train.indices.flags.writeable
        assert not twin.features["image"].flags.writeable and isinstance(twin.meta, type(ds.meta))


def test_scipy_operations_work_on_frozen_splits():
    ds = make_synthetic(n_users=30, n_items=20, seed=0)
    both = ds.train + ds.valid
    assert both.nnz == ds.train.nnz + ds.valid.nnz
    assert (ds.train.T.tocsr().T != ds.train).nnz == 0
    assert ds.train[[0, 1]].shape == (2, 20) and ds.train.sum() == ds.train.nnz
    assert (ds.train.multiply(ds.train) != ds.train).nnz == 0 and ds.train.tocoo().nnz == ds.train.nnz
    own = sp.csr_matrix(ds.train)
    own.sort_indices()
    own.sum_duplicates()  # canonical already: no write is attempted
    assert ds.train.copy().data.flags.writeable  # a copy is the caller's to change


def test_dataset_takes_over_arrays_it_is_given():
    owned = np.ones((4, 2), dtype=np.float32)
    base = np.zeros((4, 4), dtype=np.float32)
    ds = Dataset("x", 1, 4, to_csr([0], [1], 1, 4), to_csr([], [], 1, 4), to_csr([0], [2], 1, 4),
                 {"a": owned, "b": base[:, :2]})
    assert not owned.flags.writeable  # frozen in place, not copied
    base[:] = 7  # a view of someone else's memory was copied: the dataset keeps its content
    assert ds.features["b"].sum() == 0
    wt = ds.without_test()
    assert wt.test.nnz == 0 and wt.train is ds.train and wt.fingerprint != ds.fingerprint


def test_ml100k_fingerprint_covers_the_split_seed(ml100k):
    assert read_ml100k(split_seed=2024).fingerprint == ml100k.fingerprint
    assert read_ml100k(split_seed=7).fingerprint != ml100k.fingerprint


# ---------------------------------------------------------------- split rule

@pytest.mark.parametrize("n, expected", [(2, (2, 0, 0)), (3, (1, 1, 1)), (5, (3, 1, 1)), (9, (7, 1, 1)),
                                         (10, (8, 1, 1)), (15, (12, 1, 2)), (20, (16, 2, 2)),
                                         (99, (80, 9, 10))])
def test_split_rule(n, expected):
    parts = split_per_user(np.zeros(n, int), np.arange(n), 1, seed=7)
    assert tuple(len(parts[s][0]) for s in ("train", "valid", "test")) == expected


def test_split_deterministic_and_order_free():
    rng = np.random.default_rng(0)
    users, items = np.repeat(np.arange(50), 12), np.tile(np.arange(12), 50)
    a = split_per_user(users, items, 50, seed=1)
    perm = rng.permutation(len(users))
    b = split_per_user(users[perm], items[perm], 50, seed=1)
    c = split_per_user(users, items, 50, seed=2)
    key = lambda p: set(zip(*p))  # noqa: E731
    assert all(key(a[s]) == key(b[s]) for s in a)
    assert key(a["test"]) != key(c["test"])


# ---------------------------------------------------------------- ML-100K

@pytest.fixture(scope="module")
def ml100k():
    return read_ml100k(split_seed=2024)


def test_ml100k_shape_and_split(ml100k):
    ds = ml100k
    assert (ds.n_users, ds.n_items) == (943, 1682)
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == 100_000
    assert (np.diff(ds.valid.indptr) >= 1).all() and (np.diff(ds.test.indptr) >= 1).all()
    assert list(ds.user_tokens[:3]) == [1, 2, 3] and len(ds.item_tokens) == 1682
    assert (np.diff(ds.item_tokens) > 0).all()
    n = np.diff((ds.train + ds.valid + ds.test).indptr)
    held = np.where(n < 10, 2, (2 * n) // 10)
    assert (np.diff(ds.valid.indptr) + np.diff(ds.test.indptr) == held).all()


def test_ml100k_features(ml100k):
    text, genre = ml100k.features["text"], ml100k.features["genre"]
    assert text.shape == (1682, 64) and text.dtype == np.float32 and np.isfinite(text).all()
    assert genre.shape == (1682, 19) and genre.dtype == np.float32
    assert set(np.unique(genre)) == {0.0, 1.0} and (genre.sum(1) >= 1).all()
    assert genre[0].sum() == 3  # Toy Story: Animation Children's Comedy


def test_ml100k_deterministic(ml100k):
    again = read_ml100k(split_seed=2024)
    assert same_splits(ml100k, again)
    assert all(np.array_equal(ml100k.features[m], again.features[m]) for m in ml100k.features)


# ---------------------------------------------------------------- synthetic

def test_synthetic_shape_and_determinism():
    a, b = make_synthetic(seed=3), make_synthetic(seed=3)
    assert (a.n_users, a.n_items) == (300, 200) and same_splits(a, b)
    assert {m: f.shape for m, f in a.features.items()} == {"image": (200, 32), "text": (200, 16)}
    assert all(np.array_equal(a.features[m], b.features[m]) for m in a.features)
    n = np.diff((a.train + a.valid + a.test).indptr)
    assert n.min() >= 3 and abs(n.mean() / 200 - 0.05) < 0.01
    assert not same_splits(a, make_synthetic(seed=4))
    small = make_synthetic(n_users=20, n_items=30, modalities={"audio": 4}, seed=1)
    assert list(small.features) == ["audio"] and small.n_items == 30


def recall_at(ds, scores, k=20):
    scores = np.where(ds.train.toarray() > 0, -np.inf, scores)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    test = ds.test.toarray() > 0
    hits, n = np.take_along_axis(test, top, 1).sum(1), test.sum(1)
    return float((hits[n > 0] / n[n > 0]).mean())


def test_synthetic_features_beat_random():
    ds = make_synthetic(seed=0)
    feats = np.concatenate([(f - f.mean(0)) / f.std(0) for f in ds.features.values()], axis=1)
    train = ds.train.toarray()
    profile = train @ feats / np.maximum(train.sum(1, keepdims=True), 1)
    content = recall_at(ds, profile @ feats.T)
    rand = recall_at(ds, np.random.default_rng(0).random((ds.n_users, ds.n_items)))
    assert content > 2 * rand and content > 0.3


# ---------------------------------------------------------------- real data

def test_real_tiktok_json():
    ds = read_mmssl(real_dir("tiktok"))
    st = ds.statistics()
    assert (ds.n_users, ds.n_items) == (9308, 6710)
    assert st["interactions"] == {"train": 59541, "valid": 3051, "test": 6130}
    assert st["users_without_train"] == 10 and st["items_without_train"] == 465
    assert {m: (f.shape, f.dtype) for m, f in ds.features.items()} == \
        {"image": ((6710, 128), np.float32), "audio": ((6710, 128), np.float32)}


def test_real_tiktok_inter_equals_json():
    d = real_dir("tiktok")
    js, tsv = read_mmssl(d), read_mmrec(d, "tiktok")
    assert (tsv.n_users, tsv.n_items) == (js.n_users, js.n_items) and same_splits(js, tsv)
    assert all(np.array_equal(js.features[m], tsv.features[m]) for m in js.features)
    assert same_splits(js, read_auto(d))  # both layouts present: JSON wins
    assert tsv.fingerprint == js.fingerprint  # the same data in another layout is the same data


def test_real_lastfm2k():
    ds = read_mmrec(real_dir("lastfm2k"), "lfm2k", feature_files=LFM_FEATURES)
    assert (ds.n_users, ds.n_items) == (1858, 1425)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (44327, 4799, 7219)
    assert {m: f.shape[1] for m, f in ds.features.items()} == {"text": 384, "audio": 128, "audio_whisper": 512}
    assert all(f.dtype == np.float32 for f in ds.features.values())
    assert sorted(read_auto(real_dir("lastfm2k")).features) == ["all-MiniLM-L6-v2", "vggish", "whisper"]


def test_real_amazon():
    d = real_dir("amazon")
    sports = read_mmrec(d, "sports")
    assert (sports.n_users, sports.n_items) == (35598, 18357)
    assert sports.train.nnz + sports.valid.nnz + sports.test.nnz == 296_337
    baby = read_auto(d)  # the baby_*.json splits win over the two .inter files
    assert baby.name == "amazon" and (baby.n_users, baby.n_items) == (19445, 7050)  # the folder's name
    assert baby.train.nnz + baby.valid.nnz + baby.test.nnz == 160_792
