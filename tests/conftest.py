"""Shared fixtures: a small synthetic dataset, an isolated cache, the real-data directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Parsed-dataset caches go to a per-session temp dir, never into the repo."""
    if "MMBENCH_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("MMBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    d = os.environ.get("MMBENCH_DATA_DIR")
    if not d or not Path(d, "tiktok", "train.json").exists():
        pytest.skip("real data not available: set MMBENCH_DATA_DIR to the shared data directory")
    return Path(d)


@pytest.fixture(scope="session")
def synthetic():
    from mmbench.data.synthetic import make_synthetic

    return make_synthetic(n_users=120, n_items=80, seed=0)
