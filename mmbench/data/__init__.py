"""Data layer: the Dataset type, readers for each on-disk layout, dataset cards and caching."""
from mmbench.data.dataset import Dataset, TrainData, SPLITS, to_csr

__all__ = ["Dataset", "TrainData", "SPLITS", "to_csr"]
