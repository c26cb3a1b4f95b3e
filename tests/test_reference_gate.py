"""The CI metric gate: the committed reference of a short synthetic run must be reproduced."""
from pathlib import Path

from mmbench.cli import main

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "synthetic-quick.json"


def test_synthetic_quick_run_matches_committed_reference(tmp_path, capsys):
    assert main(["run", "--models", "mf-bpr,lightgcn", "--dataset", "synthetic", "--budget", "quick",
                 "--results", str(tmp_path), "--no-progress"]) == 0
    code = main(["check", "--results", str(tmp_path), "--against", str(REFERENCE)])
    assert code == 0, capsys.readouterr().out
