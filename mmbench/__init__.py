"""mmbench: a benchmark suite for multimodal recommendation.

Python API:
    mmbench.load_dataset(name_or_path) -> Dataset
    mmbench.evaluate(scorer, dataset, split="test", ks=(10, 20, 50), mask="train") -> EvalResult
"""
import os as _os

__version__ = "0.1.0"

# PyTorch's CPU allocator backs blocks of 2 MiB or more with transparent huge pages when this is set (it
# reads it once, at torch's first allocation, so it must come before that). Training allocates the same
# large temporaries every step; with 4 KiB pages each one page-faults in anew. Measured on MMSSL/TikTok
# at 2 threads: about 4% less time per batch and a lower peak RSS (README, "Benchmarks"). Results do not
# depend on it. THP_MEM_ALLOC_ENABLE=0 in the environment keeps torch's default.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def load_dataset(name_or_path, data_dir=None):
    """A validated Dataset from a card name (`mmbench data list`) or a directory."""
    from mmbench.data.registry import load_dataset as _load

    return _load(name_or_path, data_dir=data_dir)


def evaluate(scorer, dataset, split="test", ks=(10, 20, 50), mask="train", **kwargs):
    """All-rank evaluation of `scorer(users) -> [len(users), n_items]` on one split."""
    from mmbench.eval import evaluate as _evaluate

    return _evaluate(scorer, dataset, split=split, ks=ks, mask=mask, **kwargs)


__all__ = ["load_dataset", "evaluate", "__version__"]
