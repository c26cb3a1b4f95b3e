"""The typed run record: schema checks, arrays tied to their record, finite metrics, schema-1 upgrade."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmbench import records
from mmbench.records import DatasetRef, RecordError, RunRecord

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "runs"
HAVE_TIKTOK = (Path(os.environ.get("MMBENCH_DATA_DIR", "/nonexistent")) / "tiktok").is_dir()


def a_record(**changes) -> RunRecord:
    rec = RunRecord(model="mf-bpr", dataset=DatasetRef(name="toy", fingerprint="ab" * 32), config={"epochs": 2},
                    config_hash="h", seed=1, budget="smoke", threads=1, device="cpu", run_id="x-seed1",
                    protocol={}, env={}, history=[{"epoch": 1, "losses": {"loss": 0.5}}], best_epoch=1,
                    valid={"recall@20": 0.25}, test={"recall@20": 0.5}, n_test_users=3, timings={},
                    peak_memory_mb=1.0, created="2026-01-01T00:00:00+00:00")
    return dataclasses.replace(rec, **changes)


ARRAYS = {"test_users": np.arange(3), "test/recall@20": np.array([0.0, 0.5, 1.0])}


def test_roundtrip_and_arrays_hash(tmp_path):
    records.write_record(tmp_path, a_record(), ARRAYS)
    back = records.read_record(tmp_path)
    assert back.schema_version == records.SCHEMA_VERSION == 2
    assert back == dataclasses.replace(a_record(), arrays_sha256=back.arrays_sha256)
    raw = json.loads((tmp_path / records.RECORD).read_text())
    assert raw["arrays_sha256"] == __import__("hashlib").sha256((tmp_path / records.ARRAYS).read_bytes()).hexdigest()
    assert np.array_equal(records.read_arrays(tmp_path)["test/recall@20"], ARRAYS["test/recall@20"])
    assert back["test"] == back.test  # read-only mapping access by field name


def test_arrays_of_another_run_are_an_error(tmp_path):
    records.write_record(tmp_path / "a", a_record(), ARRAYS)
    records.write_record(tmp_path / "b", a_record(seed=2), {**ARRAYS, "test_users": np.arange(1, 4)})
    shutil.copy(tmp_path / "b" / records.ARRAYS, tmp_path / "a" / records.ARRAYS)
    with pytest.raises(RecordError, match="does not match its record.json"):
        records.read_record(tmp_path / "a")
    with pytest.raises(RecordError, match="does not match"):
        records.read_arrays(tmp_path / "a")


@pytest.mark.parametrize("version", [0, 3, "2", None])
def test_other_schema_versions_are_one_line_errors_naming_the_file(tmp_path, version):
    records.write_record(tmp_path, a_record(), ARRAYS)
    raw = json.loads((tmp_path / records.RECORD).read_text())
    raw["schema_version"] = version
    (tmp_path / records.RECORD).write_text(json.dumps(raw))
    with pytest.raises(RecordError) as err:
        records.read_record(tmp_path)
    assert str(tmp_path / records.RECORD) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", None, True])
def test_metric_values_must_be_finite_numbers(bad):
    with pytest.raises(ValueError, match="finite"):
        a_record(test={"recall@20": bad})


@pytest.mark.parametrize("text", ["NaN", "Infinity", '"0.5"', "null"])
def test_a_record_on_disk_with_a_non_finite_metric_is_refused(tmp_path, text):
    records.write_record(tmp_path, a_record(), ARRAYS)
    path = tmp_path / records.RECORD
    path.write_text(path.read_text().replace('"recall@20": 0.5', f'"recall@20": {text}'))
    with pytest.raises(RecordError, match="finite"):
        records.read_record(tmp_path)


def test_malformed_and_missing_records(tmp_path):
    (tmp_path / records.RECORD).write_text("{not json")
    with pytest.raises(RecordError, match="malformed"):
        records.read_record(tmp_path)
    with pytest.raises(RecordError, match="cannot read"):
        records.read_record(tmp_path / "nowhere")
    records.write_record(tmp_path, a_record(), ARRAYS)
    raw = json.loads((tmp_path / records.RECORD).read_text())
    raw["surprise"] = 1
    (tmp_path / records.RECORD).write_text(json.dumps(raw))
    with pytest.raises(RecordError, match="surprise"):
        records.read_record(tmp_path)


def test_unknown_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        a_record(budget="weekend")


# --------------------------------------------------------------------------- schema 1
def schema1_copy(tmp_path: Path, dataset: str, model: str) -> Path:
    (src,) = [p for p in (REFERENCE / dataset / model).iterdir() if (p / records.RECORD).exists()]
    dest = tmp_path / "runs" / dataset / model / src.name
    shutil.copytree(src, dest)
    assert json.loads((dest / records.RECORD).read_text())["schema_version"] == 1
    return dest


def test_committed_schema1_quick_record_reads_as_quick_budget(tmp_path):
    folder = schema1_copy(tmp_path, "ml100k", "lightgcn")
    rec = records.read_record(folder)
    assert rec.upgraded_from == 1 and rec.schema_version == 2
    assert rec.budget == "quick" and rec.threads == 1 and rec.device == "cpu"
    assert rec.run_id == folder.name and rec.arrays_sha256 is None
    # ML-100K ships in the recbole wheel: the files match, so the data is known
    assert rec.dataset.known and len(rec.dataset.fingerprint) == 64
    heavy = records.read_record(schema1_copy(tmp_path, "ml100k", "mmssl"))
    assert heavy.budget == "quick"  # MMSSL's quick cap is 1 epoch


@pytest.mark.skipif(not HAVE_TIKTOK, reason="needs MMBENCH_DATA_DIR with tiktok")
def test_committed_schema1_full_record_gets_the_card_fingerprint(tmp_path):
    from mmbench.data.registry import load_dataset

    rec = records.read_record(schema1_copy(tmp_path, "tiktok", "mmssl-official"))
    assert rec.budget == "full" and rec.threads == 2
    assert rec.dataset.fingerprint == load_dataset("tiktok").fingerprint


def test_schema1_record_whose_files_changed_has_unknown_data(tmp_path):
    folder = schema1_copy(tmp_path, "ml100k", "mf-bpr")
    raw = json.loads((folder / records.RECORD).read_text())
    raw["dataset"]["checksums"]["ml-100k.inter"] = "0" * 64
    (folder / records.RECORD).write_text(json.dumps(raw))
    rec = records.read_record(folder)
    assert rec.dataset.fingerprint == records.UNKNOWN and not rec.rankable


def test_every_committed_record_is_readable():
    folders = records.find_records(REFERENCE)
    assert len(folders) >= 40
    for folder in folders:
        rec = records.read_record(folder)
        assert rec.budget in ("full", "quick") and rec.test


def test_no_metric_name_is_spelled_out_outside_the_record_and_metric_modules():
    root = Path(__file__).resolve().parents[1]
    allowed = {root / "mmbench" / "records.py", root / "mmbench" / "eval" / "metrics.py"}
    import re

    pattern = re.compile(r"[\"'](recall|precision|ndcg|ndcg_legacy|hit)(@\d+)?[\"']")
    offenders = []
    for folder in (root / "mmbench", root / "models"):
        for path in folder.rglob("*.py"):
            if path in allowed:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if pattern.search(code) and '"""' not in line:
                    offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_schema1_records_adopt_the_fingerprint_of_siblings_with_the_same_files():
    """Without the data here, a schema-1 record is `unknown`; a schema-2 record read beside it with
    the same name, file checksums and modalities lends it its fingerprint (same files, same reader).
    Other checksums, other modalities or disagreeing siblings leave it unknown."""
    from mmbench.records import UNKNOWN
    from mmbench.upgrade import adopt_sibling_fingerprints

    @dataclasses.dataclass
    class Rec:
        dataset: DatasetRef

    def ref(fp, sums=(("train.json", "aa"),), mods=("image",), name="tiktok"):
        return Rec(DatasetRef(name=name, fingerprint=fp, checksums=dict(sums), statistics={}, modalities=list(mods)))

    old, new = ref(UNKNOWN), ref("f" * 64)
    other_files, other_mods = ref(UNKNOWN, sums=(("train.json", "bb"),)), ref(UNKNOWN, mods=("audio",))
    out = adopt_sibling_fingerprints([old, new, other_files, other_mods])
    assert [r.dataset.fingerprint for r in out] == ["f" * 64, "f" * 64, UNKNOWN, UNKNOWN]
    torn = adopt_sibling_fingerprints([ref(UNKNOWN), ref("a" * 64), ref("b" * 64)])
    assert torn[0].dataset.fingerprint == UNKNOWN
