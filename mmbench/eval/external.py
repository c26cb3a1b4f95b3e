"""Evaluate recommendations made by another tool: a recs file read into `evaluate_topk`.

File format, one line per user, items in rank order:  `user<TAB>item,item,...`
Ids are those of the dataset's files: the original tokens when the dataset re-indexed them
(`dataset.user_tokens` / `item_tokens`), else the dense ids. Blank lines and `#` comments are skipped.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mmbench import safeio
from mmbench.errors import ConfigError, DataError
from mmbench.eval.metrics import METRICS
from mmbench.safeio import shown


def _token_map(tokens, n: int):
    """A function token string -> dense index (or None when unknown)."""
    if tokens is None:
        def dense(text: str):
            v = int(text)
            return v if 0 <= v < n else None
        return dense
    tokens = np.asarray(tokens)
    if tokens.dtype.kind in "iu":
        table = {int(t): i for i, t in enumerate(tokens.tolist())}
        return lambda text: table.get(int(text))
    table = {str(t): i for i, t in enumerate(tokens.tolist())}
    return lambda text: table.get(text)


def read_recs_file(path, dataset) -> dict[int, list[int]]:
    """{dense user: [dense items in rank order]}; any malformed line is a DataError naming it.

    Read through `mmbench.safeio` as a stream: a regular file of at most 1 GiB (never a FIFO or a
    device), UTF-8 with or without a BOM (a BOM never becomes part of the first user id).
    """
    path = Path(path)
    user_of = _token_map(getattr(dataset, "user_tokens", None), dataset.n_users)
    item_of = _token_map(getattr(dataset, "item_tokens", None), dataset.n_items)
    recs: dict[int, list[int]] = {}
    seen_line: dict[int, int] = {}
    name = shown(dataset.name)
    for no, raw in safeio.iter_lines(path, "recs", DataError, label=f"{safeio.clip(path, 200)}"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{safeio.clip(path, 200)}:{no}"
        parts = raw.split("\t")
        if len(parts) != 2:
            raise DataError(f"{where}: expected 'user<TAB>item,item,...', got {shown(raw)}")
        u_txt, items_txt = parts[0].strip(), parts[1].strip()
        try:
            u = user_of(u_txt)
        except ValueError:
            raise DataError(f"{where}: user {shown(u_txt)} is not an integer id") from None
        if u is None:
            raise DataError(f"{where}: unknown user {shown(u_txt)} (not in dataset {name})")
        if u in seen_line:
            raise DataError(f"{where}: user {shown(u_txt)} already listed on line {seen_line[u]}")
        items: list[int] = []
        for tok in (t.strip() for t in items_txt.split(",")) if items_txt else ():
            try:
                i = item_of(tok)
            except ValueError:
                raise DataError(f"{where}: item {shown(tok)} is not an integer id") from None
            if i is None:
                raise DataError(f"{where}: unknown item {shown(tok)} (not in dataset {name})")
            items.append(i)
        if len(set(items)) != len(items):
            raise DataError(f"{where}: user {shown(u_txt)} lists the same item more than once")
        recs[u] = items
        seen_line[u] = no
    return recs


def require_lists(recs: dict[int, list[int]], path) -> None:
    """No list at all, or only empty lists, is a DataError: scoring it would print zeros that look
    like a result."""
    where = safeio.clip(path, 200)
    if not recs:
        raise DataError(f"{where}: no recommendation lists (every line is blank or a comment)")
    if not any(recs.values()):
        raise DataError(f"{where}: all {len(recs)} recommendation lists are empty")


def coverage(recs: dict[int, list[int]], users: np.ndarray, path, split: str) -> tuple[int, str | None]:
    """(users of the split with a list, a note on partial coverage or None). Lists for none of the
    split's users is a DataError (every score would be 0)."""
    listed = np.fromiter(recs, dtype=np.int64, count=len(recs))
    covered = int(np.isin(users, listed).sum())
    if covered == 0:
        raise DataError(f"{safeio.clip(path, 200)}: none of its {len(recs)} lists is for one of the "
                        f"{len(users)} users with {split} items; nothing to score")
    missing = len(users) - covered
    extra = len(recs) - covered
    note = None
    if missing or extra:
        parts = [f"scored {covered} of {len(users)} {split} users"]
        if missing:
            parts.append(f"{missing} without a list score 0")
        if extra:
            parts.append(f"{extra} list(s) for users without {split} items not scored")
        note = "; ".join(parts)
    return covered, note


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise ConfigError(f"--ks must be comma-separated positive integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--ks must be comma-separated positive integers, got {text!r}")
    return ks


def format_table(mean: dict[str, float], ks) -> str:
    """Metrics as rows, K as columns."""
    head = f"{'metric':<12}" + "".join(f"{'@' + str(k):>10}" for k in ks)
    rows = [f"{m:<12}" + "".join(f"{mean[f'{m}@{k}']:>10.4f}" for k in ks) for m in METRICS]
    return "\n".join([head, *rows])


def add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a file of ranked recommendations with the shared evaluator",
        description="Read FILE (one line per user: user<TAB>item,item,... in rank order, ids as in the "
                    "dataset's files) and print the mean metrics. The user's masked items are dropped "
                    "from each list, as the evaluator never ranks them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset card name or directory")
    p.add_argument("--recs", required=True, help="recommendations file")
    p.add_argument("--ks", default="10,20,50", help="comma-separated cut-offs")
    p.add_argument("--mask", default="train", choices=["train", "train+valid"],
                   help="items hidden from the ranking (train: MMSSL/MMRec; train+valid: RecBole)")
    p.add_argument("--split", default="test", choices=["valid", "test"], help="split to evaluate")
    p.add_argument("--data-dir", help="data directory (default: $MMBENCH_DATA_DIR, else datasets/)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from mmbench.data.registry import load_dataset
    from mmbench.eval.evaluator import evaluate_topk

    ks = _parse_ks(args.ks)
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    recs = read_recs_file(args.recs, data)
    require_lists(recs, args.recs)
    res = evaluate_topk(recs, data, split=args.split, ks=ks, mask=args.mask)
    covered, note = coverage(recs, np.asarray(res.users), args.recs, res.split)
    print(f"dataset {data.name}  split {res.split}  mask {res.mask}  "
          f"users {len(res.users)} (with recommendations: {covered})")
    if note:
        print(note)
    print(format_table(res.mean, res.ks))
    return 0
