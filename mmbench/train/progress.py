"""Per-epoch feedback for one run: a progress bar on a terminal, one plain line per epoch anywhere
else (a redirected log must not fill with carriage-return updates), or nothing.

Modes: `bar` (tqdm), `lines`, `off`; `auto` = `bar` when stderr is a terminal, else `lines`.
`mmbench run` uses `auto`, and `lines` with `--no-progress`; library callers pass False for `off`.
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

MODES = ("auto", "bar", "lines", "off")


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
                 stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.mode = resolve_mode(progress, self.stream)
        self.desc, self.total = desc, total
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="ep", leave=False,
                            dynamic_ncols=True, file=self.stream)

    def epoch(self, epoch: int, losses: dict[str, float], seconds: float, valid: dict[str, Any] | None,
              metric: str, best_epoch: int) -> None:
        loss = losses.get("loss", float("nan"))
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}", "best": best_epoch}
            if valid is not None:
                post[metric] = f"{valid[metric]:.4f}"
            self.bar.set_postfix(**post)
            self.bar.update(1)
        elif self.mode == "lines":
            shown = f" valid {metric} {valid[metric]:.4f} (best epoch {best_epoch})" if valid is not None else ""
            print(f"{self.desc} epoch {epoch}/{self.total}: loss {loss:.4f}{shown} {seconds:.1f}s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
