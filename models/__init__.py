"""The model zoo (installed as `mmbench.models`). Every module here registers its models on import;
new model files are discovered automatically, so adding a model never touches this file.
Modules must import heavy optional dependencies (e.g. recbole) lazily, inside functions."""
import importlib
import pkgutil

_SKIP = {"base", "graph"}

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _SKIP and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
