"""The model zoo (installed as `mmbench.models`). Every module here registers its models on import;
new model files are discovered automatically, so adding a model never touches this file.
Modules must import heavy optional dependencies (e.g. recbole) lazily, inside functions.

A module that fails to import is kept in `BROKEN`; `registry()` then raises an error naming it
(so `mmbench run --models all` never runs a silently smaller zoo), and `mmbench models` lists it."""
import importlib
import pkgutil

_SKIP = {"base", "graph"}
BROKEN: dict[str, str] = {}

for _info in pkgutil.iter_modules(__path__):
    if _info.name in _SKIP or _info.name.startswith("_"):
        continue
    try:
        importlib.import_module(f"{__name__}.{_info.name}")
    except Exception as _exc:  # noqa: BLE001 - reported, not swallowed
        BROKEN[_info.name] = f"{type(_exc).__name__}: {_exc}"
