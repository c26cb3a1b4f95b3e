"""Per-epoch feedback for one run: a progress bar on a terminal, one plain line per epoch anywhere
else (a redirected log must not fill with carriage-return updates), or nothing.

Modes: `bar` (tqdm), `lines`, `off`; `auto` = `bar` when stderr is a terminal, else `lines`.
`mmbench run` uses `auto`, and `lines` with `--no-progress`; library callers pass False for `off`.

Whatever the mode, a run with a folder also appends each epoch's line, time-stamped, to
`<run folder>/log.txt`: runs on Dask workers have no console of their own, and a run resumed three
times keeps one history of what it did.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

MODES = ("auto", "bar", "lines", "off")
RUN_LOG = "log.txt"  # inside a run folder: one line per epoch (and the runner's per-run lines)
_warned: set[str] = set()


def append_log(path: Path | None, line: str) -> None:
    """Append one time-stamped line to a run's log, opened and closed per line (nothing is left
    open when a run dies; other processes may append to the same file between two lines).

    A log that cannot be written (full disk, read-only folder) is said once and not fatal: the
    checkpoint and the record are what a run must not lose, and they fail loudly on their own."""
    if path is None:
        return
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")
    except OSError as exc:
        if str(path) not in _warned:
            _warned.add(str(path))
            print(f"[warn] {path}: cannot append to the run log ({exc.strerror or exc})", file=sys.stderr)


def resolve_mode(progress: bool | str, stream: TextIO | None = None) -> str:
    """True -> auto, False -> off; `auto` becomes `bar` on a terminal, else `lines`."""
    mode = {True: "auto", False: "off"}.get(progress, progress) if isinstance(progress, bool) else progress
    if mode not in MODES:
        raise ValueError(f"progress must be one of {MODES} or a bool, got {progress!r}")
    if mode == "auto":
        stream = stream or sys.stderr
        return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"
    return mode


class EpochProgress:
    """What the trainer reports after each epoch, rendered in the chosen mode."""

    def __init__(self, progress: bool | str, desc: str, total: int, initial: int = 0,
                 stream: TextIO | None = None, run_dir: Path | None = None):
        self.stream = stream or sys.stderr
        self.mode = resolve_mode(progress, self.stream)
        self.desc, self.total = desc, total
        self.log = Path(run_dir) / RUN_LOG if run_dir is not None else None
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="ep", leave=False,
                            dynamic_ncols=True, file=self.stream)

    def epoch(self, epoch: int, losses: dict[str, float], seconds: float, valid: dict[str, Any] | None,
              metric: str, best_epoch: int) -> None:
        # a model fitted when built (MostPop, ItemKNN) has no training loss
        loss = f"{losses['loss']:.4f}" if "loss" in losses else "none (fitted when built)"
        shown = f" valid {metric} {valid[metric]:.4f} (best epoch {best_epoch})" if valid is not None else ""
        line = f"{self.desc} epoch {epoch}/{self.total}: loss {loss}{shown} {seconds:.1f}s"
        append_log(self.log, line)
        if self.bar is not None:
            post = {"loss": loss, "best": best_epoch}
            if valid is not None:
                post[metric] = f"{valid[metric]:.4f}"
            self.bar.set_postfix(**post)
            self.bar.update(1)
        elif self.mode == "lines":
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
