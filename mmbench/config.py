"""Run configuration: layered defaults, typed `--set` overrides, and a stable hash.

Precedence (lowest first): trainer defaults < model defaults < the model's per-dataset preset <
`--config FILE` < `--set key=value`. Every key must be known (trainer or model); unknown keys are an
error, so a typo never silently does nothing.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import yaml

from mmbench.errors import ConfigError

TRAINER_DEFAULTS: dict[str, Any] = {
    "epochs": 500,
    "patience": 20,
    "eval_every": 1,
    "batch_size": 2048,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "optimizer": "adam",  # adam | adamw
    "embedding_size": 64,
    "eval_ks": [10, 20, 50],
    "mask": "train",  # train | train+valid (applies to the test split)
    "valid_metric": "recall@20",
    "modalities": None,  # None = every modality of the dataset
    "eval_chunk_size": 2048,
    # seconds between checkpoints of the running state (always at the end); 0 = every epoch
    "checkpoint_every": 30.0,
}

# Keys that identify a run but do not change the computed function (excluded from the hash).
NON_FUNCTIONAL_KEYS = {"eval_chunk_size", "checkpoint_every"}


class Config(dict):
    """A dict with attribute access; values are already typed."""

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
    """Parse a `--set` string to the type of the key's default (lists accept `a,b,c`)."""
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={text}: expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise ConfigError(f"--set {key}={text}: expected an integer") from None
            if as_float.is_integer():
                return int(as_float)
            raise ConfigError(f"--set {key}={text}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected a number") from None
    if isinstance(default, list) or key in ("modalities",):
        if text.strip().lower() in ("", "none", "all"):
            return None if key == "modalities" else []
        parts = [p.strip() for p in text.strip("[]").split(",") if p.strip()]
        elem = default[0] if isinstance(default, list) and default else None
        if isinstance(elem, (int, float)) and not isinstance(elem, bool):
            return [parse_value(p, elem, key) for p in parts]
        return parts
    if default is None:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        return value
    return text


def coerce(value: Any, default: Any, key: str) -> Any:
    """Coerce a YAML value (from `--config`) to the default's type."""
    if isinstance(value, str):
        return parse_value(value, default, key)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"config {key}: expected true or false, got {value!r}")
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"config {key}: expected an integer, got {value!r}")
    return value


def parse_set_items(items: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        out[key] = value
    return out


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of key: value")
    return data


def resolve(
    model_defaults: dict[str, Any],
    preset: dict[str, Any] | None = None,
    file_overrides: dict[str, Any] | None = None,
    set_overrides: dict[str, str] | None = None,
    model_name: str = "",
) -> Config:
    """Merge the layers; unknown keys in the file or `--set` raise ConfigError."""
    base: dict[str, Any] = dict(TRAINER_DEFAULTS)
    base.update(model_defaults)
    base.update(preset or {})
    known = set(base)
    for key, value in (file_overrides or {}).items():
        if key not in known:
            raise ConfigError(unknown_key_message(key, known, model_name))
        base[key] = coerce(value, base[key], key)
    for key, text in (set_overrides or {}).items():
        if key not in known:
            raise ConfigError(unknown_key_message(key, known, model_name))
        base[key] = parse_value(text, base[key], key)
    validate(base)
    return Config(base)


def unknown_key_message(key: str, known: set[str], model_name: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f" for model {model_name!r}" if model_name else ""
    return f"unknown config key {key!r}{where}{hint}"


def validate(cfg: dict[str, Any]) -> None:
    for key in ("epochs", "batch_size", "embedding_size", "eval_every"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"config {key} must be >= 1, got {cfg[key]}")
    if cfg["patience"] < 0:
        raise ConfigError(f"config patience must be >= 0, got {cfg['patience']}")
    if cfg["lr"] <= 0:
        raise ConfigError(f"config lr must be > 0, got {cfg['lr']}")
    if cfg["mask"] not in ("train", "train+valid"):
        raise ConfigError(f"config mask must be 'train' or 'train+valid', got {cfg['mask']!r}")
    if cfg["optimizer"] not in ("adam", "adamw"):
        raise ConfigError(f"config optimizer must be 'adam' or 'adamw', got {cfg['optimizer']!r}")
    ks = cfg["eval_ks"]
    if not ks or any((not isinstance(k, int)) or k < 1 for k in ks):
        raise ConfigError(f"config eval_ks must be positive integers, got {ks}")
    metric = cfg["valid_metric"]
    name, _, k = str(metric).partition("@")
    if name not in ("recall", "precision", "ndcg", "ndcg_legacy", "hit") or not k.isdigit() or int(k) not in ks:
        raise ConfigError(
            f"config valid_metric {metric!r} must be <recall|precision|ndcg|ndcg_legacy|hit>@K with K in eval_ks {ks}"
        )
