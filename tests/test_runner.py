"""Run identity and reproducibility: threads, budget labels, data fingerprints, identical reruns."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmbench import records
from mmbench.cli import main
from mmbench.reports import common
from mmbench.runner import run_all
from mmbench.train.trainer import resolve_device
from model_helpers import assert_identical_records, ctrl_c_at_validation

CPU = resolve_device("cpu")


def the_record(results: Path, model: str) -> tuple[Path, records.RunRecord]:
    (folder,) = [f for f in records.find_records(results) if f.parent.name == model]
    return folder, records.read_record(folder)


def test_reruns_with_one_thread_give_identical_records(tmp_path, capsys):
    models = "mf-bpr,lightgcn,vbpr"
    for out in ("A", "B"):
        assert main(["run", "--models", models, "--dataset", "synthetic", "--budget", "smoke",
                     "--results", str(tmp_path / out), "--no-progress"]) == 0
    for model in models.split(","):
        (fa, ra), (fb, _) = the_record(tmp_path / "A", model), the_record(tmp_path / "B", model)
        assert fa.relative_to(tmp_path / "A") == fb.relative_to(tmp_path / "B")  # same identity
        assert ra.threads == 1 and ra.env["torch_threads"] == 1 and ra.budget == "smoke"
        assert_identical_records(fa, fb)


def test_threads_are_part_of_the_identity_and_the_record(synthetic, tmp_path, capsys):
    one = run_all(["mf-bpr"], synthetic, [1], CPU, tmp_path, budget="smoke", progress=False, threads=1)
    again = run_all(["mf-bpr"], synthetic, [1], CPU, tmp_path, budget="smoke", progress=False, threads=1)
    two = run_all(["mf-bpr"], synthetic, [1], CPU, tmp_path, budget="smoke", progress=False, threads=2)
    assert [o.status for o in one + again + two] == ["done", "skipped", "done"]
    assert two[0].folder != one[0].folder
    assert two[0].record.threads == 2 and two[0].record.env["torch_threads"] == 2
    assert one[0].record.env["torch_threads"] == 1  # read at the run, not cached per process
    err = capsys.readouterr().err
    assert "[train] mf-bpr seed 1 (smoke budget, 1 thread)" in err and "[skip] mf-bpr seed 1" in err


def test_changed_caps_make_a_custom_budget(synthetic, tmp_path):
    smoke = run_all(["mf-bpr"], synthetic, [1], CPU, tmp_path, budget="smoke", progress=False)
    custom = run_all(["mf-bpr"], synthetic, [1], CPU, tmp_path, budget="smoke", set_items=["epochs=3"],
                     progress=False)
    same = run_all(["mf-bpr"], synthetic, [1], CPU, tmp_path, budget="smoke", set_items=["epochs=2"],
                   progress=False)
    assert smoke[0].record.budget == "smoke" and custom[0].record.budget == "custom"
    assert same[0].status == "skipped"  # --set to the budget's own value changes nothing
    assert records.read_record(custom[0].folder).budget == "custom"


def test_resumed_run_says_from_which_epoch(synthetic, tmp_path, monkeypatch, capsys):
    sets = ["epochs=4", "checkpoint_every=0"]
    with ctrl_c_at_validation(2), pytest.raises(KeyboardInterrupt):
        run_all(["mf-bpr"], synthetic, [1], CPU, tmp_path, set_items=sets, progress=False)
    out = run_all(["mf-bpr"], synthetic, [1], CPU, tmp_path, set_items=sets, progress=False)
    assert out[0].status == "done"
    assert "[resume] mf-bpr seed 1 (custom budget, 1 thread): from the checkpoint after epoch 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- data identity
def write_mmssl_dir(folder: Path, data, change_one_test_item: bool = False) -> Path:
    """A dataset directory in the MMSSL layout holding `data` (optionally with one test item moved)."""
    folder.mkdir(parents=True)

    def lists(m):
        return {str(u): m.indices[m.indptr[u]:m.indptr[u + 1]].tolist()
                for u in range(m.shape[0]) if m.indptr[u + 1] > m.indptr[u]}

    test = lists(data.test)
    if change_one_test_item:
        user = next(iter(test))
        taken = set(data.train[int(user)].indices) | set(data.valid[int(user)].indices) | set(test[user])
        test[user][0] = next(i for i in range(data.n_items) if i not in taken)
    for name, value in (("train", lists(data.train)), ("val", lists(data.valid)), ("test", test)):
        (folder / f"{name}.json").write_text(json.dumps(value))
    for modality, feats in data.features.items():
        np.save(folder / f"{modality}_feat.npy", np.asarray(feats))
    return folder


def test_a_modified_copy_gets_its_own_run_and_is_never_pooled(synthetic, tmp_path, capsys):
    original = write_mmssl_dir(tmp_path / "a" / "toyset", synthetic)
    modified = write_mmssl_dir(tmp_path / "b" / "toyset", synthetic, change_one_test_item=True)
    res = tmp_path / "res"
    for d in (original, modified):
        assert main(["run", "--models", "mf-bpr", "--dataset", str(d), "--budget", "smoke",
                     "--results", str(res), "--no-progress"]) == 0
    folders = records.find_records(res)
    assert len(folders) == 2
    recs = [records.read_record(f) for f in folders]
    assert {r.dataset.name for r in recs} == {"toyset"}
    assert recs[0].dataset.fingerprint != recs[1].dataset.fingerprint
    assert folders[0].parent.parent != folders[1].parent.parent  # filed apart: runs/toyset-<fp>/
    assert recs[0].run_id != recs[1].run_id
    rs = common.load_runs(res)
    assert len(rs.datasets()) == 2 and all(len(rs.runs(ds, "mf-bpr")) == 1 for ds in rs.datasets())
    # check refuses to average two datasets that share a name, and gates each by its fingerprint
    ref = tmp_path / "ref.json"
    capsys.readouterr()
    assert main(["check", "--results", str(res), "--against", str(ref), "--write", "--dataset", "toyset"]) == 2
    assert "2 different datasets named 'toyset'" in capsys.readouterr().err
    for rec in recs:
        ref.write_text(json.dumps({"dataset": "toyset", "fingerprint": rec.dataset.fingerprint,
                                   "tolerance": {"recall@20": 0},
                                   "expect": {"mf-bpr": {"config_hash": rec.config_hash,
                                                         "metrics": {"recall@20": rec.test["recall@20"]}}}}))
        assert main(["check", "--results", str(res), "--against", str(ref)]) == 0


def test_dataset_fingerprint_covers_the_selected_modalities(synthetic, tmp_path):
    both = run_all(["vbpr"], synthetic, [1], CPU, tmp_path, budget="smoke", progress=False)
    one = run_all(["vbpr"], synthetic, [1], CPU, tmp_path, budget="smoke", progress=False,
                  set_items=[f"modalities={synthetic.modalities[0]}"])
    assert both[0].record.dataset.fingerprint != one[0].record.dataset.fingerprint
    assert one[0].record.dataset.modalities == synthetic.modalities[:1]

