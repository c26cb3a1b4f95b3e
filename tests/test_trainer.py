"""The trainer's protocol guarantees: valid-only selection, determinism, resumption, config errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from mmbench import records
from mmbench.config import resolve
from mmbench.data.dataset import Dataset, to_csr
from mmbench.errors import ConfigError
from mmbench.runner import model_config, run_all, train_one
from mmbench.train.sampler import BPRSampler
from mmbench.train.trainer import resolve_device
from model_helpers import interrupted_then_resumed

CPU = resolve_device("cpu")


def cfg_for(model: str, *sets: str):
    return model_config(model, "synthetic", "full", None, ["epochs=6", "patience=3", *sets])


def shuffled_test(data: Dataset, seed: int) -> Dataset:
    """Same dataset, different test labels (a new random item per test pair, outside train/valid)."""
    rng = np.random.default_rng(seed)
    coo = data.test.tocoo()
    taken = (data.train + data.valid).tolil()
    cols = []
    for u in coo.row:
        while True:
            c = int(rng.integers(data.n_items))
            if taken[u, c] == 0:
                break
        cols.append(c)
    test = to_csr(coo.row, cols, data.n_users, data.n_items)
    return Dataset(data.name, data.n_users, data.n_items, data.train, data.valid, test, data.features)


def test_changing_test_labels_cannot_change_selected_epoch(synthetic):
    a = train_one("mf-bpr", synthetic, cfg_for("mf-bpr"), 1, CPU, None, progress=False)
    b = train_one("mf-bpr", shuffled_test(synthetic, 5), cfg_for("mf-bpr"), 1, CPU, None, progress=False)
    assert a["best_epoch"] == b["best_epoch"]
    assert [h.get("valid") for h in a["history"]] == [h.get("valid") for h in b["history"]]
    assert a["valid"] == b["valid"]
    assert a["test"] != b["test"]  # the test labels did change what was measured


def test_same_seed_identical_per_user_metrics(synthetic, tmp_path):
    cfg = cfg_for("lightgcn")
    for seed, folder in ((7, tmp_path / "a"), (7, tmp_path / "b"), (8, tmp_path / "c")):
        train_one("lightgcn", synthetic, cfg, seed, CPU, folder, progress=False)
    arr = {k: records.read_arrays(tmp_path / k) for k in "abc"}
    assert np.array_equal(arr["a"]["test/ndcg@20"], arr["b"]["test/ndcg@20"])
    assert np.array_equal(arr["a"]["test_topk"], arr["b"]["test_topk"])
    assert not np.array_equal(arr["a"]["test_topk"], arr["c"]["test_topk"])


def test_record_has_design_keys(synthetic, tmp_path):
    rec = train_one("mf-bpr", synthetic, cfg_for("mf-bpr"), 1, CPU, tmp_path, progress=False)
    on_disk = json.loads((tmp_path / "record.json").read_text())
    for key in ("model", "dataset", "config", "config_hash", "seed", "protocol", "env", "history",
                "best_epoch", "valid", "test", "timings", "peak_memory_mb", "arrays"):
        assert key in on_disk, key
    assert on_disk["test"] == pytest.approx(rec["test"])
    assert set(on_disk["test"]) >= {"recall@20", "precision@20", "ndcg@20", "ndcg_legacy@20", "hit@20"}
    arrays = records.read_arrays(tmp_path)
    assert len(arrays["test_users"]) == len(arrays["test/recall@20"]) == on_disk["n_test_users"]
    assert np.mean(arrays["test/recall@20"]) == pytest.approx(on_disk["test"]["recall@20"])
    assert arrays["test_topk"].shape == (len(arrays["test_users"]), 50)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_resume_after_interruption_gives_the_same_result(synthetic, tmp_path, monkeypatch):
    cfg = cfg_for("mf-bpr", "patience=100", "checkpoint_every=0")
    full = train_one("mf-bpr", synthetic, cfg, 3, CPU, tmp_path / "full", progress=False)

    def half_written():
        assert (tmp_path / "resumed" / "checkpoint.pt").exists()
        assert not (tmp_path / "resumed" / "record.json").exists()

    resumed = interrupted_then_resumed(
        monkeypatch, lambda: train_one("mf-bpr", synthetic, cfg, 3, CPU, tmp_path / "resumed", progress=False),
        between=half_written)
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["test"] == full["test"]
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 7))


def test_run_all_skips_completed_runs(synthetic, tmp_path):
    out1 = run_all(["mf-bpr"], synthetic, [1], CPU, tmp_path, set_items=["epochs=2"], progress=False)
    out2 = run_all(["mf-bpr"], synthetic, [1], CPU, tmp_path, set_items=["epochs=2"], progress=False)
    assert [o.status for o in out1] == ["done"] and [o.status for o in out2] == ["skipped"]
    assert out1[0].folder == out2[0].folder
    assert out2[0].record["test"] == out1[0].record["test"]


def test_early_stopping_respects_patience(synthetic):
    rec = train_one("mf-bpr", synthetic, model_config("mf-bpr", "synthetic", "full", None,
                                                      ["epochs=200", "patience=2", "lr=0.5"]),
                    1, CPU, None, progress=False)
    best = rec["best_epoch"]
    assert len(rec["history"]) <= best + 2
    scores = [h["valid"]["recall@20"] for h in rec["history"]]
    assert max(scores) == rec["valid"]["recall@20"] == scores[best - 1]


@pytest.mark.parametrize("item, message", [
    ("epochz=3", "unknown config key 'epochz'"),
    ("epochs=abc", "expected an integer"),
    ("lr=-1", "lr must be > 0"),
    ("mask=valid", "mask must be"),
    ("valid_metric=recall@7", "valid_metric"),
    ("noequals", "expected key=value"),
])
def test_bad_set_is_a_config_error(item, message):
    with pytest.raises(ConfigError, match=message):
        model_config("lightgcn", "synthetic", "full", None, [item])


def test_set_types_and_lists():
    cfg = model_config("lightgcn", "synthetic", "full", None,
                       ["eval_ks=5,20", "valid_metric=ndcg@5", "modalities=image,text", "n_layers=3", "lr=5e-4"])
    assert cfg.eval_ks == [5, 20] and cfg.modalities == ["image", "text"]
    assert cfg.n_layers == 3 and cfg.lr == 5e-4 and cfg.valid_metric == "ndcg@5"
    assert resolve({}, set_overrides={"epochs": "3"}).hash() != resolve({}).hash()


def test_sampler_negatives_never_in_train():
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((50, 30)) < 0.5).astype(np.float32))
    sampler = BPRSampler(train, batch_size=64, seed=0)
    dense = train.toarray() > 0
    n = 0
    for batch in sampler.epoch():
        u, i, j = batch.users.numpy(), batch.pos.numpy(), batch.neg.numpy()
        assert dense[u, i].all() and not dense[u, j].any()
        n += len(u)
    assert n == train.nnz
