"""The regression gate: passes on the runs it was written from, fails when a metric moves."""
import json

from mmbench.cli import main


def test_check_roundtrip_and_drift(tmp_path, capsys):
    res, ref = tmp_path / "res", tmp_path / "ref.json"
    assert main(["run", "--models", "mf-bpr", "--dataset", "synthetic", "--budget", "smoke",
                 "--results", str(res), "--no-progress"]) == 0
    assert main(["check", "--results", str(res), "--against", str(ref), "--write", "--dataset", "synthetic"]) == 0
    assert main(["check", "--results", str(res), "--against", str(ref)]) == 0
    data = json.loads(ref.read_text())
    data["expect"]["mf-bpr"]["recall@20"] += 0.05
    ref.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["check", "--results", str(res), "--against", str(ref)]) == 1
    assert "FAIL mf-bpr" in capsys.readouterr().out
    ref.write_text("{not json")
    assert main(["check", "--results", str(res), "--against", str(ref)]) == 2
