"""`mmbench tune`: one search space per model, validation only (test never evaluated), resumable
studies whose trial count is a total, tuned configurations with provenance, and reports/check that
ignore trials and compare tuned runs only with tuned runs."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mmbench import records, tune
from mmbench.check import collect
from mmbench.cli import main
from mmbench.errors import ConfigError
from mmbench.models.base import get_model_class, registry
from mmbench.reports import common, table2
from mmbench.runner import model_config, train_one
from mmbench.train.trainer import resolve_device

CPU = resolve_device("cpu")


def run_tune(synthetic, results: Path, models=("mf-bpr", "lightgcn"), trials=3, budget="smoke", **kw):
    return tune.tune(list(models), synthetic, trials, budget, results, CPU, log=lambda msg: None, **kw)


# --------------------------------------------------------------------------- search spaces
def test_every_registered_model_has_a_valid_search_space():
    assert tune.check_every_model_has_a_space() == []
    for name in registry():
        space = tune.load_space(name)
        params = set(model_config(name, "synthetic"))
        # only a model fitted in closed form may have nothing to search (MostPop)
        assert (space.dims or get_model_class(name).fits_once) and set(space.keys) <= params
        assert not set(space.keys) & set(tune.PROTOCOL_KEYS)


def test_mmssl_spaces_contain_their_authors_values():
    """Every value the authors published (paper §4.1.4/§4.4, the code's per-dataset blocks = our
    presets) is a point of the search space, and so are the variants' defaults."""
    paper_grid = {"lr": [4.5e-4, 5e-4, 5.4e-4, 5.6e-4], "d_lr": [2.5e-4, 3e-4, 3.5e-4],
                  "weight_decay": [1.2e-2, 1.4e-2, 1.6e-2, 0.01], "n_layers": [1, 2, 3, 4], "cl_tau": [0.085]}
    for name in ("mmssl", "mmssl-official"):
        cls = get_model_class(name)
        dims = {d.name: d for d in tune.load_space(name).dims}
        for key, values in paper_grid.items():
            assert all(dims[key].contains(v) for v in values), (name, key)
        for preset in [model_config(name, ds) for ds in cls.presets] + [model_config(name, "synthetic")]:
            for key, dim in dims.items():
                assert dim.contains(preset[key]), (name, key, preset[key])


@pytest.mark.parametrize("text, needle", [
    ("space:\n  nope: {low: 1, high: 2}\n", "not a config key"),
    ("space:\n  epochs: {low: 1, high: 2}\n", "never searched"),
    ("space:\n  lr: {low: 0.1, high: 0.01, log: true}\n", "below high"),
    ("space:\n  lr: {low: 0.0, high: 0.01, log: true}\n", "> 0"),
    ("space:\n  n_layers: {low: 1.5, high: 3}\n", "integer"),
    ("space:\n  lr: {choices: [0.1, -1]}\n", "lr"),
    ("space:\n  lr: {low: 1.0e-4}\n", "needs `low` and `high`"),
    ("space:\n  lr: {low: 1.0e-4, high: 1.0e-2, spread: 3}\n", "unknown field"),
    ("lr: {low: 1.0e-4, high: 1.0e-2}\n", "unknown top-level key"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("space: {}\n", "empty"),
    ("extends: lightgcn\n", "loops"),
    ("extends: mf-bpr\ndrop: [n_layers]\n", "drop"),
])
def test_a_bad_space_file_is_one_error_naming_it(tmp_path, monkeypatch, text, needle):
    path = tmp_path / "spaces" / "lightgcn.yaml"
    path.parent.mkdir()
    path.write_text(text)
    real = tune.space_file
    monkeypatch.setattr(tune, "space_file", lambda m: path if m == "lightgcn" else real(m))
    with pytest.raises(tune.SpaceError) as exc:
        tune._load_space("lightgcn", ())
    msg = str(exc.value)
    assert "\n" not in msg and needle in msg and str(path) in msg


# --------------------------------------------------------------------------- caps and configs
def test_every_model_of_a_study_gets_the_same_plain_caps():
    for budget, caps in (("quick", (10, 3)), ("smoke", (2, 1)), ("full", (1000, 20))):
        for name in ("lightgcn", "mmssl", "recbole-sgl"):
            cfg = tune.trial_config(name, "tiktok", budget, {}, "test")
            assert (cfg.epochs, cfg.patience) == caps, (name, budget)
    # `run` keeps its heavy-model caps and the authors' presets
    assert (model_config("mmssl", "ml100k", "quick").epochs, model_config("mmssl", "tiktok").patience) == (1, 8)
    assert (model_config("lightgcn", "ml100k").epochs, model_config("lightgcn", "ml100k").patience) == (1000, 20)


def test_tuned_layer_precedence():
    tuned = {"lightgcn": {"params": {"lr": 0.005, "n_layers": 3}}}
    cfg = model_config("lightgcn", "synthetic", "smoke", tuned=tuned)
    assert (cfg.lr, cfg.n_layers, cfg.epochs) == (0.005, 3, 2)
    assert model_config("lightgcn", "synthetic", "smoke", set_items=["lr=0.02"], tuned=tuned).lr == 0.02
    assert model_config("mf-bpr", "synthetic", tuned=tuned).lr == 1e-3  # other models: their defaults
    with pytest.raises(ConfigError, match="my tuning"):
        model_config("lightgcn", "synthetic", tuned={"lightgcn": {"params": {"lr": -1}, "source": "my tuning"}})


# --------------------------------------------------------------------------- tuning
def test_tuning_never_evaluates_test_and_writes_trial_records(synthetic, tmp_path, monkeypatch):
    import mmbench.train.trainer as trainer_mod

    splits = []
    real = trainer_mod.evaluate

    def spy(score, data, split="test", *args, **kwargs):
        splits.append(split)
        return real(score, data, split, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "evaluate", spy)
    outcomes = run_tune(synthetic, tmp_path)
    assert splits and set(splits) == {"valid"}
    assert [o.status for o in outcomes] == ["done", "done"]
    folders = records.find_records(tmp_path)
    assert len(folders) == 6 and all(tune.TUNING in f.parts for f in folders)
    for folder in folders:
        rec = records.read_record(folder)
        assert rec.test is None and rec.is_trial and rec.valid
        assert rec.trial["study"].startswith(rec.model + ".synthetic-") and rec.trial["state"] in ("complete", "pruned")
        assert folder.name.endswith(f"trial{rec.trial['number']:04d}")


def test_trials_count_the_total_and_a_resumed_study_is_the_uninterrupted_one(synthetic, tmp_path):
    first = run_tune(synthetic, tmp_path / "a", models=("lightgcn",), trials=2)
    more = run_tune(synthetic, tmp_path / "a", models=("lightgcn",), trials=4)
    again = run_tune(synthetic, tmp_path / "a", models=("lightgcn",), trials=4)
    assert (len(first[0].trials), len(more[0].trials), len(again[0].trials)) == (2, 2, 0)
    assert more[0].complete + more[0].pruned == 4
    one_go = run_tune(synthetic, tmp_path / "b", models=("lightgcn",), trials=4)
    resumed = [(t.number, t.params, t.state, t.value) for t in first[0].trials + more[0].trials]
    assert resumed == [(t.number, t.params, t.state, t.value) for t in one_go[0].trials]
    assert (tmp_path / "a" / "tuning" / "studies.db").is_file()


def test_a_trial_cut_short_is_failed_and_replaced(synthetic, tmp_path):
    import optuna

    run_tune(synthetic, tmp_path, models=("mf-bpr",), trials=1)
    url = tune.default_storage(tmp_path)
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(url)]
    study = optuna.load_study(study_name=name, storage=url)
    study.ask()  # left RUNNING, as by a process killed mid-trial
    out = run_tune(synthetic, tmp_path, models=("mf-bpr",), trials=2)
    assert len(out[0].trials) == 1 and out[0].complete + out[0].pruned == 2
    states = [t.state.name for t in optuna.load_study(study_name=name, storage=url).get_trials()]
    assert states.count("FAIL") == 1 and "RUNNING" not in states


def test_pinned_keys_are_not_searched(synthetic, tmp_path):
    out = run_tune(synthetic, tmp_path, models=("lightgcn",), trials=2, set_items=["lr=0.004"])
    assert all("lr" not in t.params for t in out[0].trials)
    rec = records.read_record(records.find_records(tmp_path)[0])
    assert rec.config["lr"] == 0.004


# --------------------------------------------------------------------------- tuned configurations
@pytest.fixture(scope="module")
def tuned_results(synthetic, tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned")
    run_tune(synthetic, root, models=("mf-bpr", "lightgcn"), trials=3)
    return root


def test_tuned_file_holds_the_best_trial_with_its_provenance(synthetic, tuned_results):
    raw = tune._read_tuned(tune.tuned_path(tuned_results, "synthetic"))
    assert raw["budget"] == "smoke" and raw["fingerprint"] == synthetic.fingerprint
    tuned = tune.load_tuned(tuned_results, "synthetic", "smoke", synthetic.fingerprint)
    assert set(tuned) == {"mf-bpr", "lightgcn"}
    for model, item in tuned.items():
        trials = [records.read_record(f) for f in records.find_records(tuned_results) if f.parent.name == model]
        best = max((r for r in trials if r.trial["state"] == "complete"), key=lambda r: r.trial["value"])
        prov = item["provenance"]
        assert item["params"] == best.trial["params"] and prov["best_trial"] == best.trial["number"]
        assert (prov["trials"], prov["budget"], prov["study"]) == (3, "smoke", best.trial["study"])
        assert prov["best_valid"] == pytest.approx(best.trial["value"], abs=1e-6)
        assert model_config(model, "synthetic", "smoke", tuned=tuned).hash() != model_config(model, "synthetic", "smoke").hash()


def test_load_tuned_refuses_another_budget_missing_files_and_other_data(tuned_results, tmp_path):
    with pytest.raises(ConfigError, match="budget 'smoke', not 'full'"):
        tune.load_tuned(tuned_results, "synthetic", "full")
    with pytest.raises(ConfigError, match="does not exist"):
        tune.load_tuned(tmp_path, "synthetic", "smoke")
    with pytest.raises(ConfigError, match="other data"):
        tune.load_tuned(tuned_results, "synthetic", "smoke", "0" * 64)


def test_tuning_under_another_budget_replaces_the_tuned_file(synthetic, tmp_path):
    run_tune(synthetic, tmp_path, models=("mf-bpr",), trials=1, budget="smoke")
    run_tune(synthetic, tmp_path, models=("lightgcn",), trials=1, budget="quick")
    raw = tune._read_tuned(tune.tuned_path(tmp_path, "synthetic"))
    assert raw["budget"] == "quick" and set(raw["models"]) == {"lightgcn"}


# --------------------------------------------------------------------------- reports and check
def test_reports_and_check_ignore_trial_records(synthetic, tuned_results, tmp_path):
    with pytest.raises(common.ReportError, match="tuning trial"):
        common.read_runs(tuned_results)
    _, observed = collect(tuned_results, "synthetic")
    assert observed == {}


def tuned_run(synthetic, results: Path, tuned: dict, model: str) -> records.RunRecord:
    """What `mmbench run --tuned` does once wired: the tuned layer in the config, the provenance in
    the record (the identity including the tuning)."""
    cfg = model_config(model, "synthetic", "smoke", tuned=tuned)
    rec = train_one(model, synthetic, cfg, 1, CPU, None, progress=False, budget="smoke")
    rec = dataclasses.replace(rec, tuned=tune.tuned_provenance(tuned, model), run_id=f"tuned-{rec.run_id}")
    arrays = {"test_users": np.zeros(0, np.int64)}
    records.write_record(records.run_dir(results, "synthetic", model, rec.run_id, rec.dataset.fingerprint), rec, arrays)
    return rec


def test_tuned_runs_are_reported_only_with_tuned_and_labelled(synthetic, tuned_results, tmp_path):
    tuned = tune.load_tuned(tuned_results, "synthetic", "smoke")
    res = tmp_path / "res"
    from mmbench.runner import run_all

    run_all(["mf-bpr", "lightgcn"], synthetic, [1], CPU, res, budget="smoke", progress=False)
    rec = tuned_run(synthetic, res, tuned, "lightgcn")
    back = records.read_record(records.run_dir(res, "synthetic", "lightgcn", rec.run_id, rec.dataset.fingerprint))
    assert back.tuned["study"] == tuned["lightgcn"]["provenance"]["study"] and back.tuned["trials"] == 3
    plain = common.load_runs(res, "smoke")
    assert all(r.record.tuned is None for ds in plain.datasets() for m in plain.models(ds) for r in plain.runs(ds, m))
    both = common.load_runs(res, "smoke", tuned=True)
    assert (both.kind("synthetic", "lightgcn"), both.kind("synthetic", "mf-bpr")) == ("tuned", "default")
    labels = [label for label, _ in table2.build(both).blocks[0].rows]
    assert "LightGCN · tuned (3 trials)" in labels and "MF-BPR · default" in labels
    assert "Configurations: tuned on valid" in " ".join(both.notes())
    assert not any("·" in label for label, _ in table2.build(plain).blocks[0].rows)


def test_table2_ranks_only_rows_of_the_same_kind(tmp_path):
    from test_reports import make_results

    res = make_results(tmp_path, models={"mmssl": 0.30, "lattice": 0.25, "mf-bpr": 0.15},
                       datasets={"baby": (400, 150)})
    # lattice's runs become tuned ones: the best baseline of (default) MMSSL is then mf-bpr
    for folder in records.find_records(res):
        rec = records.read_record(folder)
        if rec.model == "lattice":
            rec = dataclasses.replace(rec, tuned={"study": "s", "trials": 7})
            records.write_record(folder, rec, records.read_arrays(folder))
    rs = common.load_runs(res, "full", tuned=True)
    table = table2.build(rs)
    rows = dict(table.blocks[0].rows)
    assert "LATTICE · tuned (7 trials)" in rows
    assert rows["Best baseline"][0].text == "MF-BPR"
    assert rows["MMSSL (paper) · default"][0].mark == "best" and rows["LATTICE · tuned (7 trials)"][0].mark == "best"
    assert rows["MF-BPR · default"][0].mark == "second"


# --------------------------------------------------------------------------- records and schema 1
def test_records_without_the_optional_fields_stay_readable(tmp_path):
    rec = records.RunRecord(model="mf-bpr", dataset=records.DatasetRef(name="toy", fingerprint="ab" * 32),
                            config={}, config_hash="h", seed=1, budget="smoke", threads=1, device="cpu",
                            run_id="x", protocol={}, env={}, history=[], best_epoch=1, valid={"recall@20": 0.1},
                            test=None, n_test_users=0, timings={}, peak_memory_mb=1.0, created="now",
                            trial={"study": "s", "number": 0})
    records.write_record(tmp_path / "t", rec, {})
    assert records.read_record(tmp_path / "t").trial == {"study": "s", "number": 0}
    plain = dataclasses.replace(rec, trial=None)
    records.write_record(tmp_path / "p", plain, {})
    raw = json.loads((tmp_path / "p" / records.RECORD).read_text())
    assert "trial" not in raw and "tuned" not in raw  # a default run's record.json is as before
    assert records.read_record(tmp_path / "p").trial is None
    with pytest.raises(ValueError, match="trial"):
        dataclasses.replace(rec, trial=["not", "a", "mapping"])


def test_schema1_budgets_use_the_wave1_table():
    from mmbench.upgrade import budget_of_schema1

    assert budget_of_schema1("lightgcn", "tiktok", {"epochs": 500, "patience": 20}) == "full"
    assert budget_of_schema1("mmssl-wo-cl", "tiktok", {"epochs": 1000, "patience": 8}) == "full"
    assert budget_of_schema1("lightgcn", "tiktok", {"epochs": 1000, "patience": 20}) == "custom"
    assert budget_of_schema1("recbole-ncl", "ml100k", {"epochs": 1, "patience": 1}) == "quick"
    assert budget_of_schema1("gone-model", "ml100k", {"epochs": 10, "patience": 3}) == "custom"


# --------------------------------------------------------------------------- command line
def test_cli_tune_then_rerun_adds_only_the_missing_trials(tmp_path, capsys):
    args = ["tune", "--models", "mf-bpr", "--dataset", "synthetic", "--budget", "smoke", "--results", str(tmp_path)]
    assert main(args + ["--trials", "2"]) == 0
    assert main(args + ["--trials", "3"]) == 0
    out = capsys.readouterr()
    assert "2 done, running 1" in out.err and (tmp_path / "tuning" / "synthetic.yaml").is_file()
    assert len(records.find_records(tmp_path)) == 3


@pytest.mark.parametrize("extra, needle", [
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "choose one"),
    (["--scheduler", "nope"], "tcp://HOST:PORT"),
    (["--storage", "::nope::"], "SQLAlchemy"),
    (["--storage", "postgresql://u:secret@127.0.0.1:1/db"], "u:***@"),  # no driver or no server: refused, password hidden
    (["--set", "nope=1"], "nope"),
    (["--models", "lightgcnn"], "unknown model"),
])
def test_cli_refuses_bad_options_before_any_work(tmp_path, capsys, extra, needle):
    args = ["tune", "--models", "mf-bpr", "--dataset", "synthetic", "--trials", "1", "--results", str(tmp_path)]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert needle in err and "secret" not in err
    assert not (tmp_path / "tuning").exists()


def test_trials_on_dask_workers_count_the_total_and_never_compute_test(tmp_path, capsys):
    """`--workers 2`: trials run on a local Dask cluster, tell the shared SQLite study themselves and
    write their (test-free) records; a rerun with a larger --trials adds exactly the missing ones."""
    args = ["tune", "--models", "mf-bpr", "--dataset", "synthetic", "--budget", "smoke", "--workers", "2",
            "--results", str(tmp_path)]
    assert main(args + ["--trials", "3"]) == 0
    assert main(args + ["--trials", "4"]) == 0
    err = capsys.readouterr().err
    assert "2 trials at a time" in err and "3 done, running 1" in err
    found = [records.read_record(f) for f in records.find_records(tmp_path / "tuning")]
    assert len(found) == 4 and all(r.test is None and r.trial["number"] in range(4) for r in found)
    tuned = tune.load_tuned(tmp_path, "synthetic", "smoke")["mf-bpr"]
    assert tuned["provenance"]["trials"] == 4


def test_one_storage_shares_a_study_between_results_folders(synthetic, tmp_path):
    """What `--storage postgresql://…` does between machines, with a SQLite file standing in."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a = run_tune(synthetic, tmp_path / "a", models=("mf-bpr",), trials=2, storage=url)
    b = run_tune(synthetic, tmp_path / "b", models=("mf-bpr",), trials=3, storage=url)
    assert (len(a[0].trials), b[0].done_before, len(b[0].trials)) == (2, 2, 1)
    assert a[0].study == b[0].study and b[0].trials[0].number == 2
    assert tune.load_tuned(tmp_path / "b", "synthetic", "smoke")["mf-bpr"]["provenance"]["trials"] == 3
    assert not (tmp_path / "a" / "tuning" / "studies.db").exists()


def test_a_model_without_hyper_parameters_is_skipped_by_all_and_refused_by_name(tmp_path, capsys):
    assert tune.has_nothing_to_tune("mostpop") and not tune.has_nothing_to_tune("itemknn")
    args = ["tune", "--dataset", "synthetic", "--trials", "1", "--budget", "smoke", "--results", str(tmp_path)]
    assert main(args + ["--models", "mostpop"]) == 2
    assert "nothing to tune" in capsys.readouterr().err
    assert not (tmp_path / "tuning").exists()
