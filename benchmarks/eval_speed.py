"""How much does `evaluate` cost over the bare minimum of all-rank evaluation? (no arguments)

Real TikTok test users, random 64-d user/item embeddings, one thread. The floor is what any
all-rank evaluator must do: per chunk of 2048 users a score matmul, training items set to -inf,
`torch.topk(50)`. `evaluate` scores the same embeddings through a scorer. Repetitions are
interleaved and the minimum of each is kept. Last line: `ratio X.XX` (evaluate / floor).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmbench.data.dataset import Dataset, to_csr  # noqa: E402
from mmbench.errors import MMBenchError  # noqa: E402
from mmbench.eval import evaluate  # noqa: E402

CHUNK, DIM, TOPK, REPS = 2048, 64, 50, 9


def data_dir() -> Path:
    return Path(os.environ.get("MMBENCH_DATA_DIR", ROOT / ".." / "shared" / "data"))


def load_tiktok() -> tuple[Dataset, str]:
    """The registry's TikTok when it is available, else the MMSSL JSON files read directly."""
    try:
        from mmbench.data.registry import load_dataset

        return load_dataset("tiktok", data_dir=str(data_dir())), "registry"
    except (ImportError, MMBenchError) as exc:
        note = f"json files ({type(exc).__name__}: {exc})"
    d = data_dir() / "tiktok"
    splits = {}
    for name, file in (("train", "train.json"), ("valid", "val.json"), ("test", "test.json")):
        with open(d / file) as f:
            raw = json.load(f)
        rows = np.concatenate([np.full(len(v), int(u)) for u, v in raw.items()] or [[]])
        cols = np.concatenate([np.asarray(v, dtype=np.int64) for v in raw.values()] or [[]])
        splits[name] = (rows.astype(np.int64), cols.astype(np.int64))
    n_users = 1 + max(int(r.max()) for r, _ in splits.values())
    n_items = max(np.load(d / "image_feat.npy", mmap_mode="r").shape[0],
                  1 + max(int(c.max()) for _, c in splits.values()))
    mats = {k: to_csr(r, c, n_users, n_items) for k, (r, c) in splits.items()}
    return Dataset("tiktok", n_users, n_items, mats["train"], mats["valid"], mats["test"]), note


def main() -> None:
    torch.set_num_threads(1)
    ds, source = load_tiktok()
    users = np.flatnonzero(np.diff(ds.test.indptr) > 0)
    g = torch.Generator().manual_seed(0)
    U = torch.randn(ds.n_users, DIM, generator=g)
    V = torch.randn(ds.n_items, DIM, generator=g)
    print(f"tiktok from {source}: {ds.n_users} users, {ds.n_items} items, "
          f"{len(users)} test users, chunks of {CHUNK}, 1 thread")

    # Floor inputs prepared once, outside the timing (evaluate caches the same work per dataset).
    chunks = []
    for a in range(0, len(users), CHUNK):
        u = users[a:a + CHUNK]
        sub = ds.train[u].tocoo()
        flat = torch.as_tensor(sub.row.astype(np.int64) * ds.n_items + sub.col)
        chunks.append((torch.as_tensor(u, dtype=torch.long), flat))

    def floor():
        with torch.no_grad():
            for u, flat in chunks:
                s = U[u] @ V.T
                s.view(-1).index_fill_(0, flat, float("-inf"))
                torch.topk(s, TOPK)

    def scorer(u):
        return U[u] @ V.T

    def run_eval():
        return evaluate(scorer, ds, split="test", ks=(10, 20, 50), mask="train", chunk_size=CHUNK)

    t0 = time.perf_counter()
    res = run_eval()
    cold = time.perf_counter() - t0
    floor()
    t_floor, t_eval = [], []
    for _ in range(REPS):
        t0 = time.perf_counter(); floor(); t_floor.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); run_eval(); t_eval.append(time.perf_counter() - t0)
    f, e = min(t_floor), min(t_eval)
    print(f"recall@20 {res.mean['recall@20']:.4f} (random embeddings); first evaluate call {cold * 1e3:.1f} ms")
    print(f"floor    {f * 1e3:8.1f} ms  (matmul + train mask + topk({TOPK}))")
    print(f"evaluate {e * 1e3:8.1f} ms  (min of {REPS}, interleaved)")
    print(f"ratio {e / f:.2f}")


if __name__ == "__main__":
    main()
