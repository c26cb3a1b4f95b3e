"""Cards, data/cache directories, checksums, the parse cache, import, verify and the `data` CLI."""
import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmbench.data import readers, registry
from mmbench.data.synthetic import make_synthetic
from mmbench.data.cli import add_data_parser
from mmbench.errors import ConfigError, DataError

SHIPPED = {"tiktok", "lastfm2k", "ml100k", "synthetic", "sports", "clothing", "baby"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_CACHE_DIR", str(tmp_path / "cache"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A private cards folder with one MMRec card `toy` whose files live in tmp_path/src/toydir."""
    src = tmp_path / "src" / "toydir"
    src.mkdir(parents=True)
    (src / "toy.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n1\t1\t0\n0\t2\t1\n1\t3\t2\n")
    np.save(src / "image_feat.npy", np.arange(8, dtype=np.float64).reshape(4, 2))
    cards = tmp_path / "cards"
    cards.mkdir()
    c = {"name": "toy", "layout": "mmrec", "directory": "toydir", "reader": {"inter_file": "toy.inter"},
         "files": {f: sha(src / f) for f in ("toy.inter", "image_feat.npy")},
         "modalities": {"image": {"file": "image_feat.npy", "dim": 2}},
         "missing_modalities": {"text": "MISSING"},
         "provenance": "made up", "licence": "none",
         "download": {"url": "https://example.org/toy", "instructions": "get it"}}
    (cards / "toy.yaml").write_text(yaml.safe_dump(c))
    monkeypatch.setattr(registry, "cards_dir", lambda: cards)
    monkeypatch.delenv("MMBENCH_DATA_DIR", raising=False)
    return {"src": src, "data": tmp_path / "data", "card": c}


def real_data():
    root = os.environ.get("MMBENCH_DATA_DIR")
    if not root or not Path(root, "tiktok", "train.json").is_file():
        pytest.skip("real-data test: set MMBENCH_DATA_DIR to the shared data (e.g. ../shared/data)")
    return Path(root)


# ---------------------------------------------------------------- cards and directories

def test_shipped_cards_are_complete():
    assert SHIPPED <= set(registry.list_cards())
    for name in SHIPPED:
        c = registry.card(name)
        for key in ("layout", "files", "modalities", "missing_modalities", "statistics",
                    "provenance", "licence", "download"):
            assert c.get(key) is not None, f"{name}: {key}"
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in c["files"].values())
        if c["layout"] in registry.FILE_LAYOUTS:
            assert f"mmbench data import {name} --from PATH" in c["download"]["instructions"]
            assert set(m["file"] for m in c["modalities"].values()) <= set(c["files"])
    assert "text" in registry.card("tiktok")["missing_modalities"]
    assert registry.card("baby")["reader"]["prefix"] == "baby_"
    assert registry.card("ml100k")["params"]["split_seed"] == 2024


def test_card_checksums_match_shared_sha256sums():
    sums_file = real_data() / "SHA256SUMS"
    if not sums_file.is_file():
        pytest.skip(f"real-data test: {sums_file} is absent")
    known = {}
    for line in sums_file.read_text().splitlines():
        digest, path = line.split()
        known[path.removeprefix("./")] = digest
    for name in SHIPPED:
        c = registry.card(name)
        if c["layout"] in registry.FILE_LAYOUTS:
            for f, digest in c["files"].items():
                assert known[f"{c['directory']}/{f}"] == digest, f"{name}: {f}"


def test_unknown_card_lists_known_names():
    with pytest.raises(ConfigError, match=r"unknown dataset 'nope'; known datasets: .*tiktok"):
        registry.card("nope")
    with pytest.raises(ConfigError, match="not a card"):
        registry.load_dataset("nope")
    with pytest.raises(DataError, match="no such data directory"):
        registry.load_dataset("./no/such/dir")


def test_directory_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MMBENCH_DATA_DIR", raising=False)
    assert registry.data_dir() == registry.cards_dir()
    assert (registry.cards_dir() / "tiktok.yaml").is_file()
    monkeypatch.setenv("MMBENCH_DATA_DIR", str(tmp_path / "env"))
    assert registry.data_dir() == tmp_path / "env"
    assert registry.data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert registry.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("MMBENCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_dir() == tmp_path / "xdg" / "mmbench"  # the user's cache dir, never the checkout
    assert registry.cards_dir() not in registry.cache_dir().parents


# ---------------------------------------------------------------- loading a card

def test_missing_files_say_how_to_get_them(toy):
    with pytest.raises(DataError) as info:
        registry.load_dataset("toy", data_dir=toy["data"])
    msg = str(info.value)
    assert "toy.inter" in msg and "https://example.org/toy" in msg
    assert "mmbench data import toy --from PATH" in msg and "\n" not in msg


def test_load_verifies_and_caches(toy, tmp_path, monkeypatch):
    ds = registry.load_dataset("toy", data_dir=toy["src"].parent)
    assert (ds.n_users, ds.n_items, ds.train.nnz) == (2, 4, 3)
    assert ds.checksums == toy["card"]["files"]
    assert ds.meta["card"] == "toy" and ds.meta["missing_modalities"] == ["text"]
    assert ds.meta["provenance"] == "made up" and ds.features["image"].dtype == np.float32
    cached = list((tmp_path / "cache").glob("toy-*.npz"))
    assert len(cached) == 1 and not list(toy["src"].glob("*.npz"))  # never in the data dir

    def boom(*a, **k):
        raise AssertionError("parsed again instead of using the cache")
    monkeypatch.setattr(readers, "read_mmrec", boom)
    again = registry.load_dataset("toy", data_dir=toy["src"].parent)
    assert (again.train != ds.train).nnz == 0 and np.array_equal(again.features["image"], ds.features["image"])
    assert again.checksums == ds.checksums and again.meta == ds.meta


def test_checksum_mismatch_names_the_file(toy):
    with open(toy["src"] / "toy.inter", "a") as fh:
        fh.write("1\t2\t0\n")
    with pytest.raises(DataError, match=r"toy\.inter: expected [0-9a-f]{64}, got [0-9a-f]{64}"):
        registry.load_dataset("toy", data_dir=toy["src"].parent)
    ds = registry.load_dataset("toy", data_dir=toy["src"].parent, verify_checksums=False)
    assert ds.train.nnz == 4  # the changed file was parsed, not served from a stale cache


def test_damaged_cache_is_rebuilt(toy, tmp_path):
    registry.load_dataset("toy", data_dir=toy["src"].parent)
    (npz,) = (tmp_path / "cache").glob("toy-*.npz")
    npz.write_bytes(b"garbage")
    assert registry.load_dataset("toy", data_dir=toy["src"].parent).train.nnz == 3


def test_invalid_data_writes_no_cache(toy, tmp_path):
    (toy["src"] / "toy.inter").write_text("userID\titemID\tx_label\n0\t0\t7\n")
    with pytest.raises(DataError, match="unknown x_label 7"):
        registry.load_dataset("toy", data_dir=toy["src"].parent, verify_checksums=False)
    assert not list((tmp_path / "cache").glob("toy-*.npz"))


def test_load_directory_path(toy):
    ds = registry.load_dataset(str(toy["src"]))
    assert ds.name == "toydir" and ds.meta["card"] is None and list(ds.features) == ["image"]
    assert ds.checksums == toy["card"]["files"]


def test_directory_dataset_names(toy, monkeypatch):
    monkeypatch.chdir(toy["src"])
    assert registry.load_dataset(".").name == "toydir"  # `--dataset .` is named by the resolved path
    assert registry.load_dataset(f"{toy['src']}/").name == "toydir"
    with pytest.raises(ConfigError, match="needs a name") as info:
        registry.load_dataset("/")
    assert "\n" not in str(info.value)


def test_a_cache_rewritten_with_other_valid_data_is_rebuilt(toy, tmp_path):
    cold = registry.load_dataset("toy", data_dir=toy["src"].parent)
    (path,) = registry.cache_dir().glob("toy-*.npz")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    feature = arrays["feature_0"].copy()
    feature[0, 0] += 1.0  # still finite, still the right shape: passes every load-time rule
    arrays["feature_0"] = feature
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    warm = registry.load_dataset("toy", data_dir=toy["src"].parent)
    assert warm.fingerprint == cold.fingerprint
    assert np.array_equal(warm.features[cold.modalities[0]], cold.features[cold.modalities[0]])


def test_cached_digests_follow_the_files(toy):
    before = registry.load_dataset("toy", data_dir=toy["src"].parent).fingerprint
    inter = toy["src"] / "toy.inter"
    inter.write_text(inter.read_text().replace("1\t1\t0\n", "1\t0\t0\n"))  # one interaction moved
    after = registry.load_dataset("toy", data_dir=toy["src"].parent, verify_checksums=False)
    assert after.train[1, 0] == 1 and after.fingerprint != before


def test_a_modified_copy_of_a_directory_is_other_data(toy, tmp_path):
    card = registry.load_dataset("toy", data_dir=toy["src"].parent)
    copy = tmp_path / "Copy of Toy"
    shutil.copytree(toy["src"], copy)
    same = registry.load_dataset(str(copy))
    assert same.name == "copy-of-toy" and same.fingerprint == card.fingerprint
    inter = copy / "toy.inter"
    inter.write_text(inter.read_text().replace("1\t1\t0\n", "1\t0\t0\n"))
    changed = registry.load_dataset(str(copy))
    assert changed.name == "copy-of-toy" and changed.fingerprint != card.fingerprint


def test_builtin_identity_covers_generation_parameters():
    params = registry.card("synthetic")["params"]
    syn = registry.load_dataset("synthetic")
    assert syn.fingerprint == make_synthetic(**params).fingerprint
    assert syn.fingerprint != make_synthetic(**{**params, "seed": params["seed"] + 1}).fingerprint
    assert syn.fingerprint != make_synthetic(**{**params, "split_seed": params["seed"] + 1}).fingerprint


def test_builtin_cards(monkeypatch):
    syn = registry.load_dataset("synthetic")
    assert syn.meta["card"] == "synthetic" and syn.statistics()["interactions"] == \
        registry.card("synthetic")["statistics"]["interactions"]
    ml = registry.load_dataset("ml100k")
    assert ml.name == "ml100k" and set(ml.checksums) == {"ml-100k.inter", "ml-100k.item"}
    monkeypatch.setattr(readers, "read_ml100k", lambda *a, **k: pytest.fail("cache not used"))
    again = registry.load_dataset("ml100k")
    assert np.array_equal(again.item_tokens, ml.item_tokens) and (again.test != ml.test).nnz == 0
    st = ml.statistics()
    card_st = registry.card("ml100k")["statistics"]
    assert {k: st[k] for k in card_st} == card_st


# ---------------------------------------------------------------- verify and import

def test_verify_report(toy):
    rep = registry.verify("toy", data_dir=toy["src"].parent)
    assert rep["checksums_ok"] is True and rep["layout"] == "mmrec"
    assert rep["files"]["toy.inter"]["ok"] and rep["statistics"]["n_items"] == 4
    rep = registry.verify(str(toy["src"]))
    assert rep["card"] is None and rep["checksums_ok"] is None and rep["matches_cards"] == ["toy"]


def test_import_writes_nothing_when_a_file_is_bad(toy):
    np.save(toy["src"] / "image_feat.npy", np.zeros((4, 2)))
    with pytest.raises(DataError, match=r"image_feat\.npy: sha256 mismatch"):
        registry.import_dataset("toy", toy["src"], data_dir=toy["data"])
    assert not toy["data"].exists()


def test_import_missing_file(toy):
    (toy["src"] / "toy.inter").unlink()
    with pytest.raises(DataError, match=r"missing file\(s\) toy\.inter"):
        registry.import_dataset("toy", toy["src"], data_dir=toy["data"])
    assert not toy["data"].exists()


def test_import_then_load(toy):
    rep = registry.import_dataset("toy", toy["src"].parent, data_dir=toy["data"])  # parent: finds toydir/
    assert sorted(rep["copied"]) == ["image_feat.npy", "toy.inter"]
    assert sorted(p.name for p in (toy["data"] / "toydir").iterdir()) == ["image_feat.npy", "toy.inter"]
    assert registry.load_dataset("toy", data_dir=toy["data"]).train.nnz == 3
    rep = registry.import_dataset("toy", toy["src"], data_dir=toy["data"])
    assert rep["copied"] == [] and len(rep["already_present"]) == 2


def test_import_builtin_is_a_config_error():
    with pytest.raises(ConfigError, match="built in"):
        registry.import_dataset("ml100k", ".")


# ---------------------------------------------------------------- CLI

def run_cli(*argv):
    parser = argparse.ArgumentParser(prog="mmbench")
    add_data_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_list_info(toy, capsys):
    assert run_cli("data", "list", "--data-dir", str(toy["src"].parent)) == 0
    assert "toy" in capsys.readouterr().out
    assert run_cli("data", "info", "toy") == 0
    out = capsys.readouterr().out
    assert "https://example.org/toy" in out and "mmbench data import toy --from PATH" in out
    with pytest.raises(ConfigError):
        run_cli("data", "info", "nope")


def test_cli_verify_and_import(toy, capsys):
    assert run_cli("data", "import", "toy", "--from", str(toy["src"]), "--data-dir", str(toy["data"])) == 0
    assert "copied" in capsys.readouterr().out
    assert run_cli("data", "verify", "toy", "--data-dir", str(toy["data"]), "--json") == 0
    assert json.loads(capsys.readouterr().out)["checksums_ok"] is True
    assert run_cli("data", "verify", str(toy["src"])) == 0
    assert "same files as card(s): toy" in capsys.readouterr().out
    with pytest.raises(DataError, match="missing file"):
        run_cli("data", "verify", "toy", "--data-dir", str(toy["data"] / "elsewhere"))


# ---------------------------------------------------------------- real data

def test_real_tiktok_cold_and_warm():
    real_data()
    t = time.perf_counter()
    cold = registry.load_dataset("tiktok")
    t_cold = time.perf_counter() - t
    t = time.perf_counter()
    warm = registry.load_dataset("tiktok")
    t_warm = time.perf_counter() - t
    assert t_warm < 0.5, f"warm load took {t_warm:.3f}s (cold {t_cold:.3f}s)"
    assert (warm.train != cold.train).nnz == 0 and warm.meta["missing_modalities"] == ["text"]
    assert warm.checksums == registry.card("tiktok")["files"]
    assert {m: f.shape for m, f in warm.features.items()} == {"image": (6710, 128), "audio": (6710, 128)}


def test_real_tiktok_fingerprint_is_stable(monkeypatch):
    real_data()
    cold = registry.load_dataset("tiktok")  # the per-test cache dir: a cold load, which hashes once
    fp = dataclasses.replace(cold).fingerprint  # a fresh object: every part hashed again
    assert fp == cold.fingerprint and cold.select_modalities(["image"]).fingerprint != fp
    assert registry.load_dataset("tiktok").fingerprint == fp  # warm: from the verified cache


def test_real_cards_match_their_statistics():
    real_data()
    for name in SHIPPED - {"synthetic", "ml100k"}:
        c = registry.card(name)
        ds = registry.load_dataset(name)
        st = ds.statistics()
        assert {k: st[k] for k in c["statistics"]} == c["statistics"], name
        assert sorted(ds.meta["files"]) == sorted(c["files"]), name
        assert ds.modalities == list(c["modalities"]), name
    lfm = registry.load_dataset("lastfm2k")
    assert {m: f.shape[1] for m, f in lfm.features.items()} == {"text": 384, "audio": 128, "audio_whisper": 512}


def test_real_verify_tiktok():
    real_data()
    rep = registry.verify("tiktok")
    assert rep["checksums_ok"] and rep["statistics"]["n_users"] == 9308
    assert registry.verify(str(real_data() / "tiktok"))["matches_cards"] == ["tiktok"]
