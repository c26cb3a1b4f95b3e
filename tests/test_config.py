"""Config resolution: every key declared once (type, range, choices); hostile values are refused with one
short line naming the key and the layer; the hash of a resolved config never moves."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mmbench.cli import main
from mmbench.config import (TRAINER_DEFAULTS, TRAINER_PARAMS, Config, Param, coerce, declarations,
                            infer_param, load_config_file, parse_set_items, parse_value, resolve, shown)
from mmbench.errors import ConfigError
from mmbench.eval.metrics import RECALL_20
from mmbench.models.base import get_model_class, registry
from mmbench.runner import model_config

REFERENCE_RUNS = Path(__file__).resolve().parents[1] / "results" / "reference" / "runs"
# lightgcn's full-budget config on synthetic, pinned: a change means every run id of that config
# changes. It moved once, on purpose, when the full epoch cap went from 500 to 1000 (one cap per
# budget for every model); with --set epochs=500 the old hash b497508958 comes back.
LIGHTGCN_SYNTHETIC_HASH = "ecd2a064f2"


def resolve_model(name: str, preset=None, file=None, sets=(), **kw) -> Config:
    return resolve(get_model_class(name).defaults, preset, file, parse_set_items(list(sets)), model_name=name,
                   **kw)


def one_short_line(exc: pytest.ExceptionInfo, limit: int = 300) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < limit, text[:400]
    return text


# --------------------------------------------------------------------------- every model resolves

@pytest.mark.parametrize("name", sorted(registry()))
def test_every_model_default_and_preset_resolves(name):
    cls = get_model_class(name)
    for preset in [None, *cls.presets.values()]:
        cfg = resolve_model(name, preset)
        assert set(cfg) == set(TRAINER_DEFAULTS) | set(cls.defaults)
        assert not any(isinstance(v, Param) for v in cfg.values())  # plain values only
        for key, value in (preset or {}).items():
            assert cfg[key] == value
    for dataset in ["synthetic", *cls.presets]:
        for budget in ("full", "quick", "smoke"):
            model_config(name, dataset, budget)


def test_declarations_cover_every_model_key_with_a_valid_default():
    for name, cls in registry().items():
        params = declarations(cls.defaults)
        for key, param in params.items():
            value = param.coerce(param.default, f"model {name}", key)
            param.validate(value, f"model {name}", key)


def test_trainer_defaults_stay_a_plain_dict():
    assert TRAINER_DEFAULTS == {k: p.default for k, p in TRAINER_PARAMS.items()}
    assert not any(isinstance(v, Param) for v in TRAINER_DEFAULTS.values())
    assert TRAINER_DEFAULTS["valid_metric"] == RECALL_20
    assert resolve({}) == TRAINER_DEFAULTS


# --------------------------------------------------------------------------- the hash never moves

def test_hash_of_lightgcn_default_on_synthetic_is_pinned():
    assert model_config("lightgcn", "synthetic").hash() == LIGHTGCN_SYNTHETIC_HASH
    assert model_config("lightgcn", "synthetic", "full", None, ["epochs=500"]).hash() == "b497508958"


def test_reference_records_resolve_to_their_recorded_hash():
    """Resolving a committed record's config (as a --config file) gives back its config_hash: coercion
    keeps every type (1.0 stays a float, 20 an int), so no committed record loses its identity. Keys a
    model declared after the record was made (e.g. MMSSL's `l2_reading`, whose default computes what
    the record's code did) are not part of that identity: the hash is taken over the record's keys. Keys
    a model retired (MMSSL's `fast`) are accepted with the value whose computation is now the only one."""
    records = sorted(REFERENCE_RUNS.glob("*/*/*/record.json"))
    if not records:
        pytest.skip("no committed reference records")
    for path in records:
        rec = json.loads(path.read_text())
        cls = get_model_class(rec["model"])
        cfg = resolve(cls.defaults, cls.presets.get(rec["dataset"]["name"]), rec["config"],
                      model_name=rec["model"], retired=cls.retired)
        # a retired key was accepted with its recorded value (what the code computes now) and dropped
        own = {k: cfg[k] if k in cfg else rec["config"][k] for k in rec["config"]}
        assert set(own) - set(cfg) <= set(cls.retired), path
        assert Config(own).hash() == rec["config_hash"], path


def test_hash_ignores_non_functional_keys_only():
    base = resolve({})
    assert resolve({}, set_overrides={"checkpoint_every": "0", "eval_chunk_size": "7"}).hash() == base.hash()
    assert resolve({}, set_overrides={"lr": "0.002"}).hash() != base.hash()


# --------------------------------------------------------------------------- hostile --set values

@pytest.mark.parametrize("model, item, key, needle", [
    ("lightgcn", "lr=nan", "lr", "finite number > 0"),
    ("lightgcn", "lr=inf", "lr", "finite number > 0"),
    ("lightgcn", "lr=-inf", "lr", "finite number > 0"),
    ("lightgcn", "lr=0", "lr", "> 0"),
    ("lightgcn", "lr=1e999", "lr", "finite"),
    ("lightgcn", "weight_decay=-1", "weight_decay", ">= 0"),
    ("lightgcn", "weight_decay=nan", "weight_decay", "finite"),
    ("lightgcn", "epochs=0", "epochs", ">= 1"),
    ("lightgcn", "epochs=abc", "epochs", "expected an integer"),
    ("lightgcn", "epochs=2.5", "epochs", "expected an integer"),
    ("lightgcn", "epochs=nan", "epochs", "expected an integer"),
    ("lightgcn", "epochs=1e30", "epochs", "64 bits"),
    ("lightgcn", "patience=-1", "patience", ">= 0"),
    ("lightgcn", "batch_size=0", "batch_size", ">= 1"),
    ("lightgcn", "eval_ks=0", "eval_ks", ">= 1"),
    ("lightgcn", "eval_ks=", "eval_ks", "not be empty"),
    ("lightgcn", "eval_ks=10,x", "eval_ks", "integers"),
    ("lightgcn", "mask=foo", "mask", "one of 'train', 'train+valid'"),
    ("lightgcn", "optimizer=sgd", "optimizer", "one of 'adam', 'adamw'"),
    ("lightgcn", "valid_metric=recall@7", "valid_metric", "K in eval_ks"),
    ("lightgcn", "valid_metric=foo@20", "valid_metric", "@K"),
    ("lightgcn", "checkpoint_every=-1", "checkpoint_every", ">= 0"),
    ("lightgcn", "n_layers=two", "n_layers", "expected an integer"),
    ("lightgcn", "n_layers=-1", "n_layers", ">= 0"),  # inferred: numeric model keys are >= 0
    ("lightgcn", "reg_weight=nan", "reg_weight", "finite"),
    ("mmssl", "drop_rate=1.5", "drop_rate", "in [0, 1)"),
    ("mmssl", "d_drop1=1", "d_drop1", "in [0, 1)"),
    ("mmssl", "generator=vae", "generator", "one of 'gan', 'gae'"),
    ("mmssl", "gumbel_tau=0", "gumbel_tau", "> 0"),
    ("mmssl-official", "rebuild_every=0", "rebuild_every", ">= 1"),
    ("slmrec", "ssl_dropout=1.5", "ssl_dropout", "in [0, 1)"),
    ("slmrec", "ssl_task=XYZ", "ssl_task", "one of"),
    ("lattice", "lambda_coeff=2", "lambda_coeff", "in [0, 1]"),
    ("mmgcn", "combine=max", "combine", "one of 'concat', 'add'"),
    ("vbpr", "item_bias=maybe", "item_bias", "true or false"),
])
def test_bad_set_names_the_key(model, item, key, needle):
    with pytest.raises(ConfigError) as exc:
        resolve_model(model, sets=[item])
    text = one_short_line(exc)
    assert text.startswith(f"--set {item}: ") and key in text and needle in text, text


def test_nan_message_reads_like_the_issue():
    with pytest.raises(ConfigError, match=r"^--set lr=nan: lr must be a finite number > 0"):
        resolve_model("lightgcn", sets=["lr=nan"])


def test_huge_set_value_is_clipped():
    with pytest.raises(ConfigError) as exc:
        resolve_model("lightgcn", sets=["optimizer=" + "x" * 1_000_000])
    assert "optimizer" in one_short_line(exc)


def test_good_set_values_parse_to_the_declared_types():
    cfg = resolve_model("lightgcn", sets=["lr=1", "epochs=3.0", "eval_ks=[5, 20]", "valid_metric=ndcg@5",
                                          "modalities=image,text", "weight_decay=0"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.eval_ks == [5, 20] and cfg.modalities == ["image", "text"] and cfg.weight_decay == 0.0
    for words in ("modalities=all", "modalities=none", "modalities="):
        assert resolve_model("lightgcn", sets=[words]).modalities is None
    assert resolve_model("vbpr", sets=["item_bias=off"]).item_bias is False


# --------------------------------------------------------------------------- hostile --config files

def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "over.yaml"
    p.write_text(text)
    return p


def alias_bomb(levels: int) -> str:
    """eval_ks holding 10**(levels+1) integers through nested YAML aliases: a few hundred bytes of text,
    cheap to load (aliases are shared references), ruinous to render in full."""
    def level(n: int) -> str:
        if n == 0:
            return "[" + ", ".join(["1"] * 10) + "]"
        return f"[&l{n} {level(n - 1)}" + f", *l{n}" * 9 + "]"
    return f"eval_ks: {level(levels)}\n"


def test_yaml_alias_bomb_gives_a_short_message_quickly(tmp_path):
    path = write(tmp_path, alias_bomb(9))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        resolve_model("lightgcn", file=load_config_file(path), config_path=path)
    text = one_short_line(exc)
    assert time.perf_counter() - start < 5
    assert text.startswith(f"config file {path}") and "eval_ks" in text
    with pytest.raises(ConfigError) as exc:  # the same through the runner
        model_config("lightgcn", "synthetic", "full", str(path))
    assert "eval_ks" in one_short_line(exc)


@pytest.mark.parametrize("body, key", [
    ("optimizer: '" + "x" * 1_000_000 + "'\n", "optimizer"),
    ("modalities: ['" + "y" * 1_000_000 + "']\n", "modalities"),
    ("lr: " + "9" * 4000 + "\n", "lr"),  # an int past the float range
    ("lr: .nan\n", "lr"),
    ("weight_decay: -0.5\n", "weight_decay"),
    ("epochs: true\n", "epochs"),
    ("eval_ks: {a: 1}\n", "eval_ks"),
    ("mask: [train]\n", "mask"),
    ("? " + "z" * 1_000_000 + "\n: 1\n", "unknown config key"),  # an explicit (long) YAML key
    ("1: 2\n", "unknown config key 1"),
])
def test_hostile_yaml_values_give_a_short_message(tmp_path, body, key):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as exc:
        resolve_model("lightgcn", file=load_config_file(path), config_path=path)
    text = one_short_line(exc)
    assert key in text and text.startswith("config file "), text


@pytest.mark.parametrize("body, needle", [
    ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "unreadable YAML"),
    ("epochs: " + "9" * 5000 + "\n", "unreadable YAML"),
    ("epochs: [1\n", "malformed YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_unreadable_yaml_is_a_config_error(tmp_path, body, needle):
    with pytest.raises(ConfigError) as exc:
        load_config_file(write(tmp_path, body))
    assert needle in one_short_line(exc)


def test_binary_config_file_is_a_config_error(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00\x80")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config_file(p)


def test_yaml_values_coerce_to_declared_types(tmp_path):
    path = write(tmp_path, "lr: 1\nepochs: 3.0\neval_ks: 20\nvalid_metric: hit@20\nweight_decay: 1e-4\n"
                           "modalities: all\n")
    cfg = resolve_model("lightgcn", file=load_config_file(path))
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.eval_ks == [20] and cfg.weight_decay == 1e-4 and cfg.modalities is None


# --------------------------------------------------------------------------- layers and declarations

def test_preset_values_are_validated_and_named():
    with pytest.raises(ConfigError, match=r"model 'mmssl' preset: drop_rate must be in \[0, 1\)"):
        resolve_model("mmssl", preset={"drop_rate": 1.5})
    with pytest.raises(ConfigError, match="unknown config key 'no_such_key'"):
        resolve_model("mmssl", preset={"no_such_key": 1})


def test_model_value_for_a_trainer_key_keeps_the_trainer_range():
    with pytest.raises(ConfigError, match="model 'm' defaults: lr must be > 0"):
        resolve({"lr": -1.0}, model_name="m")
    assert declarations({"lr": 5e-4})["lr"].min_exclusive


def test_inference_rule_for_plain_defaults():
    assert infer_param(True) == Param(True, bool)
    assert infer_param(3) == Param(3, int, min=0)
    assert infer_param(0.5) == Param(0.5, float, min=0)
    assert infer_param("x") == Param("x", str)
    assert infer_param([1, 2]).type == list[int] and infer_param([1, 2.5]).type == list[float]
    assert infer_param(["a"]).type == list[str]
    assert infer_param(None).nullable
    for bad in ([], [1, "a"], {"a": 1}, (1, None)):
        with pytest.raises(ConfigError, match="declare it"):
            infer_param(bad, "k")
    with pytest.raises(ConfigError, match="finite"):
        resolve({"k": float("nan")})


def test_param_declarations_are_checked():
    with pytest.raises(TypeError):
        Param([1], list)
    with pytest.raises(TypeError):
        Param("a", str, min=0)
    p = Param(0.1, float, min=0, max=1, max_exclusive=True)
    assert p.describe() == "float in [0, 1)"
    assert Param([1], list[int], min=1, min_len=1).describe() == "list[int] >= 1, non-empty"


def test_legacy_helpers_keep_their_signatures():
    assert parse_value("5,20", [10], "eval_ks") == [5, 20]
    assert parse_value("all", None, "modalities") is None
    assert parse_value("on", False, "flag") is True
    assert coerce(2, 0.5, "x") == 2.0 and isinstance(coerce(2, 0.5, "x"), float)
    with pytest.raises(ConfigError, match="expected a number"):
        parse_value("abc", 1e-3, "lr")


def test_shown_never_renders_a_huge_value_in_full():
    nested: list = [1]
    for _ in range(50):
        nested = [nested] * 10
    assert len(shown(nested)) <= 80 and len(shown("x" * 10**6)) <= 80 and len(shown(10**4000)) <= 80


def test_models_verbose_prints_types_and_ranges(capsys):
    assert main(["models", "-v"]) == 0
    out = capsys.readouterr().out
    assert "float > 0" in out and "str: FAC|FD|FM|none" in out and "float in [0, 1)" in out
    assert "list[int] >= 1, non-empty" in out and "str: adam|adamw" in out


def test_a_retired_key_is_accepted_with_its_remaining_value_and_refused_otherwise():
    from mmbench.runner import model_config

    plain = model_config("mmssl", "tiktok")
    assert "fast" not in plain
    assert model_config("mmssl", "tiktok", set_items=["fast=true"]).hash() == plain.hash()
    with pytest.raises(ConfigError, match="fast=false is no longer available.*one code path"):
        model_config("mmssl-official", "tiktok", set_items=["fast=false"])
    with pytest.raises(ConfigError, match="unknown config key 'fast'"):
        model_config("lightgcn", "tiktok", set_items=["fast=true"])
