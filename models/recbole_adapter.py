"""RecBole 1.2.1 adapters: `recbole-bpr`, `recbole-ngcf`, `recbole-lightgcn`, `recbole-sgl`, `recbole-ncl`.

RecBole's own model classes, trained by RecBole's own epoch routine (`Trainer._train_epoch`, its
negative sampler and data loader) on OUR train split only; validated by OUR evaluator (train-only
mask) every `eval_every` epochs with early stopping on `valid_metric`; scored through
`full_sort_predict` with ids mapped back to ours. RecBole never sees valid or test: it gets one
atomic file with the train pairs (`benchmark_filename: [train]`), so `data_preparation` (which
insists on three splits) is not used; the train sampler and loader are built the way it builds them.

Why the id mapping matters: RecBole remaps tokens to 1.. by first appearance (0 = [PAD]); users and
items without a train interaction never enter its id space. Such items get the constant score
`UNSEEN_SCORE` (finite, below any real score); such users get a constant row of it.

Compatibility (reference/baselines.md §3.3–3.4), all kept inside this module: a numpy-2 / scipy>=1.13
shim; `sys.argv` trimmed while RecBole builds its Config (it parses `--key=value`); its Config's
CUDA_VISIBLE_DEVICES side effect undone; everything that writes files (atomic file, tensorboard
writer, checkpoint dir) happens inside a temporary directory that is the cwd only for that moment and
is deleted afterwards; RecBole's logging and warnings silenced; the best state kept as an in-memory
snapshot (RecBole's checkpoint reload is broken on torch >= 2.6). NCL clusters with scikit-learn's
k-means on CPU instead of faiss on GPU. recbole is imported lazily: it costs seconds.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch

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


# --------------------------------------------------------------------------- the adapter
class RecBoleAdapter(Recommender):
    """A RecBole general recommender behind our interface; `fit` owns epochs and early stopping."""

    brings_own_loop = True
    recbole_model: str = ""
    # our config key -> RecBole config key (model hyper-parameters only)
    key_map: dict[str, str] = {}
    # names of the parts when calculate_loss returns a tuple (logged beside their sum, `loss`)
    loss_parts: tuple[str, ...] = ()

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        self.train_pairs = data.train
        # Tracks the device our trainer moves us to; the RecBole model is built there in `fit`.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)
        self.register_buffer("_user_index", torch.zeros(data.n_users, dtype=torch.long), persistent=False)
        self.register_buffer("_item_index", torch.zeros(data.n_items, dtype=torch.long), persistent=False)
        self.rb = None  # the RecBole model (a submodule once built)
        self.recbole_trainer = None
        self.train_data = None

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
        """Config, train-only dataset, model, trainer and loader, in a throwaway directory."""
        from recbole.data import create_dataset
        from recbole.utils import get_trainer

        device = self._anchor.device
        seed = int(torch.randint(0, 2**31 - 1, (1,)))  # from the trainer-seeded global RNG
        with tempfile.TemporaryDirectory(prefix="mmbench-recbole-") as tmp:
            os.makedirs(os.path.join(tmp, _DATASET))
            write_inter(os.path.join(tmp, _DATASET, f"{_DATASET}.train.inter"), self.train_pairs)
            with sandbox(tmp):
                config = recbole_config(self.recbole_model, tmp, self.recbole_params(), device, seed)
                (dataset,) = create_dataset(config).build()
                self.train_data = train_loader(config, dataset)
                rb = self.make_recbole_model(config, dataset).to(device)
                trainer = get_trainer(config["MODEL_TYPE"], self.recbole_model)(config, rb)
                trainer.tensorboard.close()  # created in tmp; we never log to it
        self.rb = rb
        self.recbole_trainer = trainer
        self.recbole_config = config
        self.uid_field = dataset.uid_field
        self.rb_user_tokens = [str(t) for t in dataset.field2id_token[dataset.uid_field]]
        self.rb_item_tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field]]
        self._user_index.copy_(index_map(self.rb_user_tokens, self.n_users))
        self._item_index.copy_(index_map(self.rb_item_tokens, self.n_items))

    # ---- training -----------------------------------------------------------------------------
    def before_epoch(self, epoch_idx: int) -> None:
        """Hook run before RecBole's `_train_epoch` (0-based epoch, as RecBole counts)."""

    def train_epoch(self, epoch_idx: int) -> dict[str, float]:
        with quiet():
            self.before_epoch(epoch_idx)
            total = self.recbole_trainer._train_epoch(self.train_data, epoch_idx)
        n = max(len(self.train_data), 1)
        parts = total if isinstance(total, tuple) else (total,)
        losses = {"loss": float(sum(parts)) / n}
        if len(parts) > 1:
            names = self.loss_parts or tuple(f"loss_{k}" for k in range(len(parts)))
            losses.update({name: float(p) / n for name, p in zip(names, parts)})
        return losses

    def fit(self, valid_metric_fn: Callable[[Callable], dict[str, float]], progress=None) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.build()
        history: list[dict[str, Any]] = []
        best = {"score": -math.inf, "epoch": 0, "valid": {}, "state": None}
        bad_evals = 0
        bar = tqdm(total=cfg.epochs, desc=self.name, unit="ep", disable=not progress, leave=False)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            losses = self.train_epoch(epoch - 1)
            if not math.isfinite(losses["loss"]):
                raise FloatingPointError(f"{self.name}: training loss is {losses['loss']} at epoch {epoch}")
            entry: dict[str, Any] = {"epoch": epoch, "losses": losses, "train_seconds": time.perf_counter() - t0}
            stop = False
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                t1 = time.perf_counter()
                valid = self.validate(valid_metric_fn)
                entry["valid"] = valid
                entry["eval_seconds"] = time.perf_counter() - t1
                score = valid[cfg.valid_metric]
                if score > best["score"]:
                    best = {"score": score, "epoch": epoch, "valid": valid,
                            "state": copy.deepcopy(self.rb.state_dict())}
                    bad_evals = 0
                else:
                    bad_evals += 1
                    stop = cfg.patience > 0 and bad_evals * cfg.eval_every >= cfg.patience
                bar.set_postfix(loss=f"{losses['loss']:.4f}", **{cfg.valid_metric: f"{score:.4f}"},
                                best=best["epoch"])
            history.append(entry)
            bar.update(1)
            if stop:
                break
        bar.close()
        self.rb.load_state_dict(best["state"])
        _reset_cache(self.rb)
        self.recbole_trainer = self.train_data = None  # free the loader and optimiser
        return {"history": history, "best_epoch": best["epoch"], "best_valid": best["valid"]}

    def validate(self, valid_metric_fn) -> dict[str, float]:
        """OUR valid metrics of the current state (RecBole's `_train_epoch` re-enters train mode)."""
        self.eval()
        with torch.no_grad():
            self.begin_scoring()
            try:
                return valid_metric_fn(self.score)
            finally:
                self.end_scoring()

    # ---- scoring ------------------------------------------------------------------------------
    def begin_scoring(self) -> None:
        _reset_cache(self.rb)

    def end_scoring(self) -> None:
        _reset_cache(self.rb)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """[len(users), n_items] in OUR ids; absent items/users score UNSEEN_SCORE."""
        from recbole.data.interaction import Interaction

        if self.rb is None:
            raise RuntimeError(f"{self.name}: score() before fit()")
        users = users.to(self._user_index.device)
        internal = self._user_index[users]
        with quiet():
            s = self.rb.full_sort_predict(Interaction({self.uid_field: internal}))
        s = s.view(len(users), -1)[:, self._item_index]  # column 0 is [PAD]: absent items land there
        s[:, self._item_index == 0] = UNSEEN_SCORE
        s[internal == 0] = UNSEEN_SCORE
        return s

    def train(self, mode: bool = True):
        """Leave RecBole's model alone unless it trains: SGL rebuilds its views on every train()."""
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
    defaults = {"hidden_size_list": [64, 64, 64], "node_dropout": 0.0, "message_dropout": 0.1,
                "reg_weight": 1e-5}
    key_map = {k: k for k in defaults}


@register("recbole-lightgcn")
class RecBoleLightGCN(RecBoleAdapter):
    """RecBole's LightGCN. `require_pow: true` makes its regulariser ½‖·‖²/batch (= our `lightgcn`);
    RecBole's default (false) uses the unsquared norms."""

    recbole_model = "LightGCN"
    defaults = {"n_layers": 2, "reg_weight": 1e-5, "require_pow": False}
    key_map = {k: k for k in defaults}


@register("recbole-sgl")
class RecBoleSGL(RecBoleAdapter):
    heavy = True  # two extra augmented-graph propagations per batch
    """RecBole's SGL (Wu et al., SIGIR 2021). `aug_type` is RecBole's `type`: ED, ND or RW."""

    recbole_model = "SGL"
    defaults = {"aug_type": "ED", "n_layers": 3, "ssl_tau": 0.5, "reg_weight": 1e-5, "ssl_weight": 0.05,
                "drop_ratio": 0.1}
    key_map = {"aug_type": "type", "n_layers": "n_layers", "ssl_tau": "ssl_tau", "reg_weight": "reg_weight",
               "ssl_weight": "ssl_weight", "drop_ratio": "drop_ratio"}


@register("recbole-ncl")
class RecBoleNCL(RecBoleAdapter):
    heavy = True  # k-means E-step every epoch + prototype losses
    """RecBole's NCL (Lin et al., WWW 2022) with a CPU k-means (scikit-learn, n_init=1, 25 Lloyd
    iterations with random init like faiss's default) instead of faiss on GPU; `num_clusters` is
    capped at the number of users and of items."""

    recbole_model = "NCL"
    defaults = {"n_layers": 3, "reg_weight": 1e-4, "ssl_temp": 0.1, "ssl_reg": 1e-7, "hyper_layers": 1,
                "alpha": 1.0, "proto_reg": 8e-8, "num_clusters": 1000, "m_step": 1, "warm_up_step": 20}
    key_map = {k: k for k in defaults}
    loss_parts = ("bpr_reg", "ssl", "proto")  # proto joins after `warm_up_step` epochs

    def make_recbole_model(self, config, dataset):
        config["num_clusters"] = max(1, min(int(config["num_clusters"]), dataset.user_num - 1,
                                            dataset.item_num - 1))
        return cpu_kmeans_ncl()(config, dataset)

    def before_epoch(self, epoch_idx: int) -> None:
        if epoch_idx % int(self.cfg.m_step) == 0:  # NCLTrainer.fit's E-step schedule
            self.rb.e_step()


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
