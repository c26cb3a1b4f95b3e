"""mmbench: a benchmark suite for multimodal recommendation.

Python API:
    mmbench.load_dataset(name_or_path) -> Dataset
    mmbench.evaluate(scorer, dataset, split="test", ks=(10, 20, 50), mask="train") -> EvalResult
"""
__version__ = "0.1.0"


def load_dataset(name_or_path, data_dir=None):
    """A validated Dataset from a card name (`mmbench data list`) or a directory."""
    from mmbench.data.registry import load_dataset as _load

    return _load(name_or_path, data_dir=data_dir)


def evaluate(scorer, dataset, split="test", ks=(10, 20, 50), mask="train", **kwargs):
    """All-rank evaluation of `scorer(users) -> [len(users), n_items]` on one split."""
    from mmbench.eval import evaluate as _evaluate

    return _evaluate(scorer, dataset, split=split, ks=ks, mask=mask, **kwargs)


__all__ = ["load_dataset", "evaluate", "__version__"]
