"""The model zoo (installed as `mmbench.models`). Every module here registers its models on import;
new model files are discovered automatically, so adding a model never touches this file.
Modules must import heavy optional dependencies (e.g. recbole) lazily, inside functions.

A module that fails to import does not take the rest of the zoo down: the failure is kept in
`BROKEN` and reported as a warning (and by `mmbench models`)."""
import importlib
import pkgutil
import warnings

_SKIP = {"base", "graph"}
BROKEN: dict[str, str] = {}

for _info in pkgutil.iter_modules(__path__):
    if _info.name in _SKIP or _info.name.startswith("_"):
        continue
    try:
        importlib.import_module(f"{__name__}.{_info.name}")
    except Exception as _exc:  # noqa: BLE001 - reported, not swallowed
        BROKEN[_info.name] = f"{type(_exc).__name__}: {_exc}"
        warnings.warn(f"model module {_info.name!r} failed to import: {BROKEN[_info.name]}", stacklevel=1)
