"""Every validation rule: a small bad dataset in tmp_path must fail with a DataError naming file + problem."""
import json
import time

import numpy as np
import pytest

from mmbench.data.readers import read_auto, read_mmrec, read_mmssl
from mmbench.errors import DataError

GOOD = {"train": {"0": [0, 1], "1": [2]}, "valid": {"0": [2]}, "test": {"1": [0]}}
FILES = {"train": "train.json", "valid": "val.json", "test": "test.json"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_CACHE_DIR", str(tmp_path / "cache"))


def write_json_ds(d, splits=None, feats=None, raw=None):
    """An MMSSL-layout dataset; `raw` = {split: text} overrides a split file with literal text."""
    d.mkdir(exist_ok=True)
    splits = {**GOOD, **(splits or {})}
    for s, f in FILES.items():
        text = (raw or {}).get(s, json.dumps(splits[s]))
        (d / f).write_text(text)
    for name, arr in (feats or {}).items():
        np.save(d / f"{name}_feat.npy", arr)
    return d


def write_inter(d, text, name="toy"):
    d.mkdir(exist_ok=True)
    (d / f"{name}.inter").write_text(text)
    return d


def fails(match, fn, *args, **kw):
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg, "a DataError is one line"
    return msg


def test_good_dataset_passes(tmp_path):
    ds = read_mmssl(write_json_ds(tmp_path / "d", feats={"image": np.ones((5, 3))}))
    assert (ds.n_users, ds.n_items) == (2, 5)  # items 3, 4 exist only in the features
    assert ds.train.nnz == 3 and ds.valid.nnz == 1 and ds.test.nnz == 1


# ---------------------------------------------------------------- files

def test_missing_split_file(tmp_path):
    d = write_json_ds(tmp_path / "d")
    (d / "val.json").unlink()
    fails(r"val\.json: missing file", read_mmssl, d)


def test_missing_directory(tmp_path):
    fails(r"nowhere: no such data directory", read_auto, tmp_path / "nowhere")


def test_missing_feature_file_in_mapping(tmp_path):
    d = write_inter(tmp_path / "d", "userID\titemID\tx_label\n0\t0\t0\n")
    fails(r"image\.npy: missing file", read_mmrec, d, feature_files={"image": "image.npy"})


def test_unreadable_npy(tmp_path):
    d = write_json_ds(tmp_path / "d")
    (d / "image_feat.npy").write_bytes(b"this is not an npy file")
    fails(r"image_feat\.npy: (unreadable|not a numeric)", read_mmssl, d)


# ---------------------------------------------------------------- JSON

def test_malformed_json(tmp_path):
    d = write_json_ds(tmp_path / "d", raw={"train": '{"0": [1, 2'})
    fails(r"train\.json: malformed JSON", read_mmssl, d)


def test_json_not_an_object(tmp_path):
    d = write_json_ds(tmp_path / "d", raw={"test": "[[0, 1]]"})
    fails(r"test\.json: malformed split, expected a JSON object", read_mmssl, d)


def test_json_user_without_list(tmp_path):
    d = write_json_ds(tmp_path / "d", splits={"valid": {"0": 2}})
    fails(r"val\.json: malformed split, user '0' maps to int", read_mmssl, d)


def test_json_non_integer_item(tmp_path):
    d = write_json_ds(tmp_path / "d", splits={"train": {"0": [0, 1.5]}})
    fails(r"train\.json: non-integer item id 1\.5", read_mmssl, d)


def test_json_string_item(tmp_path):
    d = write_json_ds(tmp_path / "d", splits={"train": {"0": [0, "7"]}})
    fails(r"train\.json: non-integer item id \"7\"", read_mmssl, d)


def test_json_non_integer_user(tmp_path):
    d = write_json_ds(tmp_path / "d", splits={"train": {"u1": [0]}})
    fails(r"train\.json: non-integer user id 'u1'", read_mmssl, d)


def test_json_negative_item(tmp_path):
    d = write_json_ds(tmp_path / "d", splits={"test": {"1": [-3]}})
    fails(r"test\.json: negative item id -3", read_mmssl, d)


def test_json_negative_user(tmp_path):
    d = write_json_ds(tmp_path / "d", splits={"test": {"-1": [0]}})
    fails(r"test\.json: negative user id -1", read_mmssl, d)


# ---------------------------------------------------------------- TSV

HEADER = "userID\titemID\tx_label\n"


def test_malformed_tsv(tmp_path):
    d = write_inter(tmp_path / "d", HEADER + "0\t0\t0\n0\t1\t0\t9\t9\n")
    fails(r"toy\.inter: malformed TSV", read_mmrec, d)


def test_empty_inter_file(tmp_path):
    d = write_inter(tmp_path / "d", "")
    fails(r"toy\.inter: empty file", read_mmrec, d)


def test_missing_required_column(tmp_path):
    d = write_inter(tmp_path / "d", "userID\titemID\n0\t0\n")
    fails(r"toy\.inter: missing required column\(s\) x_label", read_mmrec, d)


def test_tsv_non_integer_id(tmp_path):
    d = write_inter(tmp_path / "d", HEADER + "0\t0\t0\n1\tabc\t0\n")
    fails(r"toy\.inter: line 3: non-integer itemID 'abc'", read_mmrec, d)


def test_tsv_float_id(tmp_path):
    d = write_inter(tmp_path / "d", HEADER + "0\t0\t0\n1.5\t1\t0\n")
    fails(r"toy\.inter: line 3: non-integer userID '1\.5'", read_mmrec, d)


def test_tsv_empty_cell(tmp_path):
    d = write_inter(tmp_path / "d", HEADER + "0\t0\t0\n1\t\t0\n")
    fails(r"toy\.inter: line 3: non-integer itemID ''", read_mmrec, d)


def test_tsv_negative_id(tmp_path):
    d = write_inter(tmp_path / "d", HEADER + "0\t0\t0\n-2\t1\t0\n")
    fails(r"toy\.inter: negative user id -2", read_mmrec, d)


def test_unknown_x_label(tmp_path):
    d = write_inter(tmp_path / "d", HEADER + "0\t0\t0\n0\t1\t3\n")
    fails(r"toy\.inter: line 3: unknown x_label 3", read_mmrec, d)


# ---------------------------------------------------------------- features

def test_ids_beyond_feature_rows(tmp_path):
    d = write_json_ds(tmp_path / "d", feats={"image": np.ones((2, 4))})  # item 2 has no row
    fails(r"item id 2 is beyond the 2 rows of the feature files \(.*image_feat\.npy\)", read_mmssl, d)


def test_feature_rows_disagree(tmp_path):
    d = write_json_ds(tmp_path / "d", feats={"image": np.ones((4, 2)), "text": np.ones((5, 2))})
    msg = fails(r"feature files disagree in rows", read_mmssl, d)
    assert "image_feat.npy has 4" in msg and "text_feat.npy has 5" in msg


def test_feature_not_2d(tmp_path):
    d = write_json_ds(tmp_path / "d", feats={"image": np.ones((3, 2, 2))})
    fails(r"image_feat\.npy: features must be 2-D", read_mmssl, d)


def test_feature_non_numeric(tmp_path):
    d = write_json_ds(tmp_path / "d", feats={"image": np.array([["a", "b"]] * 3)})
    fails(r"image_feat\.npy: non-numeric feature dtype", read_mmssl, d)


def test_feature_object_array(tmp_path):
    d = write_json_ds(tmp_path / "d")
    np.save(d / "image_feat.npy", np.array([[1, None]] * 3, dtype=object), allow_pickle=True)
    fails(r"image_feat\.npy: not a numeric \.npy array", read_mmssl, d)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_feature_non_finite(tmp_path, bad):
    arr = np.ones((3, 2))
    arr[1, 0] = bad
    d = write_json_ds(tmp_path / "d", feats={"image": arr})
    fails(r"image_feat\.npy: 1 NaN/inf value\(s\) in features \(first in row 1\)", read_mmssl, d)


# ---------------------------------------------------------------- pairs and splits

def test_duplicate_pair_within_split_json(tmp_path):
    d = write_json_ds(tmp_path / "d", splits={"train": {"0": [0, 1, 1], "1": [2]}})
    fails(r"train\.json: duplicate pair \(user 0, item 1\) in the train split", read_mmssl, d)


def test_duplicate_pair_within_split_tsv(tmp_path):
    d = write_inter(tmp_path / "d", HEADER + "0\t0\t0\n0\t1\t2\n0\t1\t2\n")
    fails(r"toy\.inter: duplicate pair \(user 0, item 1\) in the test split", read_mmrec, d)


def test_pair_in_two_splits_json(tmp_path):
    d = write_json_ds(tmp_path / "d", splits={"test": {"0": [1]}})
    msg = fails(r"pair \(user 0, item 1\) is in both the train and test splits", read_mmssl, d)
    assert "train.json" in msg and "test.json" in msg


def test_pair_in_two_splits_tsv(tmp_path):
    d = write_inter(tmp_path / "d", HEADER + "0\t0\t0\n0\t0\t1\n")
    fails(r"toy\.inter: pair \(user 0, item 0\) is in both the train and valid splits", read_mmrec, d)


def test_empty_train_split(tmp_path):
    d = write_json_ds(tmp_path / "d", splits={"train": {}})
    fails(r"train\.json: the train split is empty", read_mmssl, d)


def test_empty_train_split_tsv(tmp_path):
    d = write_inter(tmp_path / "d", HEADER + "0\t0\t1\n0\t1\t2\n")
    fails(r"toy\.inter: the train split is empty", read_mmrec, d)


def test_validation_is_vectorised(tmp_path):
    """~300k rows (Amazon-sports scale) parse and validate well under two seconds."""
    rng = np.random.default_rng(0)
    n_users, n_items, n = 35_000, 18_000, 300_000
    keys = rng.choice(n_users * n_items, size=n, replace=False)
    labels = rng.choice(3, size=n, p=[0.8, 0.1, 0.1])
    labels[:n_users] = 0
    d = tmp_path / "big"
    d.mkdir()
    rows = np.column_stack([keys // n_items, keys % n_items, labels])
    np.savetxt(d / "big.inter", rows, fmt="%d", delimiter="\t", header="userID\titemID\tx_label",
               comments="")
    t = time.perf_counter()
    ds = read_mmrec(d)
    assert time.perf_counter() - t < 2.0
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == n
