"""Data layer: the Dataset type, readers for each on-disk layout, dataset cards and caching."""
from mmbench.data.dataset import Dataset, TrainData, SPLITS, to_csr

# Loaded on first use, so `from mmbench.data import Dataset` stays light (no yaml/pandas/sklearn).
_LAZY = {
    "load_dataset": "registry", "list_cards": "registry", "card": "registry", "verify": "registry",
    "import_dataset": "registry", "data_dir": "registry", "cache_dir": "registry",
    "read_mmssl": "readers", "read_mmrec": "readers", "read_ml100k": "readers", "read_auto": "readers",
    "dataset_name_for_directory": "readers",
    "make_synthetic": "synthetic",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"mmbench.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mmbench.data' has no attribute {name!r}")


__all__ = ["Dataset", "TrainData", "SPLITS", "to_csr", *_LAZY]
