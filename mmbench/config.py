"""Run configuration: every key declared once (type, range, choices), layered resolution, a stable hash.

Precedence (lowest first): trainer defaults < model defaults < the model's per-dataset preset <
a tuned configuration (`mmbench tune`, used by `run --tuned`; a trial's parameters while tuning) <
the budget's caps < `--config FILE` < `--set key=value`. Every key must be declared (trainer or model); unknown keys are an
error, so a typo never silently does nothing.

A key is declared by a `Param`: the trainer's keys in `TRAINER_PARAMS` below, a model's keys in its
class attribute `defaults`, either as explicit `Param`s or as plain values whose type is inferred (see
`infer_param`). Every value of every layer goes through `Param.coerce` (text and YAML to the declared
type) and `Param.validate` (finite, in range, in the choices), and a violation is ONE line naming the
layer, the key and a bounded rendering of the value — a hostile file never gets echoed in full.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, get_args, get_origin

import yaml

from mmbench import safeio
from mmbench.errors import ConfigError
from mmbench.eval.metrics import METRICS, RECALL_20, parse_metric_key

# Error messages render at most this many characters of a value (a 1 MB string or a YAML alias bomb
# must not end up in a terminal or a log line).
SHOWN_CHARS = 80
# Integers must fit a signed 64-bit slot (torch and numpy take them as int64).
INT_LIMIT = 2**63 - 1
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True,
               "0": False, "false": False, "no": False, "off": False}
_SCALAR_TYPES = (bool, int, float, str)
_NOUNS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          object: "a number, string, boolean or a list of them"}

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict = 2, 6, 6, 4
_repr.maxstring, _repr.maxother, _repr.maxlong = SHOWN_CHARS, SHOWN_CHARS, 40


def shown(value: Any) -> str:
    """A repr of at most SHOWN_CHARS characters; nested or huge values are never rendered in full
    (reprlib stops at a fixed depth and width, so even an alias bomb costs a few dozen calls)."""
    text = _repr.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _clip(text: str) -> str:
    """Raw text (a `--set` value, a path) cut to SHOWN_CHARS characters."""
    return safeio.clip(text, SHOWN_CHARS)


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Param:
    """The declaration of one config key.

    `type` is bool, int, float, str, list[int], list[float], list[str], or object (an untyped scalar
    or list, parsed as YAML; only for plain `None` defaults). `min`/`max` bound numbers (for lists:
    every element), exclusive when `min_exclusive`/`max_exclusive`. `choices` restricts the value (for
    lists: every element). `nullable` allows None (from YAML null or one of `null_words` in `--set`).
    Floats must always be finite; strings are at most `max_chars` long; lists at least `min_len` long.
    """

    default: Any
    type: Any
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    nullable: bool = False
    min_len: int = 0
    max_chars: int = 200
    null_words: tuple[str, ...] = ("none", "null", "~")
    doc: str = ""

    def __post_init__(self) -> None:
        elem = self.element
        base = elem if elem is not None else self.type
        if base not in _SCALAR_TYPES + (object,) or (elem is not None and elem not in (int, float, str)):
            raise TypeError(f"Param type must be bool, int, float, str, list[int|float|str] or object, "
                            f"got {self.type!r}")
        if self.choices is not None and not isinstance(self.choices, tuple):
            object.__setattr__(self, "choices", tuple(self.choices))
        if (self.min is not None or self.max is not None) and base not in (int, float):
            raise TypeError(f"Param min/max need a numeric type, got {self.type!r}")

    @property
    def element(self) -> type | None:
        """The element type of a list declaration, else None."""
        return get_args(self.type)[0] if get_origin(self.type) is list else None

    # ---- coercion ------------------------------------------------------------------------------
    def coerce(self, value: Any, source: str, key: str) -> Any:
        """`value` (a `--set` string or a YAML value) as the declared type; ConfigError if it is not.

        Lists accept `a,b,c` or `[a,b,c]` text, a YAML sequence, or one scalar (a one-element list).
        Range and choices are checked by `validate`, not here.
        """
        if value is None or (self.nullable and isinstance(value, str)
                             and value.strip().lower() in self.null_words):
            if self.nullable:
                return None
            raise ConfigError(f"{source}: {key} must be {self.describe()}, got null")
        elem = self.element
        if elem is None:
            return self._scalar(value, self.type, source, key)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            items: Iterable[Any] = [p.strip() for p in text.split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            items = [value]
        return [self._scalar(v, elem, source, key, in_list=True) for v in items]

    def _scalar(self, value: Any, typ: Any, source: str, key: str, in_list: bool = False) -> Any:
        def bad() -> ConfigError:
            what = f"a list of {_plural(typ)}" if in_list else _NOUNS[typ]
            return ConfigError(f"{source}: {key}: expected {what}, got {shown(value)}")

        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.strip().lower()]
            raise bad()
        if typ is int:
            if isinstance(value, str):
                value = _parse_number(value.strip(), bad)
            if isinstance(value, bool):
                raise bad()
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad()
        if typ is float:
            if isinstance(value, str):
                value = _parse_number(value.strip(), bad)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad()
            try:
                return float(value)
            except OverflowError:  # an int beyond the float range
                return math.inf if value > 0 else -math.inf
        if typ is str:
            if isinstance(value, str):
                return value
            raise bad()
        # object: untyped, as YAML would read it
        if isinstance(value, str) and not in_list:
            try:  # no aliases here either: a short --set value must not expand to a huge one
                value = yaml.load(value, Loader=safeio.NoAliasLoader)  # noqa: S506 - a SafeLoader
            except (yaml.YAMLError, ValueError, RecursionError):
                pass
        if value is None or isinstance(value, _SCALAR_TYPES):
            return value
        if isinstance(value, (list, tuple)) and not in_list:
            return [self._scalar(v, object, source, key, in_list=True) for v in value]
        raise bad()

    # ---- validation ----------------------------------------------------------------------------
    def validate(self, value: Any, source: str, key: str) -> None:
        """Finite (floats, always), within range, among the choices; for lists per element and long
        enough. Raises ConfigError with one line naming `source` and `key`."""
        if value is None:
            if not self.nullable:
                raise ConfigError(f"{source}: {key} must be {self.describe()}, got null")
            return
        elem = self.element
        if elem is None:
            self._check_one(value, self.type, source, key, False)
            return
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list of {_plural(elem)}, got {shown(value)}")
        if len(value) < self.min_len:
            need = "not be empty" if self.min_len == 1 else f"have at least {self.min_len} elements"
            raise ConfigError(f"{source}: {key} must {need}, got {shown(value)}")
        for v in value:
            self._check_one(v, elem, source, key, True)

    def _check_one(self, v: Any, typ: Any, source: str, key: str, in_list: bool) -> None:
        what = f"every element of {key}" if in_list else key
        got = f", got {shown(v)}"
        if typ is object:
            ok = v is None or isinstance(v, _SCALAR_TYPES) or (
                isinstance(v, list) and not in_list and all(x is None or isinstance(x, _SCALAR_TYPES) for x in v))
            if not ok:
                raise ConfigError(f"{source}: {key}: expected {_NOUNS[object]}{got}")
            for x in (v if isinstance(v, list) else [v]):
                if isinstance(x, float) and not math.isfinite(x):
                    raise ConfigError(f"{source}: {what} must be a finite number{got}")
                if isinstance(x, str) and len(x) > self.max_chars:
                    raise ConfigError(f"{source}: {what} must be at most {self.max_chars} characters{got}")
            return
        if typ is bool:
            if not isinstance(v, bool):
                raise ConfigError(f"{source}: {key}: expected true or false{got}")
        elif typ is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{source}: {key}: expected {_NOUNS[int] if not in_list else 'integers'}{got}")
            if abs(v) > INT_LIMIT:
                raise ConfigError(f"{source}: {what} must be an integer of at most 64 bits{got}")
        elif typ is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{source}: {key}: expected {_NOUNS[float]}{got}")
            if not math.isfinite(v):
                rng = self.range_text()
                raise ConfigError(f"{source}: {what} must be a finite number{' ' + rng if rng else ''}{got}")
        elif typ is str:
            if not isinstance(v, str):
                raise ConfigError(f"{source}: {key}: expected {_NOUNS[str]}{got}")
            if self.choices is None and len(v) > self.max_chars:
                raise ConfigError(f"{source}: {what} must be at most {self.max_chars} characters{got}")
        if typ in (int, float) and not self.in_range(v):
            raise ConfigError(f"{source}: {what} must be {self.range_text()}{got}")
        if self.choices is not None and v not in self.choices:
            raise ConfigError(f"{source}: {what} must be one of {', '.join(map(repr, self.choices))}{got}")

    def in_range(self, v: float) -> bool:
        if self.min is not None and (v <= self.min if self.min_exclusive else v < self.min):
            return False
        if self.max is not None and (v >= self.max if self.max_exclusive else v > self.max):
            return False
        return True

    # ---- description ---------------------------------------------------------------------------
    def range_text(self) -> str:
        """'> 0', '>= 1', 'in [0, 1)', '<= 5' or '' (no bound)."""
        lo, hi = self.min, self.max
        if lo is not None and hi is not None:
            return (f"in {'(' if self.min_exclusive else '['}{_num(lo)}, {_num(hi)}"
                    f"{')' if self.max_exclusive else ']'}")
        if lo is not None:
            return f"{'>' if self.min_exclusive else '>='} {_num(lo)}"
        if hi is not None:
            return f"{'<' if self.max_exclusive else '<='} {_num(hi)}"
        return ""

    def type_name(self) -> str:
        elem = self.element
        return f"list[{elem.__name__}]" if elem is not None else (
            "any" if self.type is object else self.type.__name__)

    def describe(self) -> str:
        """The declaration in words, e.g. 'float > 0', 'str: adam|adamw', 'list[int] >= 1, non-empty'."""
        parts = [self.type_name()]
        if self.choices is not None:
            parts[0] += ": " + "|".join(map(str, self.choices))
        rng = self.range_text()
        if rng:
            parts[0] += " " + rng
        if self.min_len:
            parts.append("non-empty" if self.min_len == 1 else f"at least {self.min_len} long")
        if self.nullable:
            parts.append("or none")
        return ", ".join(parts)


def _plural(typ: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(typ, "scalars")


def _parse_number(text: str, bad) -> int | float:
    """An int when the text is one, else a float (`1e3`, `nan`, `inf` included: range checks follow)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise bad() from None


# --------------------------------------------------------------------------- the trainer's keys

TRAINER_PARAMS: dict[str, Param] = {
    # One epoch cap and one patience for every model under the full budget (README, "Budgets"); a
    # model states other values only in an author-published per-dataset preset (MMSSL's patience 8).
    "epochs": Param(1000, int, min=1, doc="maximum training epochs"),
    "patience": Param(20, int, min=0, doc="epochs without a better valid metric before stopping; 0 = never"),
    "eval_every": Param(1, int, min=1, doc="validate every N epochs"),
    "batch_size": Param(2048, int, min=1, doc="BPR triples per batch"),
    "lr": Param(1e-3, float, min=0, min_exclusive=True, doc="learning rate"),
    "weight_decay": Param(0.0, float, min=0, doc="the optimiser's weight decay"),
    "optimizer": Param("adam", str, choices=("adam", "adamw")),
    "embedding_size": Param(64, int, min=1),
    "eval_ks": Param([10, 20, 50], list[int], min=1, min_len=1, doc="reported cut-offs K"),
    "mask": Param("train", str, choices=("train", "train+valid"),
                  doc="items masked when ranking the test split"),
    "valid_metric": Param(RECALL_20, str, doc=f"<{'|'.join(METRICS)}>@K with K in eval_ks; early stopping"),
    "modalities": Param(None, list[str], nullable=True, null_words=("", "none", "null", "~", "all"),
                        doc="item modalities the model sees; none/all = every modality of the dataset"),
    "eval_chunk_size": Param(2048, int, min=1, doc="users scored per evaluation chunk (not hashed)"),
    "checkpoint_every": Param(30.0, float, min=0,
                              doc="seconds between checkpoints (always at the end); 0 = every epoch (not hashed)"),
}
# The default values as a plain dict, for code that only needs them.
TRAINER_DEFAULTS: dict[str, Any] = {k: p.default for k, p in TRAINER_PARAMS.items()}

# Keys that identify a run but do not change the computed function (excluded from the hash).
NON_FUNCTIONAL_KEYS = {"eval_chunk_size", "checkpoint_every"}


def infer_param(default: Any, key: str = "?") -> Param:
    """The declaration of a plain model default: its type from the value (bool, int, float, str,
    non-empty list of ints/floats/strs, None = untyped); numbers must be finite and >= 0. A key that
    needs another range or choices is declared with an explicit Param instead."""
    if isinstance(default, Param):
        return default
    if isinstance(default, bool):
        return Param(default, bool)
    if isinstance(default, int):
        return Param(default, int, min=0)
    if isinstance(default, float):
        return Param(default, float, min=0)
    if isinstance(default, str):
        return Param(default, str)
    if default is None:
        return Param(None, object, nullable=True)
    if isinstance(default, (list, tuple)) and default:
        kinds = {type(v) for v in default}
        if kinds <= {int}:
            return Param(list(default), list[int], min=0)
        if kinds <= {int, float}:
            return Param(list(default), list[float], min=0)
        if kinds == {str}:
            return Param(list(default), list[str])
    raise ConfigError(f"config {key}: cannot infer a type from the default {shown(default)}; "
                      f"declare it with mmbench.config.Param")


def declarations(model_defaults: Mapping[str, Any] | None = None) -> dict[str, Param]:
    """Every key a model accepts: the trainer's Params, then the model's (a plain value for a trainer
    key keeps the trainer's declaration with a new default; a new plain key is inferred)."""
    params = dict(TRAINER_PARAMS)
    for key, value in (model_defaults or {}).items():
        if isinstance(value, Param):
            params[key] = value
        elif key in TRAINER_PARAMS:
            params[key] = dataclasses.replace(TRAINER_PARAMS[key], default=value)
        else:
            params[key] = infer_param(value, key)
    return params


# --------------------------------------------------------------------------- the resolved config

class Config(dict):
    """A dict with attribute access; values are already typed (plain values, never Params)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc

    def hash(self) -> str:
        payload = {k: v for k, v in sorted(self.items()) if k not in NON_FUNCTIONAL_KEYS}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


def parse_value(text: str, default: Any, key: str) -> Any:
    """Parse a `--set` string to the type of `default` (a Param or a plain default value; lists accept
    `a,b,c`). Only the type is checked here; `resolve` also checks range and choices."""
    param = default if isinstance(default, Param) else TRAINER_PARAMS.get(key) or infer_param(default, key)
    return param.coerce(text, f"--set {_clip(key)}={_clip(text)}", key)


def coerce(value: Any, default: Any, key: str) -> Any:
    """Coerce a YAML value (from `--config`) to the type of `default` (a Param or a plain value)."""
    param = default if isinstance(default, Param) else TRAINER_PARAMS.get(key) or infer_param(default, key)
    return param.coerce(value, "config file", key)


def parse_set_items(items: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {shown(item)}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {shown(item)}: empty key")
        out[key] = value
    return out


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """The `--config` mapping, read through `mmbench.safeio`: a regular file of at most 1 MiB, UTF-8
    (a BOM is fine), YAML without anchors or aliases. Any problem is one ConfigError line."""
    if path is None:
        return {}
    p = Path(path)
    where = f"config file {_clip(p)}"
    data = safeio.load_yaml(p, "config", ConfigError, label=where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of key: value")
    return data


def resolve(
    model_defaults: dict[str, Any],
    preset: dict[str, Any] | None = None,
    file_overrides: dict[str, Any] | None = None,
    set_overrides: dict[str, str] | None = None,
    model_name: str = "",
    config_path: str | Path | None = None,
    *,
    tuned: dict[str, Any] | None = None,
    tuned_source: str = "tuned configuration",
    caps: dict[str, Any] | None = None,
    retired: dict[str, tuple[Any, str]] | None = None,
) -> Config:
    """Merge the layers; every value is coerced and validated against its key's declaration, and a
    key no layer below declares is an error. `config_path` names the `--config` file in messages.

    Layers, lowest first: defaults, `preset`, `tuned` (named `tuned_source` in messages), `caps`
    (the budget's epochs/patience), `file_overrides`, `set_overrides`. A tuned value sits below the
    budget so that a search can never change what a budget caps. `retired` keys (the model's
    `retired`) are accepted with the value whose computation is now the only one, and dropped."""
    params = declarations(model_defaults)
    known = set(params)
    who = f"model {model_name!r}" if model_name else "model"
    values: dict[str, Any] = {}
    origin: dict[str, tuple[int, str]] = {}

    def apply(rank: int, source: str, key: Any, value: Any) -> None:
        if key in (retired or {}) and key not in known:
            kept, why = retired[key]
            try:  # parsed as any value of the key's type would be
                if infer_param(kept, key).coerce(value, source, key) == kept:
                    return
            except ConfigError:
                pass
            raise ConfigError(f"{source}: {key}={_clip(value)} is no longer available for {who}: {why}")
        if key not in known:
            raise ConfigError(f"{source}: {unknown_key_message(key, known, model_name)}")
        param = params[key]
        typed = param.coerce(value, source, key)
        param.validate(typed, source, key)
        values[key] = typed
        origin[key] = (rank, source)

    for key, param in params.items():
        in_model = key in (model_defaults or {})
        apply(0, f"{who} defaults" if in_model else "trainer defaults", key, param.default)
    for key, value in (preset or {}).items():
        apply(1, f"{who} preset", key, value)
    for key, value in (tuned or {}).items():
        apply(2, tuned_source, key, value)
    for key, value in (caps or {}).items():
        apply(3, "budget caps", key, value)
    file_source = f"config file {_clip(config_path)}" if config_path is not None else "config file"
    for key, value in (file_overrides or {}).items():
        apply(4, file_source, key, value)
    for key, text in (set_overrides or {}).items():
        apply(5, f"--set {_clip(key)}={_clip(text)}", key, text)
    _check_together(values, origin)
    return Config(values)


def unknown_key_message(key: Any, known: set[str], model_name: str) -> str:
    close = (difflib.get_close_matches(key, sorted(known), n=1)
             if isinstance(key, str) and len(key) <= 100 else [])
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f" for model {model_name!r}" if model_name else ""
    return f"unknown config key {shown(key)}{where}{hint}"


def _check_together(cfg: Mapping[str, Any], origin: Mapping[str, tuple[int, str]] | None = None) -> None:
    """Constraints between keys: valid_metric is <metric>@K with K among eval_ks."""
    metric, ks = cfg["valid_metric"], cfg["eval_ks"]
    try:
        _, k = parse_metric_key(metric)
        ok = k in ks
    except ValueError:
        ok = False
    if not ok:
        src = ""
        if origin:
            src = max(origin["valid_metric"], origin["eval_ks"])[1] + ": "
        raise ConfigError(f"{src}valid_metric {shown(metric)} must be <{'|'.join(METRICS)}>@K "
                          f"with K in eval_ks {shown(ks)}")


def validate(cfg: Mapping[str, Any], model_defaults: Mapping[str, Any] | None = None) -> None:
    """Check a whole resolved config against the declarations (each key, then the cross-key rules)."""
    params = declarations(model_defaults)
    for key, value in cfg.items():
        if key in params:
            params[key].validate(value, "config", key)
    _check_together(cfg)
