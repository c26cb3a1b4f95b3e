"""The command line: exit codes, one-line errors, nothing half-written, the summary table."""
from __future__ import annotations

import json

import pytest

from mmbench.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_synthetic_writes_records_and_summary(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", "--models", "mf-bpr,lightgcn", "--dataset", "synthetic",
                             "--budget", "smoke", "--results", str(tmp_path), "--no-progress")
    assert code == 0, err
    assert "mf-bpr" in out and "lightgcn" in out and "test R@20" in out
    recs = sorted(tmp_path.rglob("record.json"))
    assert len(recs) == 2
    rec = json.loads(recs[0].read_text())
    assert rec["dataset"]["name"] == "synthetic" and rec["config"]["epochs"] == 2
    # same command again: skipped, same numbers
    code, out2, err2 = run_cli(capsys, "run", "--models", "mf-bpr,lightgcn", "--dataset", "synthetic",
                               "--budget", "smoke", "--results", str(tmp_path), "--no-progress")
    assert code == 0 and err2.count("[skip]") == 2 and out2 == out


@pytest.mark.parametrize("argv, needle", [
    (["run", "--models", "no-such-model", "--dataset", "synthetic"], "unknown model 'no-such-model'"),
    (["run", "--models", "lightgcn", "--dataset", "no-such-data"], "unknown dataset 'no-such-data'"),
    (["run", "--models", "lightgcn", "--dataset", "synthetic", "--set", "epochz=3"], "unknown config key 'epochz'"),
    (["run", "--models", "lightgcn", "--dataset", "synthetic", "--set", "lr=abc"], "expected a number"),
    (["run", "--models", "lightgcn", "--dataset", "synthetic", "--seeds", "a,b"], "--seeds"),
    (["run", "--models", "lightgcn", "--dataset", "synthetic", "--set", "modalities=nope"], "modalities"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, argv, needle):
    code, out, err = run_cli(capsys, *argv, "--results", str(tmp_path / "res"), "--no-progress")
    assert code == 2
    assert needle in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "res").exists()


def test_malformed_dataset_directory_exits_2(capsys, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "train.json").write_text('{"0": [1, 2]}')
    (d / "val.json").write_text('{"0": [3')
    (d / "test.json").write_text('{"0": [4]}')
    code, _, err = run_cli(capsys, "run", "--models", "mf-bpr", "--dataset", str(d),
                           "--results", str(tmp_path / "res"), "--no-progress")
    assert code == 2 and "val.json" in err and "malformed JSON" in err
    assert not (tmp_path / "res").exists()
    code, _, err = run_cli(capsys, "data", "verify", str(d))
    assert code == 2 and "val.json" in err


def test_models_lists_registered(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "lightgcn" in out and "mf-bpr" in out


def test_usage_error_is_exit_2(capsys):
    assert main(["run"]) == 2
    assert "--models" in capsys.readouterr().err
    assert main(["--help"]) == 0
