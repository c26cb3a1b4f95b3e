"""The model interface and the registry.

A model is a `torch.nn.Module` that reads like its paper: it receives the TRAIN split and the item
features (never valid/test), returns named losses for a batch, and scores users for the shared
evaluator. Files, splits, sampling, early stopping and metrics live elsewhere.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import nn

from mmbench.errors import ConfigError
from mmbench.train.batch import Batch  # noqa: F401  (re-exported: models import it from here)
from mmbench.train.sampler import BPRSampler

_REGISTRY: dict[str, type["Recommender"]] = {}


class Recommender(nn.Module):
    """Base class. Subclasses set `defaults` (model-specific config keys, may also override trainer
    defaults such as `lr`) and optionally `presets` ({dataset name: overrides})."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # Config keys a model no longer has: {key: (the one value whose computation is now the only one,
    # why)}. A config (an old record's, a --config file, --set) may still name one with that value,
    # which is dropped; another value is an error naming why.
    retired: ClassVar[dict[str, tuple[Any, str]]] = {}
    uses_features: ClassVar[bool] = False
    # Seconds-per-epoch class on a laptop CPU; `heavy` models get a smaller cap under `--budget quick`.
    heavy: ClassVar[bool] = False
    # A model fitted in closed form when it is built (no optimiser): one epoch under every budget
    # (`FittedOnce`).
    fits_once: ClassVar[bool] = False

    def __init__(self, data, cfg):
        super().__init__()
        self.n_users = data.n_users
        self.n_items = data.n_items
        self.cfg = cfg

    # ---- training -------------------------------------------------------------------------
    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named losses; the key `loss` is optimised, the others are logged."""
        raise NotImplementedError

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimiser by default (`optimizer`, `lr`, `weight_decay` from the config)."""
        cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        return [cls(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)]

    def train_step(self, batch: Batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """One optimisation step. Override for several optimisers (e.g. generator/discriminator)."""
        (opt,) = optimizers
        opt.zero_grad(set_to_none=True)
        losses = self.calculate_loss(batch)
        losses["loss"].backward()
        opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def make_sampler(self, train, batch_size: int, seed: int):
        """The batch source for one run; override for model-specific sampling (e.g. per-user)."""
        return BPRSampler(train, batch_size=batch_size, seed=seed)

    def on_epoch_start(self, epoch: int) -> None:
        """Hook: e.g. rebuild a graph or resample edges."""

    def on_epoch_end(self, epoch: int) -> None:
        """Hook: e.g. decay a learning rate."""

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (e.g. a graph rebuilt on a schedule).

        Tensors, numpy arrays and scalars, and dict/list/tuple containers of str/int/float/bool/None
        only: checkpoints are loaded with `weights_only=True` so that a planted one runs no code.
        The trainer stores numpy arrays as tensors of their bytes and hands them back as numpy arrays
        (`mmbench.train.trainer.to_checkpoint`); any other object is a TypeError when saving."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ---- scoring ----------------------------------------------------------------------------
    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores [len(users), n_items] for the shared evaluator (higher = better)."""
        raise NotImplementedError

    def begin_scoring(self) -> None:
        """Called under no_grad before a round of `score` calls: cache propagated embeddings here."""

    def end_scoring(self) -> None:
        """Called after a round of `score` calls: drop caches."""

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


class EmbeddingRecommender(Recommender):
    """A recommender whose score is the dot product of final user and item embeddings.

    Subclasses implement `final_embeddings()`; evaluation computes them once per round (cached between
    `begin_scoring` and `end_scoring`) instead of once per chunk of users."""

    _scoring_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user embeddings [n_users, d], item embeddings [n_items, d])."""
        raise NotImplementedError

    def begin_scoring(self) -> None:
        self._scoring_cache = self.final_embeddings()

    def end_scoring(self) -> None:
        self._scoring_cache = None

    def score(self, users: torch.Tensor) -> torch.Tensor:
        cached = self._scoring_cache
        user_e, item_e = cached if cached is not None else self.final_embeddings()
        return user_e[users] @ item_e.T


class _NoBatches:
    """The batch source of a model with nothing to optimise: an epoch yields no batch."""

    def __len__(self) -> int:
        return 0

    def epoch(self):
        return iter(())

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FittedOnce(Recommender):
    """A non-neural floor (popularity, item-kNN): everything is computed from the TRAIN split in
    `__init__`, there is no optimiser and no batch, and the run has exactly one epoch (the budget's
    caps do not apply: `mmbench.budget.budget_caps`). It goes through the same trainer, evaluator
    and records as every other model, so its numbers are comparable."""

    fits_once = True

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return []

    def make_sampler(self, train, batch_size: int, seed: int):
        return _NoBatches()

    def train_step(self, batch: Batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        raise RuntimeError(f"{self.name} is fitted when built; it has no training step")


def register(name: str) -> Callable[[type[Recommender]], type[Recommender]]:
    def wrap(cls: type[Recommender]) -> type[Recommender]:
        old = _REGISTRY.get(name)
        if old is not None and old is not cls:
            same_definition = (old.__qualname__ == cls.__qualname__
                               and old.__module__.rsplit(".", 1)[-1] == cls.__module__.rsplit(".", 1)[-1])
            if not same_definition:
                raise ValueError(f"model name {name!r} registered twice ({old.__module__}, {cls.__module__})")
            return old
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def registry(allow_broken: bool = False) -> dict[str, type[Recommender]]:
    """Every registered model by name. A zoo module that failed to import is an error naming it
    (unless `allow_broken`, for `mmbench models`, which lists the failures)."""
    from mmbench.models import BROKEN  # importing the package registers every model

    if BROKEN and not allow_broken:
        from mmbench.errors import ModelImportError

        module, error = next(iter(BROKEN.items()))
        more = f" (and {len(BROKEN) - 1} more: see `mmbench models`)" if len(BROKEN) > 1 else ""
        raise ModelImportError(f"model module models/{module}.py failed to import: {error}{more}")
    return dict(sorted(_REGISTRY.items()))


def get_model_class(name: str) -> type[Recommender]:
    reg = registry()
    if name not in reg:
        import difflib

        close = difflib.get_close_matches(name, list(reg), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; known: {', '.join(reg)}")
    return reg[name]


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(s+ - s-), computed stably."""
    return torch.nn.functional.softplus(neg_scores - pos_scores).mean()


def l2_per_batch(*tensors: torch.Tensor) -> torch.Tensor:
    """½ Σ‖x‖² / batch size: the LightGCN/NGCF embedding regulariser on the batch's ego embeddings."""
    n = tensors[0].shape[0]
    return sum(t.pow(2).sum() for t in tensors) / (2.0 * n)
