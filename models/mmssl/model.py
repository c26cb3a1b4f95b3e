"""MMSSL as the paper describes it (Wei et al., WWW'23, §3, Eqs. 1–14): the `mmssl` model.

The package registers (see `__init__`):

* `mmssl` — the model as the PAPER describes it (§3, Eqs. 1–14), for any number of modalities.
* `mmssl-official` — what the authors' code (HKUDS/MMSSL f8d8955) computes, quirk for quirk
  (reference/mmssl-official-code.md, "the spec"), so our numbers can be set against the published ones.
* `mmssl-wo-asl` / `mmssl-wo-cl` / `mmssl-wo-gt` / `mmssl-rp-gae` — `mmssl` with one switch flipped:
  `adversarial=false`, `contrastive=false`, `gumbel=false`, `generator=gae`. The switches are config keys,
  so `--set` flips them on any MMSSL run (the official variant included).

One training step (both variants, `train_step`): a no-grad forward with dropout on gives the fake rows
Â^m (Eq. 3) and the real rows Ã (Eq. 5) of the batch users; the discriminator takes one Adam step on
the WGAN-GP loss (Eq. 7); then a fresh forward with gradients gives BPR (Eq. 14) + λ2·contrastive
(Eq. 11) + λ3·L_G (Eq. 7) (+ the code's regularisers), and the generator/recommender takes one AdamW step.
Two forwards per batch, as in the code (merging them would change the dropout masks, spec §10.2 item 9);
their dropout-free half (Eqs. 8–10, `collaborative`) is the same in both and is computed once.

Where the paper is silent or ambiguous (`mmssl`), we follow the code and say so:

* Eq. 2: f̃_u is undefined; like the code, f_i^m aggregates the users' f_u^m (item → user → item).
  Modality transform = Linear (Xavier weight) + dropout 0.2, applied once.
* Eq. 3: the per-entry cosine as written (no masking of training positives; the code masks them).
* Eq. 4: two hidden layers as in the code (I/4, I/8, then Linear → 1), LeakyReLU(0.2) as the text says
  (the code's is the identity), plain sigmoid output (the code multiplies by 100); Kaiming init,
  dropouts 0.31/0.5, D always in train mode, Adam(betas 0.5, 0.9) — all from the code.
* Eq. 5: g = −log(−log ξ) unscaled as written (`gumbel_scale` = 1; the code scales it by 1e-5); τ from
  the code's `real_data_tau`; no final normalisation (the code adds one). With τ ≈ 0.002 the transform is
  a Gumbel-max one-hot, and with ζ = 100 the ζ-term dominates the row anyway: that is the paper's formula.
* Eqs. 6–7: λ1 = 1 (the paper's best); "interpolation" = α·real + (1−α)·fake, α ~ U(0, 1) per row; real
  rows paired with each modality's fake rows (the code's duplication). Since the paper's critic is a plain
  sigmoid, λ3 defaults to 100 × the code's `G_rate`: the generator then gets exactly the code's gradient
  scale from L_G (the code's critic is 100·σ).
* Eq. 8: top-k of the relation rows Â^m, each user paired with its OWN top-k items, k = max(1, ⌊I·rate⌋)
  (rate from the code's original per-dataset configs; Baby's 1e-4 would give k = 0, an empty graph, so
  the paper variant uses 0.01 there). Schedule: the whole graph is rebuilt for ALL users at the start of
  every epoch (and at construction), from dropout-free rows computed block-wise, so it is populated for
  every user at every batch and at evaluation. Users whose f_u^m is zero (no training items) get no
  semantic neighbours. Item side: N_i^m = users that have i in their top-k; both sides normalised by
  1/√degree as in Eq. 8.
* Eq. 9: real multi-head attention (queries and keys per head, softmax over modalities, values are the
  modality embeddings themselves, heads concatenated then W_cat back to d), mean over modalities.
* Eq. 10: Ê⁰ = E + η·Ẽ/‖Ẽ‖₂ — the code's norm; the paper's ‖·‖₂² would make the term grow as 1/‖Ẽ‖
  (unbounded for users with few semantic neighbours), so we read it as a typo. LightGCN-style
  simultaneous propagation on the paper's one-sided A[u,i] = 1/√|N_u| (items: 1/√|N_i|), L = 2, mean over
  the L+1 layers (the paper's "/L" over L+1 terms is read as a mean), no softmax.
* Eq. 11: anchor h_u, positive e_u^m (the Eq. 8 aggregate, before attention), negatives e^m_{u'} of the
  other batch users and e^{m'}_{u'} of the other modalities (scored against e_u^m); in-batch users only;
  mean over users instead of the sum (a rescaling of λ2). τ' = 0.5 (the code), 0.085 on TikTok (the
  paper's best there). The printed formula sums over u' a term whose subscripts are all u (read
  literally: the only negatives are the same user's other modalities, and Σ_{u'} is a constant |U|);
  the text — "an embedding space in which different user representations are far apart", and the
  appendix's gradient analysis of hard negatives "(other users)" — supports other users' embeddings as
  negatives, so that is the default (`cl_reading=other_users`); `cl_reading=literal` is the printed
  subscripts. Measured on TikTok validation (reports/NOTES.md, "MMSSL"): this loss, as the text reads it,
  is what makes `mmssl` peak at epoch 1 — without it (w/o-CL) or read literally (an almost constant
  loss), valid R@20 keeps rising over the first epochs.
* Eq. 13: λ4‖Θ‖² = AdamW's decoupled weight decay (the paper names AdamW, and calls the term "the
  weight-decay regularization"); the paper only gives a search grid {1.2e-2, 1.4e-2, 1.6e-2}, so we use
  the code's effective 0.01. BPR is a mean (the code), not a sum. No other regulariser (the code's 1e-5
  L2 terms are not in the paper: `reg_weight` = `feat_reg` = 0). `l2_reading=explicit` is the other
  reading: λ4‖Θ‖² as a loss term over every generator parameter, no optimiser decay. Neither it nor the
  code's extra 1e-5 terms removes the epoch-1 peak on TikTok (reports/NOTES.md, "MMSSL").
* Table 3 ablations (the paper gives one sentence each): w/o-ASL drops the discriminator and L_G; w/o-CL
  drops L_CL; w/o-GT replaces the Gumbel transform in Eq. 5 by the observed row A[u] (the ζ-term stays);
  r/p-GAE replaces L_G by a graph-autoencoder loss: the relation rows (Eq. 3 cosines, scaled by
  1/`gae_tau`) are logits reconstructing the observed rows with a positive-weighted BCE (Kipf & Welling).
* Training loop details the paper leaves open, all from the code: per-user batch sampling (B distinct
  users, one positive and one negative each, ⌊n_train/B⌋ + 1 batches per epoch), B = 1024, d = 64, the
  learning rates, η, ω, dropout, τ of Eq. 5 and the top-k rate per dataset (presets), and on the
  authors' datasets (the presets) early stopping after 8 validations without a better valid Recall@20
  (the code's `early_stopping_patience` 7 counts to 7, then stops on the 8th); elsewhere the shared
  1000-epoch cap and patience 20 of every model. Gradients are zeroed,
  not freed, between steps (the code's torch-1.x semantics), so AdamW keeps decaying a parameter whose
  gradient happens to be zero in a step.

Speed (one path, no switch; spec §10.2), each exact up to float rounding: relation rows stay low-rank +
sparse (`relation_rows.Rows`) so D's first layer never sees a [B, I] row, and that layer is one autograd
node whose W-gradient is assembled in one buffer (`relation_rows.first_layers`); the gradient penalty's
‖∇_x D‖ = ‖W₁ᵀδ₁‖ goes through a Gram computed strip-wise by symmetry (`discriminator.row_sq_norms`);
the real rows' first layer is computed once for their M copies; D's parameter gradients are not computed
in the generator step (the code discards them); the dropout-free half of the encoder (Eqs. 8–10) is
computed once per step for both passes (`collaborative`); the attention and the contrastive loss are
skipped when their input graph is empty (exactly zero / a constant with zero gradient); the code's
identity activation is not applied; Adam/AdamW use torch's fused kernels. The only approximation:
Gumbel-softmax entries below 1e-20 are dropped from the factored real rows (a softmax row sums to 1, so
this is below float32 resolution). Random draws happen in the same order as in the code's computation,
so a run's trajectory is the dense computation's up to rounding. tests/mmssl_oracle.py keeps the plain
dense computation, frozen; tests and benchmarks/mmssl_speed.py check this package against it, and
benchmarks/mmssl_epoch.py times whole epochs. Memory: no users×items or items×items tensor anywhere; the
largest are [B, I] rows and D itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmbench.config import Param
from mmbench.errors import ConfigError
from mmbench.models.base import Batch, Recommender, bpr_loss, l2_per_batch, register
from mmbench.models.graph import Graph
from mmbench.models.mmssl.attention import ModalityAttention
from mmbench.models.mmssl.contrastive import literal_contrastive, paper_contrastive
from mmbench.models.mmssl.discriminator import Discriminator, inverted_dropout
from mmbench.models.mmssl.gae import gae_loss
from mmbench.models.mmssl.graphs import batch_positions, bipartite_pair, coo_matrix, dense_mask, topk_pairs
from mmbench.models.mmssl.real_rows import GUMBEL_SPARSE_TOL, gumbel_softmax_rows, sparsify
from mmbench.models.mmssl.relation_rows import Rows, cosine_rows_dense, cosine_rows_factored, rownorm
from mmbench.models.mmssl.sampler import PerUserSampler

REBUILD_BLOCK = 1024  # users per block when the paper variant rebuilds its semantic graph


@dataclass
class Collaborative:
    """The ID side of the encoder (Eqs. 8–10): propagated embeddings and the Eq. 8 user aggregates."""

    e_u: torch.Tensor
    e_i: torch.Tensor
    modal_u: list[torch.Tensor | None]  # E^m_U per modality; None = provably zero (empty graph)


@dataclass
class Encoded:
    """One forward pass: final embeddings (Eq. 12), modality features (Eq. 2), Eq. 8 aggregates."""

    h_u: torch.Tensor
    h_i: torch.Tensor
    feats: list[tuple[torch.Tensor, torch.Tensor]]  # (F^m_U [U, d], F^m_I [I, d]) per modality
    modal_u: list[torch.Tensor | None]  # E^m_U per modality; None = provably zero (empty graph)


# The hyper-parameters both variants share (the code's HEAD defaults = its Baby block, spec §6.2).
COMMON_DEFAULTS: dict[str, Any] = {
    "batch_size": 1024, "embedding_size": 64, "optimizer": "adamw", "weight_decay": 0.01,
    "lr": 5.5e-4, "d_lr": Param(3e-4, float, min=0, min_exclusive=True, doc="the discriminator's lr"),
    "n_layers": 2, "drop_rate": Param(0.2, float, min=0, max=1, max_exclusive=True, doc="feature dropout"),
    "omega": 0.55, "eta": 0.36, "n_heads": Param(4, int, min=1, doc="attention heads"),
    "d_drop1": Param(0.31, float, min=0, max=1, max_exclusive=True, doc="dropout after D's first layer"),
    "d_drop2": Param(0.5, float, min=0, max=1, max_exclusive=True, doc="dropout after D's second layer"),
    "gp_rate": 1.0, "zeta": 100.0,
    "gumbel_tau": Param(0.005, float, min=0, min_exclusive=True, doc="Gumbel-softmax temperature"),
    "cl_tau": Param(0.5, float, min=0, min_exclusive=True, doc="contrastive temperature"),
    "cl_rate": 0.03,
    # switches (Table 3 ablations)
    "adversarial": True, "contrastive": True, "gumbel": True,
    "generator": Param("gan", str, choices=("gan", "gae"), doc="L_G: adversarial or graph autoencoder"),
    "gae_tau": Param(0.1, float, min=0, min_exclusive=True, doc="temperature of the GAE reconstruction"),
}


@register("mmssl")
class MMSSL(Recommender):
    """The paper's MMSSL. See the module docstring for every choice where the paper is silent."""

    heavy = True  # the discriminator over [batch, n_items] relation rows dominates (spec §10)
    uses_features = True
    official: ClassVar[bool] = False
    gp_constant: ClassVar[float] = 1.0  # the paper's λ1 multiplies the GP directly
    defaults = dict(COMMON_DEFAULTS, **{
        "g_rate": 1e-2, "gumbel_scale": 1.0,
        "topk_rate": Param(0.01, float, min=0, max=1, doc="fraction of items kept per relation row"),
        "d_slope": 0.2, "d_out_scale": 1.0,
        "reg_weight": 0.0, "feat_reg": 0.0,
        # Readings of the paper where its text allows two (reports/NOTES.md has the measurements).
        "l2_reading": Param("decoupled", str, choices=("decoupled", "explicit"),
                            doc="Eq. 13's λ4‖Θ‖² (λ4 = weight_decay): AdamW's decoupled decay (the text: "
                                "'weight-decay regularization', AdamW), or an explicit loss term on every "
                                "generator parameter with no optimiser decay"),
        "cl_reading": Param("other_users", str, choices=("other_users", "literal"),
                            doc="Eq. 11's negatives: other users' e^m_u' and e^m'_u' (the text: 'different user "
                                "representations are far apart'), or the formula's literal subscripts (the "
                                "same user's e^m'_u only, the sum over u' a constant factor |U|)"),
    })
    # Before #13 `fast` chose between this package's computation (true) and a dense reference (false,
    # now frozen in tests/mmssl_oracle.py); records made with fast=true keep their identity.
    retired = {"fast": (True, "MMSSL has one code path since issue #13; the dense computation that "
                              "fast=false selected is frozen in tests/mmssl_oracle.py")}
    # The authors' per-dataset settings (spec §6.2; `patience` 8: the code stops after 8 epochs
    # without a better valid Recall@20). Other datasets get the shared caps of every model.
    presets = {
        "tiktok": {"lr": 5.4e-4, "g_rate": 0.18, "gumbel_tau": 0.002, "topk_rate": 0.01, "cl_tau": 0.085,
                   "patience": 8},
        "baby": {"lr": 5.5e-4, "g_rate": 1e-2, "gumbel_tau": 0.005, "topk_rate": 0.01, "patience": 8},
        "sports": {"lr": 5e-4, "g_rate": 1e-2, "gumbel_tau": 0.002, "topk_rate": 0.02, "patience": 8},
        "allrecipes": {"lr": 5.6e-4, "d_lr": 2.5e-4, "eta": 0.34, "g_rate": 3e-2, "gumbel_tau": 0.02,
                       "topk_rate": 0.02, "cl_tau": 0.3, "patience": 8},
    }

    def __init__(self, data, cfg):
        super().__init__(data, cfg)
        if cfg.generator not in ("gan", "gae"):
            raise ConfigError(f"config generator must be 'gan' or 'gae', got {cfg.generator!r}")
        if not data.features:
            raise ConfigError("MMSSL needs at least one item modality")
        d = cfg.embedding_size
        self.modalities = list(data.features)
        for m, name in enumerate(self.modalities):
            feat = torch.tensor(np.asarray(data.features[name], dtype=np.float32))
            self.register_buffer(f"feat_{m}", feat, persistent=False)
        self.transforms = nn.ModuleList(nn.Linear(self.feat(m).shape[1], d) for m in range(self.n_modal))
        for lin in self.transforms:
            nn.init.xavier_uniform_(lin.weight)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_items, d)))
        self.attention = self.make_attention(d, cfg.n_heads)
        train = sp.csr_matrix(data.train)
        train.sort_indices()
        self.train_csr = train
        a_ui, a_iu = bipartite_pair(train, torch.device("cpu"))
        self.set_graph("a_ui", a_ui)
        self.set_graph("a_iu", a_iu)
        self.register_buffer("indptr", torch.from_numpy(train.indptr.astype(np.int64)), persistent=False)
        self.register_buffer("indices", torch.from_numpy(train.indices.astype(np.int64)), persistent=False)
        self.disc = None
        if cfg.adversarial and cfg.generator == "gan":
            self.disc = Discriminator(data.n_items, cfg.d_drop1, cfg.d_drop2, cfg.d_slope, cfg.d_out_scale)
        # semantic graphs (Eq. 8): per modality the raw pair matrix (rows, cols, counts) + normalised tensors
        self.sem_coo: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.init_semantic_graphs()

    # ---- small accessors ------------------------------------------------------------------------
    @property
    def n_modal(self) -> int:
        return len(self.modalities)

    def feat(self, m: int) -> torch.Tensor:
        return getattr(self, f"feat_{m}")

    def set_graph(self, name: str, graph: Graph) -> None:
        """Keep a sparse operator as two (non-persistent) buffers, so `.to(device)` moves it."""
        self.register_buffer(f"{name}_mat", graph.mat, persistent=False)
        self.register_buffer(f"{name}_mat_t", graph.mat_t, persistent=False)

    def graph(self, name: str) -> Graph:
        return Graph(getattr(self, f"{name}_mat"), getattr(self, f"{name}_mat_t"))

    def sem(self, m: int) -> tuple[Graph, Graph]:
        return self.graph(f"sem_ui_{m}"), self.graph(f"sem_iu_{m}")

    def sem_empty(self, m: int) -> bool:
        return len(self.sem_coo[m][0]) == 0

    def make_attention(self, d: int, heads: int) -> nn.Module:
        return ModalityAttention(d, heads)

    def topk(self) -> int:
        return min(self.n_items, max(1, int(self.n_items * self.cfg.topk_rate)))

    # ---- semantic graphs (Eq. 8) ---------------------------------------------------------------
    def set_semantic_graph(self, m: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """Install A^m from coordinate lists (duplicates summed) and its two normalised views."""
        self.sem_coo[m:m + 1] = [(rows.astype(np.int64), cols.astype(np.int64), vals.astype(np.float32))]
        a = coo_matrix(rows, cols, vals, (self.n_users, self.n_items))
        ui, iu = bipartite_pair(a, self.item_emb.device)
        self.set_graph(f"sem_ui_{m}", ui)
        self.set_graph(f"sem_iu_{m}", iu)

    def init_semantic_graphs(self) -> None:
        self.sem_coo = [(np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),) for _ in range(self.n_modal)]
        self.rebuild_all_users()

    @torch.no_grad()
    def rebuild_all_users(self) -> None:
        """Paper schedule: every user's own top-k items of Â^m (dropout off), computed block-wise."""
        feats = self.modality_features(dropout=False)
        k = self.topk()
        for m, (fu, fi) in enumerate(feats):
            rows, cols = [], []
            active = torch.nonzero(fu.norm(dim=1) > 0).squeeze(1)
            for lo in range(0, len(active), REBUILD_BLOCK):
                users = active[lo:lo + REBUILD_BLOCK]
                top = cosine_rows_dense(fu[users], fi).topk(k, dim=1).indices
                r, c = topk_pairs(users, top, official_pairing=False)
                rows.append(r.cpu().numpy())
                cols.append(c.cpu().numpy())
            r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
            c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
            self.set_semantic_graph(m, r, c, np.ones(len(r), np.float32))
        self._graph_fresh = True

    def on_epoch_start(self, epoch: int) -> None:
        if not getattr(self, "_graph_fresh", False):
            self.rebuild_all_users()

    def after_generator_step(self, batch: Batch, enc: Encoded, pos, mask) -> None:
        """Hook for the graph schedule after each generator step (the paper variant rebuilds per epoch)."""
        self._graph_fresh = False

    def extra_state(self) -> dict[str, Any]:
        return {"sem_coo": [tuple(a.copy() for a in t) for t in self.sem_coo]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the graph the parameters were evaluated with. Not marked fresh: a run resumed from a
        checkpoint rebuilds at the next epoch start, exactly as the uninterrupted run does."""
        if "sem_coo" in state:
            for m, (r, c, v) in enumerate(state["sem_coo"]):
                self.set_semantic_graph(m, np.asarray(r), np.asarray(c), np.asarray(v))
        self._graph_fresh = False

    # ---- the encoder (Eqs. 2, 8, 9, 10, 12) ----------------------------------------------------
    def modality_features(self, dropout: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Eq. 2: f̃^m = Dropout(Linear(x^m)); f_u^m = Σ_{i∈N_u} f̃_i/√|N_u|; f_i^m = Σ_{u∈N_i} f_u/√|N_i|."""
        out = []
        for m, lin in enumerate(self.transforms):
            ft = inverted_dropout(lin(self.feat(m)), self.cfg.drop_rate, dropout)
            fu = self.graph("a_ui") @ ft
            out.append((fu, self.graph("a_iu") @ fu))
        return out

    def fuse(self, stack: torch.Tensor) -> torch.Tensor:
        """Eq. 9 + mean over modalities: [M, N, d] → [N, d]."""
        return self.attention(stack)

    def propagate(self, u0: torch.Tensor, i0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 10: simultaneous LightGCN-style layers on the one-sided graphs, mean over L+1 layers."""
        a_ui, a_iu = self.graph("a_ui"), self.graph("a_iu")
        us, is_ = [u0], [i0]
        u, i = u0, i0
        for _ in range(self.cfg.n_layers):
            u, i = a_ui @ i, a_iu @ u
            us.append(u)
            is_.append(i)
        return torch.stack(us).mean(0), torch.stack(is_).mean(0)

    def collaborative(self) -> Collaborative:
        """Eqs. 8–10: the semantic-neighbour aggregates, their attention-fused residual and the propagated
        ID embeddings. Dropout-free and random-free, so both passes of a training step share one."""
        cfg = self.cfg
        skip = [self.sem_empty(m) for m in range(self.n_modal)]  # an empty graph aggregates to 0
        modal_u: list[torch.Tensor | None] = []
        modal_i: list[torch.Tensor | None] = []
        for m in range(self.n_modal):
            if skip[m]:
                modal_u.append(None)
                modal_i.append(None)
            else:
                ui, iu = self.sem(m)
                modal_u.append(ui @ self.item_emb)  # Eq. 8
                modal_i.append(iu @ self.user_emb)
        u0, i0 = self.user_emb, self.item_emb
        if not all(skip):  # all graphs empty ⇒ Ẽ = 0 exactly and Ê⁰ = E
            zu = torch.zeros_like(self.user_emb)
            zi = torch.zeros_like(self.item_emb)
            su = torch.stack([e if e is not None else zu for e in modal_u])
            si = torch.stack([e if e is not None else zi for e in modal_i])
            u0 = u0 + cfg.eta * rownorm(self.fuse(su))
            i0 = i0 + cfg.eta * rownorm(self.fuse(si))
        eu, ei = self.propagate(u0, i0)
        return Collaborative(eu, ei, modal_u)

    def encode(self, dropout: bool, collab: Collaborative | None = None) -> Encoded:
        """Eq. 12: h = ê + ω Σ_m f^m/‖f^m‖, from the modality features (Eq. 2, fresh dropout) and the
        collaborative half (`collab`, computed here unless the step already has it)."""
        feats = self.modality_features(dropout)
        collab = collab if collab is not None else self.collaborative()
        omega = self.cfg.omega
        h_u = collab.e_u + omega * sum(rownorm(fu) for fu, _ in feats)
        h_i = collab.e_i + omega * sum(rownorm(fi) for _, fi in feats)
        return Encoded(h_u, h_i, feats, collab.modal_u)

    # ---- relation rows (Eq. 3) and real rows (Eq. 5) -------------------------------------------
    def fake_rows(self, x: torch.Tensor, y: torch.Tensor, pos, mask) -> Rows:
        """Â^m rows of the batch users: per-entry cosine (paper Eq. 3)."""
        return cosine_rows_factored(x, y)

    def transform_term(self, mask: torch.Tensor) -> torch.Tensor:
        """The 'transformation' of Eq. 5 (dense, cheap): Gumbel softmax of the observed rows, or the
        observed rows themselves when `gumbel` is off (w/o-GT)."""
        if self.cfg.gumbel:
            return gumbel_softmax_rows(mask, self.cfg.gumbel_scale, self.cfg.gumbel_tau)
        return mask

    def sparse_transform(self, term: torch.Tensor, pos):
        """(extra sparse triple, dense fallback) for the factored real rows."""
        if not self.cfg.gumbel:
            r, c = pos
            return (r, c, torch.ones(len(r), device=term.device)), None
        extra = sparsify(term, GUMBEL_SPARSE_TOL)
        return (extra, None) if extra is not None else (None, term)

    def real_rows(self, h_u: torch.Tensor, h_i: torch.Tensor, pos, mask) -> Rows:
        """Paper Eq. 5: transformation + ζ·cos(h_u, h_i) (no normalisation)."""
        term = self.transform_term(mask)
        zeta = self.cfg.zeta
        extra, extra_dense = self.sparse_transform(term, pos)
        rows = cosine_rows_factored(h_u, h_i)
        return Rows(rows.x, rows.y, zeta * rows.scale, extra=extra, extra_dense=extra_dense)

    # ---- losses -------------------------------------------------------------------------------
    def discriminator_loss(self, batch: Batch, pos, mask, collab: Collaborative | None = None
                           ) -> dict[str, torch.Tensor]:
        """Eq. 7, L_D = −E D(real) + E D(fake) + λ1·GP, on rows from a no-grad forward (dropout on)."""
        users = batch.users
        with torch.no_grad():
            enc = self.encode(dropout=True, collab=collab)
            fake = [self.fake_rows(fu[users], fi, pos, mask) for fu, fi in enc.feats]
            real = self.real_rows(enc.h_u[users], enc.h_i, pos, mask)
        return self.disc.critic_loss(real, fake, self.gp_constant, self.cfg.gp_rate)

    def adversarial_loss(self, enc: Encoded, users: torch.Tensor, pos, mask) -> torch.Tensor:
        """L_G = −E D(Â^m) (Eq. 7) with gradients into the modality transforms, or the r/p-GAE loss."""
        if self.cfg.generator == "gae":
            return sum(gae_loss(cosine_rows_dense(fu[users], fi) / self.cfg.gae_tau, mask)
                       for fu, fi in enc.feats)
        fake = [self.fake_rows(fu[users], fi, pos, mask) for fu, fi in enc.feats]
        return self.disc.generator_loss(fake)

    def contrastive_loss(self, enc: Encoded, users: torch.Tensor) -> torch.Tensor:
        h = enc.h_u[users]
        modal = [e[users] if e is not None else torch.zeros_like(h) for e in enc.modal_u]
        if self.cfg.get("cl_reading", "other_users") == "literal":
            return literal_contrastive(h, modal, self.cfg.cl_tau)
        return paper_contrastive(h, modal, self.cfg.cl_tau)

    def explicit_l2(self) -> bool:
        """λ4 as a loss term (`l2_reading=explicit`) instead of the optimiser's decoupled decay."""
        return self.cfg.get("l2_reading", "decoupled") == "explicit"

    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("disc.")]

    def regularisers(self, enc: Encoded, hu, hp, hn) -> dict[str, torch.Tensor]:
        """The code's L2 terms (zero-weighted in the paper variant): batch final embeddings, all features;
        and with `l2_reading=explicit`, Eq. 13's λ4‖Θ‖² over every generator parameter."""
        cfg, out = self.cfg, {}
        if self.explicit_l2() and cfg.weight_decay:
            out["l2"] = cfg.weight_decay * sum(p.pow(2).sum() for p in self.generator_parameters())
        if cfg.reg_weight:
            out["reg"] = cfg.reg_weight * l2_per_batch(hu, hp, hn)
        if cfg.feat_reg:
            sq = sum(fu.pow(2).sum() + fi.pow(2).sum() for fu, fi in enc.feats)
            out["feat_reg"] = cfg.feat_reg * 0.5 * sq / self.n_items
        return out

    def generator_losses(self, batch: Batch, pos, mask, collab: Collaborative | None = None
                         ) -> tuple[dict[str, torch.Tensor], Encoded]:
        """Eq. 13: BPR + λ2·L_CL + λ3·L_G (+ the code's regularisers), from a forward with gradients."""
        cfg = self.cfg
        enc = self.encode(dropout=True, collab=collab)
        u, p, n = batch.users, batch.pos, batch.neg
        hu, hp, hn = enc.h_u[u], enc.h_i[p], enc.h_i[n]
        losses = {"bpr": bpr_loss((hu * hp).sum(1), (hu * hn).sum(1))}
        losses.update(self.regularisers(enc, hu, hp, hn))
        if cfg.contrastive:
            losses["cl"] = self.contrastive_loss(enc, u)
        if cfg.adversarial:
            losses["adv"] = self.adversarial_loss(enc, u, pos, mask)
        weights = {"cl": cfg.cl_rate, "adv": cfg.g_rate}
        losses["loss"] = sum(v * weights.get(k, 1.0) for k, v in losses.items())
        return losses, enc

    # ---- the trainer's hooks --------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """AdamW for the recommender/generator; Adam(betas 0.5, 0.9), no decay, for D (the code). Both use
        torch's fused kernel (the same update to the last bit or so; on D's I×I/4 weight it is ~5× faster
        than the per-operation update, which makes a few [I, I/4] temporaries per step)."""
        gen = self.generator_parameters()
        cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        decay = 0.0 if self.explicit_l2() else self.cfg.weight_decay  # explicit: λ4 is in the loss
        opts = [cls(gen, lr=self.cfg.lr, weight_decay=decay, fused=True)]
        if self.disc is not None:
            opts.append(torch.optim.Adam(self.disc.parameters(), lr=self.cfg.d_lr, betas=(0.5, 0.9), fused=True))
        return opts

    def make_sampler(self, train, batch_size: int, seed: int):
        return PerUserSampler(train, batch_size, seed)

    def batch_context(self, batch: Batch):
        """The batch users' training positives and dense training rows, built once per batch."""
        pos = batch_positions(self.indptr, self.indices, batch.users)
        return pos, dense_mask(pos[0], pos[1], len(batch.users), self.n_items)

    def train_step(self, batch: Batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """D's Adam step, then the generator's AdamW step (the code's order). D's step changes no
        generator parameter, so both passes share the collaborative half (computed once, with gradients
        for the generator pass); each pass draws its own feature dropout, as in the code (spec §10.2 9)."""
        pos, mask = self.batch_context(batch)
        out: dict[str, float] = {}
        collab = self.collaborative()
        if self.disc is not None:
            opt_d = optimizers[1]
            opt_d.zero_grad(set_to_none=False)
            d_losses = self.discriminator_loss(batch, pos, mask, collab)
            d_losses["loss_d"].backward()
            opt_d.step()
            out.update({k: float(v.detach()) for k, v in d_losses.items()})
        opt_g = optimizers[0]
        opt_g.zero_grad(set_to_none=False)
        losses, enc = self.generator_losses(batch, pos, mask, collab)
        losses["loss"].backward()
        opt_g.step()
        self.after_generator_step(batch, enc, pos, mask)
        out.update({k: float(v.detach()) for k, v in losses.items()})
        return out

    def calculate_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        pos, mask = self.batch_context(batch)
        return self.generator_losses(batch, pos, mask)[0]

    # ---- scoring ------------------------------------------------------------------------------
    def begin_scoring(self) -> None:
        enc = self.encode(dropout=False)
        self._cache = (enc.h_u, enc.h_i)

    def end_scoring(self) -> None:
        self._cache = None

    def score(self, users: torch.Tensor) -> torch.Tensor:
        if self._cache is None:
            enc = self.encode(dropout=False)
            h_u, h_i = enc.h_u, enc.h_i
        else:
            h_u, h_i = self._cache
        return h_u[users] @ h_i.T
