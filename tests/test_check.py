"""The regression gate: passes on the runs it was written from, fails when a metric moves, and refuses
to compare runs that are not like the reference's (another configuration, several configurations)."""
import json

import pytest

from mmbench.cli import main


@pytest.fixture()
def gated(tmp_path):
    res, ref = tmp_path / "res", tmp_path / "ref.json"
    assert main(["run", "--models", "mf-bpr,lightgcn", "--dataset", "synthetic", "--budget", "smoke",
                 "--results", str(res), "--no-progress"]) == 0
    assert main(["check", "--results", str(res), "--against", str(ref), "--write", "--dataset", "synthetic",
                 "--tolerance", "0.001"]) == 0
    return res, ref


def test_check_roundtrip_and_drift(gated, capsys):
    res, ref = gated
    data = json.loads(ref.read_text())
    assert data["budget"] == "smoke" and len(data["fingerprint"]) == 64
    assert set(data["expect"]) == {"mf-bpr", "lightgcn"}
    assert data["tolerance"] == {"recall@20": 0.001, "precision@20": 0.001, "ndcg@20": 0.001}
    assert main(["check", "--results", str(res), "--against", str(ref)]) == 0
    data["expect"]["mf-bpr"]["metrics"]["recall@20"] += 0.05
    ref.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["check", "--results", str(res), "--against", str(ref)]) == 1
    assert "FAIL mf-bpr" in capsys.readouterr().out
    ref.write_text("{not json")
    assert main(["check", "--results", str(res), "--against", str(ref)]) == 2


def test_another_configuration_is_an_error_naming_the_model(gated, capsys):
    res, ref = gated
    data = json.loads(ref.read_text())
    data["expect"]["lightgcn"]["config_hash"] = "0123456789"
    ref.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["check", "--results", str(res), "--against", str(ref)]) == 2
    err = capsys.readouterr().err
    assert "model lightgcn" in err and "--write --models lightgcn" in err


def test_several_configurations_of_one_model_are_an_error(gated, capsys):
    res, ref = gated
    assert main(["run", "--models", "mf-bpr", "--dataset", "synthetic", "--budget", "smoke", "--set", "reg_weight=0.5",
                 "--results", str(res), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["check", "--results", str(res), "--against", str(ref)]) == 2
    assert "model mf-bpr" in capsys.readouterr().err


def test_write_refreshes_only_the_named_models(gated, tmp_path):
    res, ref = gated
    data = json.loads(ref.read_text())
    data["expect"]["lightgcn"]["metrics"]["ndcg@20"] = 0.5
    data["expect"]["mf-bpr"]["metrics"]["ndcg@20"] = 0.5
    ref.write_text(json.dumps(data))
    assert main(["check", "--results", str(res), "--against", str(ref), "--write", "--dataset", "synthetic",
                 "--models", "mf-bpr"]) == 0
    new = json.loads(ref.read_text())
    assert new["expect"]["lightgcn"]["metrics"]["ndcg@20"] == 0.5  # untouched
    assert new["expect"]["mf-bpr"]["metrics"]["ndcg@20"] != 0.5  # refreshed from the runs


@pytest.mark.parametrize("bad", [
    {"dataset": "x", "expect": {}},  # no tolerance
    {"dataset": "x", "tolerance": {"recall@20": -1}, "expect": {}},
    {"dataset": "x", "tolerance": {"recall@20": 0.1}, "expect": {"m": {"metrics": {"recall@20": 0.1}}}},
    {"dataset": "x", "tolerance": {}, "expect": {"m": {"config_hash": "h", "metrics": {"recall@20": 0.1}}}},
    [1, 2],
])
def test_malformed_references_are_one_line_errors(tmp_path, capsys, bad):
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(bad))
    assert main(["check", "--results", str(tmp_path), "--against", str(ref)]) == 2
    err = capsys.readouterr().err
    assert str(ref) in err and err.count("\n") == 1
