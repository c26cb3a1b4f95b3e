"""Evaluate recommendations made by another tool: a recs file read into `evaluate_topk`.

File format, one line per user, items in rank order:  `user<TAB>item,item,...`
Ids are those of the dataset's files: the original tokens when the dataset re-indexed them
(`dataset.user_tokens` / `item_tokens`), else the dense ids. Blank lines and `#` comments are skipped.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mmbench.errors import ConfigError, DataError
from mmbench.eval.metrics import METRICS


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
    """{dense user: [dense items in rank order]}; any malformed line is a DataError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read recommendations file ({exc})") from None
    user_of = _token_map(getattr(dataset, "user_tokens", None), dataset.n_users)
    item_of = _token_map(getattr(dataset, "item_tokens", None), dataset.n_items)
    recs: dict[int, list[int]] = {}
    seen_line: dict[int, int] = {}
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{no}"
        parts = raw.rstrip("\r\n").split("\t")
        if len(parts) != 2:
            raise DataError(f"{where}: expected 'user<TAB>item,item,...', got {raw[:60]!r}")
        u_txt, items_txt = parts[0].strip(), parts[1].strip()
        try:
            u = user_of(u_txt)
        except ValueError:
            raise DataError(f"{where}: user {u_txt!r} is not an integer id") from None
        if u is None:
            raise DataError(f"{where}: unknown user {u_txt!r} (not in dataset {dataset.name!r})")
        if u in seen_line:
            raise DataError(f"{where}: user {u_txt!r} already listed on line {seen_line[u]}")
        items: list[int] = []
        for tok in (t.strip() for t in items_txt.split(",")) if items_txt else ():
            try:
                i = item_of(tok)
            except ValueError:
                raise DataError(f"{where}: item {tok!r} is not an integer id") from None
            if i is None:
                raise DataError(f"{where}: unknown item {tok!r} (not in dataset {dataset.name!r})")
            items.append(i)
        if len(set(items)) != len(items):
            raise DataError(f"{where}: user {u_txt!r} lists the same item more than once")
        recs[u] = items
        seen_line[u] = no
    return recs


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
    res = evaluate_topk(recs, data, split=args.split, ks=ks, mask=args.mask)
    covered = int(np.isin(res.users, np.fromiter(recs, dtype=np.int64, count=len(recs))).sum())
    print(f"dataset {data.name}  split {res.split}  mask {res.mask}  "
          f"users {len(res.users)} (with recommendations: {covered})")
    print(format_table(res.mean, res.ks))
    return 0
