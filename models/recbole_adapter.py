"""RecBole 1.2.1 adapters: `recbole-bpr`, `recbole-ngcf`, `recbole-lightgcn`, `recbole-sgl`, `recbole-ncl`.

RecBole's own model classes, trained by OUR trainer (the one loop every model runs: epochs,
validation every `eval_every` epochs, early stopping on `valid_metric`, checkpoints, resumption) on
OUR train split only. Each hook does what RecBole's `Trainer._train_epoch` does: `make_sampler` is
RecBole's train loader (its shuffling, its negative sampler), `configure_optimizers` is RecBole's
optimiser rule, `train_step` is one of its batches (tuple losses summed, gradient clipping when
configured), `on_epoch_start` is what its trainer does before a batch loop (`model.train()`, where
SGL re-augments its graph; NCL's E-step). Scored through `full_sort_predict` with ids mapped back
to ours. RecBole never sees valid or test: it gets one atomic file with the train pairs
(`benchmark_filename: [train]`), so `data_preparation` (which insists on three splits) is not used;
the train sampler and loader are built the way it builds them.

Exact resumption: the trainer checkpoints the parameters, the optimiser, torch's and numpy's global
RNGs (RecBole's negative sampler and SGL's augmentation draw from numpy's; NCL's k-means seed and
NGCF's dropout from torch's), the loader's own `torch.Generator` (its shuffling; `sampler.state_dict`)
and the tensors RecBole keeps outside its parameters that change while training (SGL's augmented
graphs, NCL's centroids; `extra_state`).

Why the id mapping matters: RecBole remaps tokens to 1.. by first appearance (0 = [PAD]); users and
items without a train interaction never enter its id space. Such items get the constant score
`UNSEEN_SCORE` (finite, below any real score); such users get a constant row of it.

Compatibility (reference/baselines.md §3.3–3.4), all kept inside this module: a numpy-2 / scipy>=1.13
shim; `sys.argv` trimmed while RecBole builds its Config (it parses `--key=value`); its Config's
CUDA_VISIBLE_DEVICES side effect undone; everything that writes files (the atomic file) happens
inside a temporary directory that is the cwd only for that moment and is deleted afterwards; no
RecBole Trainer is built (it would open a tensorboard writer and a checkpoint dir; its checkpoint
reload is broken on torch >= 2.6 and never used); RecBole's logging and warnings silenced. The model
is built on CPU in `__init__`; `.to(device)` moves the tensors RecBole caches outside its parameters
(`graph_attrs`, `state_attrs`) and its `device` with it. NCL clusters with scikit-learn's k-means on
CPU instead of faiss on GPU. recbole is imported lazily: it costs seconds.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from mmbench.config import Param
from mmbench.models.base import Recommender, register

# Score of items (columns) and users (rows) absent from RecBole's id space: no train interaction.
UNSEEN_SCORE = -1e9
_DATASET = "mmbench_train"  # RecBole dataset name; no properties/dataset/<name>.yaml exists for it


# --------------------------------------------------------------------------- compatibility
def apply_shim() -> None:
    """numpy 2 dropped the aliases RecBole's Config re-exports; scipy 1.13 dropped dok._update."""
    for name, value in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, name):
            setattr(np, name, value)
    if not hasattr(sp.dok_matrix, "_update"):
        def _update(self, data):  # RecBole passes in-range (row, col) -> value dicts
            self._dict.update(data)

        sp.dok_matrix._update = _update


@contextlib.contextmanager
def quiet():
    """RecBole logs through the root logger and emits deprecation warnings: hide both."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def sandbox(workdir: str):
    """cwd = `workdir`, argv without options, CUDA_VISIBLE_DEVICES and logging restored afterwards."""
    cwd, argv = os.getcwd(), sys.argv
    cuda_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.chdir(workdir)
    sys.argv = sys.argv[:1]
    try:
        with quiet():
            yield
    finally:
        os.chdir(cwd)
        sys.argv = argv
        if cuda_env is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda_env


# --------------------------------------------------------------------------- RecBole plumbing
def write_inter(path: str, pairs: sp.csr_matrix) -> None:
    """An atomic `.inter` file of (user, item) token pairs in our ids, user-major."""
    coo = pairs.tocoo()
    order = np.lexsort((coo.col, coo.row))
    rows, cols = coo.row[order], coo.col[order]
    with open(path, "w") as f:
        f.write("user_id:token\titem_id:token\n")
        f.write("".join(f"{u}\t{i}\n" for u, i in zip(rows.tolist(), cols.tolist())))


def recbole_config(model: str, workdir: str, params: dict[str, Any], device: torch.device,
                   seed: int, splits: tuple[str, ...] = ("train",)):
    """RecBole's Config for `model` on the atomic files `<workdir>/<_DATASET>/<_DATASET>.<split>.inter`.

    Call inside `sandbox(workdir)`. `device` is where our module lives; RecBole's is set to match."""
    apply_shim()
    from recbole.config import Config

    base = {
        "data_path": workdir, "checkpoint_dir": os.path.join(workdir, "saved"),
        "benchmark_filename": list(splits),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "load_col": {"inter": ["user_id", "item_id"]},
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0,
                                  "dynamic": False, "candidate_num": 0},
        "eval_args": {"group_by": "user", "order": "RO", "mode": "full", "split": {"RS": [0.8, 0.1, 0.1]}},
        "use_gpu": device.type == "cuda", "seed": int(seed), "reproducibility": True,
        "show_progress": False, "state": "ERROR", "log_wandb": False,
        "save_dataset": False, "save_dataloaders": False, "worker": 0,
    }
    base.update(params)
    config = Config(model=model, dataset=_DATASET, config_dict=base)
    config["device"] = device
    config["use_gpu"] = device.type == "cuda"
    return config


def train_loader(config, dataset):
    """RecBole's train loader for a single-split dataset, as `data_preparation` would build it."""
    from recbole.data.dataloader.general_dataloader import TrainDataLoader
    from recbole.sampler import Sampler

    sampler = Sampler(["train"], [dataset], config["train_neg_sample_args"]["distribution"],
                      config["train_neg_sample_args"]["alpha"]).set_phase("train")
    return TrainDataLoader(config, dataset, sampler, shuffle=config["shuffle"])


def index_map(tokens, n: int) -> torch.Tensor:
    """[n] internal RecBole id of each of our ids (0 = absent), from `field2id_token[field]`."""
    out = torch.zeros(n, dtype=torch.long)
    ours = torch.as_tensor([int(t) for t in tokens[1:]], dtype=torch.long)
    out[ours] = torch.arange(1, len(tokens), dtype=torch.long)
    return out


def _reset_cache(rb) -> None:
    """Graph models cache propagated embeddings on the first full_sort_predict (stale after training)."""
    if hasattr(rb, "restore_user_e"):
        rb.restore_user_e = None
        rb.restore_item_e = None


def _move(value, fn):
    """`fn` applied to a tensor or to each tensor of a list (SGL's random-walk views are lists)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, list):
        return [_move(v, fn) for v in value]
    return value


class RecBoleSampler:
    """RecBole's train loader behind the trainer's sampler interface. It yields RecBole
    `Interaction`s (the trainer moves them with `.to(device)`). Its shuffling draws from the loader's
    own `torch.Generator`, checkpointed here; its negatives from numpy's global RNG, checkpointed by
    the trainer."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self) -> Iterator[Any]:
        batches = iter(self.loader)
        while True:
            with quiet():
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def state_dict(self) -> dict:
        return {"generator": self.loader.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.loader.generator.set_state(state["generator"].cpu())  # the trainer maps to its device


# --------------------------------------------------------------------------- the adapter
class RecBoleAdapter(Recommender):
    """A RecBole general recommender behind our interface, trained by the shared trainer's hooks."""

    recbole_model: str = ""
    # our config key -> RecBole config key (model hyper-parameters only)
    key_map: dict[str, str] = {}
    # names of the parts when calculate_loss returns a tuple (logged beside their sum, `loss`)
    loss_parts: tuple[str, ...] = ()
    # tensors the RecBole model keeps outside its parameters: fixed after construction ...
    graph_attrs: tuple[str, ...] = ()
    # ... or changed while training (checkpointed through `extra_state`)
    state_attrs: tuple[str, ...] = ()

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        self.train_pairs = data.train
        # Tracks the device our trainer moves us to (`_apply` points RecBole's model there too).
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)
        self.register_buffer("_user_index", torch.zeros(data.n_users, dtype=torch.long), persistent=False)
        self.register_buffer("_item_index", torch.zeros(data.n_items, dtype=torch.long), persistent=False)
        self.rb = None  # the RecBole model (a submodule once built)
        self.loader = None
        self._epoch_idx = 0  # RecBole's 0-based epoch, set by on_epoch_start
        self._epoch_runner = None  # (sampler, optimisers) of `train_epoch` only
        self.build()

    # ---- construction -------------------------------------------------------------------------
    def recbole_params(self) -> dict[str, Any]:
        cfg = self.cfg
        params = {
            "epochs": int(cfg.epochs), "train_batch_size": int(cfg.batch_size), "learning_rate": float(cfg.lr),
            "learner": cfg.optimizer, "weight_decay": float(cfg.weight_decay),
            "embedding_size": int(cfg.embedding_size), "eval_step": int(cfg.eval_every),
            "stopping_step": int(cfg.patience),
        }
        for ours, theirs in self.key_map.items():
            value = cfg[ours]
            params[theirs] = list(value) if isinstance(value, (list, tuple)) else value
        return params

    def make_recbole_model(self, config, dataset):
        from recbole.utils import get_model

        return get_model(self.recbole_model)(config, dataset)

    def build(self) -> None:
        """Config, train-only dataset, loader and model, in a throwaway directory (once: the model
        is built by `__init__`; later calls do nothing)."""
        if self.rb is not None:
            return
        from recbole.data import create_dataset

        device = self._anchor.device
        seed = int(torch.randint(0, 2**31 - 1, (1,)))  # from the seeded global RNG: seeds the loader
        with tempfile.TemporaryDirectory(prefix="mmbench-recbole-") as tmp:
            os.makedirs(os.path.join(tmp, _DATASET))
            write_inter(os.path.join(tmp, _DATASET, f"{_DATASET}.train.inter"), self.train_pairs)
            with sandbox(tmp):
                config = recbole_config(self.recbole_model, tmp, self.recbole_params(), device, seed)
                (dataset,) = create_dataset(config).build()
                self.loader = train_loader(config, dataset)
                rb = self.make_recbole_model(config, dataset).to(device)
        self.rb = rb
        self.recbole_config = config
        self.uid_field = dataset.uid_field
        self.rb_user_tokens = [str(t) for t in dataset.field2id_token[dataset.uid_field]]
        self.rb_item_tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field]]
        self._user_index.copy_(index_map(self.rb_user_tokens, self.n_users))
        self._item_index.copy_(index_map(self.rb_item_tokens, self.n_items))

    def _apply(self, fn, recurse=True):
        """`.to(device)` moves RecBole's parameters (a submodule) and, here, the tensors it caches
        as plain attributes, and points its `device` (used when it builds tensors) there."""
        super()._apply(fn, recurse)
        if getattr(self, "rb", None) is not None:
            _reset_cache(self.rb)
            for name in self.graph_attrs + self.state_attrs:
                if getattr(self.rb, name, None) is not None:
                    setattr(self.rb, name, _move(getattr(self.rb, name), fn))
            self.rb.device = self._anchor.device
            self.recbole_config["device"] = self._anchor.device
            self.recbole_config["use_gpu"] = self._anchor.device.type == "cuda"
        return self

    # ---- training: the shared trainer's hooks -------------------------------------------------
    def make_sampler(self, train, batch_size: int, seed: int) -> RecBoleSampler:
        """RecBole's train loader over the train pairs it was built with (`train`, `batch_size` are
        the same ones); its generator restarts from RecBole's seed, so every call replays the run."""
        self.loader.generator.manual_seed(int(self.recbole_config["seed"]))
        return RecBoleSampler(self.loader)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """RecBole's optimiser (`learner`, `learning_rate`, `weight_decay`) by its own
        `Trainer._build_optimizer`, without building a Trainer (that writes files)."""
        from recbole.trainer import Trainer as RecBoleTrainer

        c = self.recbole_config
        owner = SimpleNamespace(model=self.rb, learner=c["learner"], learning_rate=c["learning_rate"],
                                weight_decay=c["weight_decay"], config=c, logger=logging.getLogger())
        with quiet():
            return [RecBoleTrainer._build_optimizer(owner)]

    def before_epoch(self, epoch_idx: int) -> None:
        """Hook run before RecBole's model enters train mode (0-based epoch, as RecBole counts)."""

    def on_epoch_start(self, epoch: int) -> None:
        """What RecBole's trainer does before an epoch's batches: its model's `train()` (SGL draws
        new augmented graphs there), after model-specific steps (NCL's E-step)."""
        self._epoch_idx = epoch - 1
        with quiet():
            self.before_epoch(self._epoch_idx)
            self.rb.train()

    def trained_parts(self, parts: tuple) -> tuple:
        """The loss parts optimised this epoch (all of them; NCL drops one during warm-up)."""
        return parts

    def train_step(self, batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """One batch of RecBole's `Trainer._train_epoch`: zero_grad, calculate_loss (a tuple's
        parts summed), backward, `clip_grad_norm_` when RecBole's config sets it, step."""
        (opt,) = optimizers
        opt.zero_grad()
        with quiet():
            out = self.rb.calculate_loss(batch)
            parts = self.trained_parts(out) if isinstance(out, tuple) else (out,)
            loss = sum(parts)
            loss.backward()
        clip = self.recbole_config["clip_grad_norm"]
        if clip:
            torch.nn.utils.clip_grad_norm_(self.rb.parameters(), **clip)
        opt.step()
        losses = {"loss": float(loss.detach())}
        if len(parts) > 1:
            names = self.loss_parts or tuple(f"loss_{k}" for k in range(len(parts)))
            losses.update({name: float(p.detach()) for name, p in zip(names, parts)})
        return losses

    def extra_state(self) -> dict[str, Any]:
        """RecBole's tensors that change while training (`state_attrs`): a resumed run uses the
        same augmented graphs / centroids as the uninterrupted one."""
        return {name: getattr(self.rb, name) for name in self.state_attrs
                if getattr(self.rb, name, None) is not None}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        device = self._anchor.device
        for name, value in state.items():
            setattr(self.rb, name, _move(value, lambda t: t.to(device)))

    def train_epoch(self, epoch_idx: int) -> dict[str, float]:
        """One epoch exactly as the shared trainer runs it (0-based `epoch_idx`), without
        validation; for benchmarks/lightgcn_vs_recbole.py, which times it against a native epoch."""
        if self._epoch_runner is None:
            sampler = self.make_sampler(self.train_pairs, self.cfg.batch_size, 0)
            self._epoch_runner = (sampler, self.configure_optimizers())
        sampler, optimizers = self._epoch_runner
        self.train()
        self.on_epoch_start(epoch_idx + 1)
        sums: dict[str, float] = {}
        n = 0
        for batch in sampler.epoch():
            for k, v in self.train_step(batch.to(self._anchor.device), optimizers).items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    # ---- scoring ------------------------------------------------------------------------------
    def begin_scoring(self) -> None:
        _reset_cache(self.rb)

    def end_scoring(self) -> None:
        _reset_cache(self.rb)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """[len(users), n_items] in OUR ids; absent items/users score UNSEEN_SCORE."""
        from recbole.data.interaction import Interaction

        users = users.to(self._user_index.device)
        internal = self._user_index[users]
        with quiet():
            s = self.rb.full_sort_predict(Interaction({self.uid_field: internal}))
        s = s.view(len(users), -1)[:, self._item_index]  # column 0 is [PAD]: absent items land there
        s[:, self._item_index == 0] = UNSEEN_SCORE
        s[internal == 0] = UNSEEN_SCORE
        return s

    def train(self, mode: bool = True):
        """Leave RecBole's model alone unless it trains: SGL rebuilds its views on every train(),
        so it enters train mode once per epoch, in `on_epoch_start`, as under RecBole's trainer."""
        self.training = mode
        if self.rb is not None and not mode:
            self.rb.train(False)
        return self


@register("recbole-bpr")
class RecBoleBPR(RecBoleAdapter):
    """RecBole's BPR (MF trained with the BPR loss; no regulariser in RecBole's version)."""

    recbole_model = "BPR"


@register("recbole-ngcf")
class RecBoleNGCF(RecBoleAdapter):
    """RecBole's NGCF (Wang et al., SIGIR 2019); RecBole's defaults."""

    recbole_model = "NGCF"
    graph_attrs = ("norm_adj_matrix", "eye_matrix")
    defaults = {"hidden_size_list": Param([64, 64, 64], list[int], min=1, min_len=1),
                "node_dropout": Param(0.0, float, min=0, max=1, max_exclusive=True),
                "message_dropout": Param(0.1, float, min=0, max=1, max_exclusive=True),
                "reg_weight": 1e-5}
    key_map = {k: k for k in defaults}


@register("recbole-lightgcn")
class RecBoleLightGCN(RecBoleAdapter):
    """RecBole's LightGCN. `require_pow: true` makes its regulariser ½‖·‖²/batch (= our `lightgcn`);
    RecBole's default (false) uses the unsquared norms."""

    recbole_model = "LightGCN"
    graph_attrs = ("norm_adj_matrix",)
    defaults = {"n_layers": Param(2, int, min=1), "reg_weight": 1e-5, "require_pow": False}
    key_map = {k: k for k in defaults}


@register("recbole-sgl")
class RecBoleSGL(RecBoleAdapter):
    """RecBole's SGL (Wu et al., SIGIR 2021). `aug_type` is RecBole's `type`: ED, ND or RW."""

    heavy = True  # two extra augmented-graph propagations per batch
    recbole_model = "SGL"
    graph_attrs = ("train_graph",)
    state_attrs = ("sub_graph1", "sub_graph2")  # the two augmented views, redrawn every epoch
    defaults = {"aug_type": Param("ED", str, choices=("ED", "ND", "RW")), "n_layers": Param(3, int, min=1),
                "ssl_tau": Param(0.5, float, min=0, min_exclusive=True), "reg_weight": 1e-5, "ssl_weight": 0.05,
                "drop_ratio": Param(0.1, float, min=0, max=1, max_exclusive=True)}
    key_map = {"aug_type": "type", "n_layers": "n_layers", "ssl_tau": "ssl_tau", "reg_weight": "reg_weight",
               "ssl_weight": "ssl_weight", "drop_ratio": "drop_ratio"}


@register("recbole-ncl")
class RecBoleNCL(RecBoleAdapter):
    """RecBole's NCL (Lin et al., WWW 2022) with a CPU k-means (scikit-learn, n_init=1, 25 Lloyd
    iterations with random init like faiss's default) instead of faiss on GPU; `num_clusters` is
    capped at the number of users and of items."""

    heavy = True  # k-means E-step every epoch + prototype losses
    recbole_model = "NCL"
    graph_attrs = ("norm_adj_mat", "diag")
    # the E-step's clusters, kept for `m_step` epochs
    state_attrs = ("user_centroids", "user_2cluster", "item_centroids", "item_2cluster")
    defaults = {"n_layers": Param(3, int, min=1), "reg_weight": 1e-4,
                "ssl_temp": Param(0.1, float, min=0, min_exclusive=True), "ssl_reg": 1e-7,
                "hyper_layers": Param(1, int, min=1), "alpha": 1.0, "proto_reg": 8e-8,
                "num_clusters": Param(1000, int, min=1), "m_step": Param(1, int, min=1), "warm_up_step": 20}
    key_map = {k: k for k in defaults}
    loss_parts = ("bpr_reg", "ssl", "proto")  # proto joins after `warm_up_step` epochs

    def make_recbole_model(self, config, dataset):
        config["num_clusters"] = max(1, min(int(config["num_clusters"]), dataset.user_num - 1,
                                            dataset.item_num - 1))
        return cpu_kmeans_ncl()(config, dataset)

    def before_epoch(self, epoch_idx: int) -> None:
        if epoch_idx % int(self.recbole_config["m_step"]) == 0:  # NCLTrainer.fit's E-step schedule
            self.rb.e_step()

    def trained_parts(self, parts: tuple) -> tuple:
        """NCLTrainer._train_epoch leaves out the prototype loss for the first `warm_up_step` epochs."""
        return parts[:-1] if self._epoch_idx < int(self.recbole_config["warm_up_step"]) else parts


def cpu_kmeans_ncl():
    """RecBole's NCL whose E-step runs scikit-learn k-means on CPU (built lazily: imports recbole)."""
    from recbole.model.general_recommender.ncl import NCL

    class NCLCPU(NCL):
        def run_kmeans(self, x):
            from sklearn.cluster import KMeans

            seed = int(torch.randint(0, 2**31 - 1, (1,)))
            km = KMeans(n_clusters=self.k, n_init=1, init="random", max_iter=25, random_state=seed).fit(x)
            centroids = torch.nn.functional.normalize(
                torch.as_tensor(km.cluster_centers_, dtype=torch.float32, device=self.device), p=2, dim=1)
            labels = torch.as_tensor(km.labels_, dtype=torch.long, device=self.device)
            return centroids, labels

    return NCLCPU
