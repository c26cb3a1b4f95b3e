"""FROZEN ORACLE: the plain dense (`fast=false`) computation of MMSSL's training losses.

What it is
    A self-contained copy of what `models/mmssl.py`, `models/mmssl_parts.py` computed with `fast=false`
    for BOTH variants — `mmssl` (the paper's equations) and `mmssl-official` (the authors' code, quirk
    for quirk, including its literal attention) — and the Table 3 switches (`adversarial`, `contrastive`,
    `gumbel`, `generator=gae`) and readings (`cl_reading`, `l2_reading`). Given a live model instance
    (parameters, buffers, cfg, current semantic graphs) and a batch, it computes the discriminator loss
    dict (Eq. 7 WGAN-GP: `loss_d`, `d_real`, `d_fake`, `gp`) and the generator loss dict (`bpr`, the
    regularisers `l2`/`reg`/`feat_reg`, `cl`, `adv`, `loss`) with its OWN code: dense [B, I] relation
    rows (Eq. 3), dense real rows (Eq. 5), the discriminator called on them (Eq. 4), the gradient
    penalty through autograd on the interpolated rows, the encoder (Eqs. 2, 8, 9, 10, 12) and the
    contrastive losses (Eq. 11). Gradients flow into the model's own parameters. Random draws (feature
    dropout, Gumbel noise, D's dropouts, the interpolation α) happen in exactly the order of the model's
    `fast=false` path, so under the same seed the numbers are the model's numbers.

Frozen
    Copied from commit 3ab6857821e9a571725d9ca1b5953ae24ca05517 (mmbench, before MMSSL became a
    package). It is NEVER edited to follow the model: it is the reference that the package's fast path
    is measured against (tests/test_mmssl_oracle.py, benchmarks/mmssl_speed.py). If the model changes
    its computed function on purpose, that is a decision to record, not a reason to edit this file.
    The ONE place that knows the model's attribute layout is `OracleState.from_model`; if a refactor
    renames attributes (parameter names, buffers), only that adapter may be updated — never the math.

It imports only torch and mmbench's generic pieces (`mmbench.models.graph.Graph`
for the sparse×dense products with a stored transpose); nothing from models/mmssl*.py. The graph
schedules (the paper's per-epoch rebuild, the official rebuild-or-accumulate lists) are NOT part of the
loss computation: the oracle reads whatever semantic graph the model currently holds, and
`OracleMMSSL.train_step` hands the generator pass's features to a caller-supplied hook for them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from mmbench.models.graph import Graph

COMMIT = "3ab6857821e9a571725d9ca1b5953ae24ca05517"

# paper_contrastive's fixed shift needs exp(−2/τ) representable in float32; below this τ it uses
# two stable logsumexps (same function).
FIXED_SHIFT_MIN_TAU = 0.05


# =========================================================================== the model's state

@dataclass
class OracleState:
    """Everything the oracle reads from a live model. Tensors are the model's own (no copies), so
    gradients land in the model's parameters and BatchNorm running statistics update as in the model."""

    official: bool
    cfg: Any
    n_users: int
    n_items: int
    feats: list[torch.Tensor]  # raw item features per modality
    transforms: list[tuple[torch.Tensor, torch.Tensor]]  # (weight [d, F], bias [d]) per modality
    user_emb: torch.Tensor
    item_emb: torch.Tensor
    att_wq: torch.Tensor
    att_wk: torch.Tensor | None  # paper attention only
    att_wcat: torch.Tensor
    n_heads: int
    a_ui: Graph
    a_iu: Graph
    sem: list[tuple[Graph, Graph]]  # (A^m_ui, A^m_iu) per modality, normalised
    indptr: torch.Tensor
    indices: torch.Tensor
    disc: dict[str, Any] | None  # w1t, b1, w2, b2, w3, b3, bn1, bn2 (BatchNorm1d modules)
    gp_constant: float
    generator_params: list[torch.Tensor]  # every non-discriminator parameter, in model order

    @classmethod
    def from_model(cls, model) -> "OracleState":
        """The adapter: the only code here that knows the model's attribute names (commit above)."""
        def graph(name: str) -> Graph:
            return Graph(getattr(model, f"{name}_mat"), getattr(model, f"{name}_mat_t"))

        n_modal = len(model.modalities)
        att = model.attention
        disc = None
        if model.disc is not None:
            dm = model.disc
            disc = {"w1t": dm.w1t, "b1": dm.b1, "w2": dm.l2.weight, "b2": dm.l2.bias, "w3": dm.l3.weight,
                    "b3": dm.l3.bias, "bn1": dm.bn1, "bn2": dm.bn2}
        return cls(
            official=bool(getattr(model, "official", False)),
            cfg=model.cfg,
            n_users=model.n_users,
            n_items=model.n_items,
            feats=[getattr(model, f"feat_{m}") for m in range(n_modal)],
            transforms=[(lin.weight, lin.bias) for lin in model.transforms],
            user_emb=model.user_emb,
            item_emb=model.item_emb,
            att_wq=att.wq,
            att_wk=getattr(att, "wk", None),
            att_wcat=att.wcat,
            n_heads=att.heads,
            a_ui=graph("a_ui"),
            a_iu=graph("a_iu"),
            sem=[(graph(f"sem_ui_{m}"), graph(f"sem_iu_{m}")) for m in range(n_modal)],
            indptr=model.indptr,
            indices=model.indices,
            disc=disc,
            gp_constant=float(type(model).gp_constant),
            generator_params=[p for n, p in model.named_parameters() if not n.startswith("disc.")],
        )


# =========================================================================== small pieces

def rownorm(x: torch.Tensor) -> torch.Tensor:
    """x / max(‖x‖₂, 1e-12) per row: zero rows stay zero."""
    return F.normalize(x, dim=1)


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    return F.softplus(neg_scores - pos_scores).mean()


def l2_per_batch(*tensors: torch.Tensor) -> torch.Tensor:
    n = tensors[0].shape[0]
    return sum(t.pow(2).sum() for t in tensors) / (2.0 * n)


def batch_positions(indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor):
    """(row in batch, item) of every training positive of the batch users."""
    start, end = indptr[users], indptr[users + 1]
    deg = end - start
    rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), deg)
    offset = torch.arange(int(deg.sum()), device=users.device) - torch.repeat_interleave(
        torch.cumsum(deg, 0) - deg, deg)
    cols = indices[torch.repeat_interleave(start, deg) + offset]
    return rows, cols


def dense_mask(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_items: int) -> torch.Tensor:
    m = torch.zeros(n_rows, n_items, device=rows.device)
    m[rows, cols] = 1.0
    return m


def inverted_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with the mask drawn as `U(0,1) ≥ p` (one uniform per element, as the model)."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep


def cosine_rows_dense(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 3: per-entry cosine (zero vectors give 0)."""
    return rownorm(x) @ rownorm(y).T


def masked_rows_dense(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Official Eq. 3: rownorm((x Yᵀ) ⊙ (1 − r))."""
    return rownorm((x @ y.T) * (1.0 - mask))


def gumbel_softmax_rows(mask: torch.Tensor, scale: float, tau: float) -> torch.Tensor:
    """softmax_i((r + scale·g)/τ), g = −log(−log(ξ + 1e-8) + 1e-8), ξ ~ U(0, 1)."""
    xi = torch.rand(mask.shape, device=mask.device)
    g = -torch.log(-torch.log(xi + 1e-8) + 1e-8)
    return torch.softmax((mask + scale * g) / tau, dim=1)


def gradient_penalty(norm_sq: torch.Tensor) -> torch.Tensor:
    return (norm_sq.clamp_min(1e-24).sqrt() - 1.0).pow(2).mean()


def gae_loss(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n_pos = mask.sum(1).clamp_min(1.0)
    w_pos = (mask.shape[1] - n_pos) / n_pos
    per = F.softplus(scores) * (1.0 - mask) + w_pos[:, None] * F.softplus(-scores) * mask
    return per.mean()


def batch_norm_train(bn, z: torch.Tensor) -> torch.Tensor:
    """nn.BatchNorm1d.forward in train mode (batch statistics; running statistics updated as torch does)."""
    factor = 0.0
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, factor, bn.eps)


# =========================================================================== attention (Eq. 9)

def paper_attention(stack: torch.Tensor, wq, wk, wcat, heads: int) -> torch.Tensor:
    """Per head softmax_{m'}((e^m W^Q)·(e^{m'} W^K)/√(d/H)) over modalities, values e^{m'}, heads
    concatenated, W_cat back to d, mean over modalities: [M, N, d] → [N, d]."""
    m, n, d = stack.shape
    h, dh = heads, d // heads
    q = (stack @ wq).view(m, n, h, dh)
    k = (stack @ wk).view(m, n, h, dh)
    logits = torch.einsum("anhc,bnhc->hnab", q, k) / math.sqrt(dh)
    alpha = torch.softmax(logits, dim=-1)
    out = torch.einsum("hnab,bnd->anhd", alpha, stack)
    return (out.reshape(m, n, h * d) @ wcat).mean(0)


def official_attention_literal(stack: torch.Tensor, wq, wcat, heads: int) -> torch.Tensor:
    """The authors' code's attention as it computes it (W_q queries, 'keys' reshaped out of the permuted
    queries, softmax over key modalities, values indexed by the query modality, concat, W_cat, mean)."""
    m, n, d = stack.shape
    h, dh = heads, d // heads
    q = (stack @ wq).view(m, n, h, dh).permute(2, 0, 1, 3).contiguous()
    k = q.view(m, n, h, dh).permute(2, 0, 1, 3)
    logits = torch.einsum("hqnc,hknc->hqkn", q, k) / math.sqrt(dh)
    alpha = torch.softmax(logits, dim=2)
    out = torch.einsum("hqkn,qnd->hqnd", alpha, stack)
    cat = out.permute(1, 2, 0, 3).reshape(m, n, h * d)
    return (cat @ wcat).mean(0)


# =========================================================================== contrastive (Eq. 11)

def _row_and_col_lse(block: torch.Tensor, tau: float):
    if tau < FIXED_SHIFT_MIN_TAU:
        return torch.logsumexp(block / tau, dim=1), torch.logsumexp(block / tau, dim=0)
    e = torch.exp((block - 1.0) / tau)
    return e.sum(1).log() + 1.0 / tau, e.sum(0).log() + 1.0 / tau


def paper_contrastive(h: torch.Tensor, modal: list[torch.Tensor], tau: float) -> torch.Tensor:
    """Anchor h_u, positive e_u^m; negatives e^m of the other batch users and e^{m'} (m' ≠ m) of every
    batch user scored against e_u^m; mean over users, summed over modalities."""
    q = rownorm(h)
    keys = [rownorm(e) for e in modal]
    n_mod = len(keys)
    parts: list[list[torch.Tensor]] = [[] for _ in range(n_mod)]
    positives = []
    for m, k in enumerate(keys):
        same = q @ k.T
        parts[m].append(torch.logsumexp(same / tau, dim=1))
        positives.append(same.diagonal() / tau)
    for m in range(n_mod):
        for o in range(m + 1, n_mod):
            rows, cols = _row_and_col_lse(keys[m] @ keys[o].T, tau)
            parts[m].append(rows)
            parts[o].append(cols)
    total = h.new_zeros(())
    for m in range(n_mod):
        denom = torch.logsumexp(torch.stack(parts[m]), dim=0)
        total = total + (denom - positives[m]).mean()
    return total


def literal_contrastive(h: torch.Tensor, modal: list[torch.Tensor], tau: float) -> torch.Tensor:
    """Eq. 11's printed subscripts: negatives = the same user's other modalities, + log B."""
    q = rownorm(h)
    keys = [rownorm(e) for e in modal]
    log_b = math.log(len(h))
    total = h.new_zeros(())
    for m, k in enumerate(keys):
        pos = (q * k).sum(1) / tau
        terms = [pos] + [(k * o).sum(1) / tau for j, o in enumerate(keys) if j != m]
        total = total + (log_b + torch.logsumexp(torch.stack(terms), dim=0) - pos).mean()
    return total


def official_contrastive(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """The code's loss: anchor z1 = e^m_u, positive z2 = h_u, GRACE-style negatives, −log(ratio + 1e-8)."""
    a, b = rownorm(z1), rownorm(z2)
    refl = torch.exp(a @ a.T / tau)
    betw = torch.exp(a @ b.T / tau)
    ratio = betw.diagonal() / (refl.sum(1) - refl.diagonal() + betw.sum(1))
    return -torch.log(ratio + 1e-8).mean()


# =========================================================================== the oracle

@dataclass
class OracleEncoded:
    h_u: torch.Tensor
    h_i: torch.Tensor
    feats: list[tuple[torch.Tensor, torch.Tensor]]
    modal_u: list[torch.Tensor]


class OracleMMSSL:
    """The dense computation over a live model's state (read afresh at every call, so the model's graph
    schedule and optimiser steps are seen)."""

    def __init__(self, model):
        self.model = model

    @property
    def s(self) -> OracleState:
        return OracleState.from_model(self.model)

    # ---- discriminator (Eq. 4) ------------------------------------------------------------------
    @staticmethod
    def disc_forward(s: OracleState, rows: torch.Tensor) -> torch.Tensor:
        """D(a) = scale·σ(L3(Γ₂(Γ₁(a)))), Γ = Dropout(BatchNorm(LeakyReLU(Linear))), always train mode."""
        cfg, d = s.cfg, s.disc
        z = torch.addmm(d["b1"], rows, d["w1t"])
        z = inverted_dropout(batch_norm_train(d["bn1"], F.leaky_relu(z, cfg.d_slope)), cfg.d_drop1, True)
        z = F.linear(z, d["w2"], d["b2"])
        z = inverted_dropout(batch_norm_train(d["bn2"], F.leaky_relu(z, cfg.d_slope)), cfg.d_drop2, True)
        return cfg.d_out_scale * torch.sigmoid(F.linear(z, d["w3"], d["b3"]).squeeze(1))

    # ---- encoder (Eqs. 2, 8, 9, 10, 12) ---------------------------------------------------------
    @staticmethod
    def modality_features(s: OracleState, dropout: bool):
        out = []
        for feat, (w, b) in zip(s.feats, s.transforms):
            ft = inverted_dropout(F.linear(feat, w, b), s.cfg.drop_rate, dropout)
            fu = s.a_ui @ ft
            out.append((fu, s.a_iu @ fu))
        return out

    @staticmethod
    def fuse(s: OracleState, stack: torch.Tensor) -> torch.Tensor:
        if s.official:
            return official_attention_literal(stack, s.att_wq, s.att_wcat, s.n_heads)
        return paper_attention(stack, s.att_wq, s.att_wk, s.att_wcat, s.n_heads)

    @staticmethod
    def propagate(s: OracleState, u0: torch.Tensor, i0: torch.Tensor):
        us, is_ = [u0], [i0]
        n = s.cfg.n_layers
        if s.official:  # alternating, softmax over dimensions at the last layer
            i = i0
            for layer in range(1, n + 1):
                u = s.a_ui @ i
                if layer == n:
                    u = torch.softmax(u, dim=1)
                i = s.a_iu @ u
                if layer == n:
                    i = torch.softmax(i, dim=1)
                us.append(u)
                is_.append(i)
        else:  # simultaneous LightGCN-style layers
            u, i = u0, i0
            for _ in range(n):
                u, i = s.a_ui @ i, s.a_iu @ u
                us.append(u)
                is_.append(i)
        return torch.stack(us).mean(0), torch.stack(is_).mean(0)

    def encode(self, s: OracleState, dropout: bool) -> OracleEncoded:
        cfg = s.cfg
        feats = self.modality_features(s, dropout)
        modal_u = [ui @ s.item_emb for ui, _ in s.sem]  # Eq. 8
        modal_i = [iu @ s.user_emb for _, iu in s.sem]
        u0 = s.user_emb + cfg.eta * rownorm(self.fuse(s, torch.stack(modal_u)))
        i0 = s.item_emb + cfg.eta * rownorm(self.fuse(s, torch.stack(modal_i)))
        eu, ei = self.propagate(s, u0, i0)
        h_u = eu + cfg.omega * sum(rownorm(fu) for fu, _ in feats)
        h_i = ei + cfg.omega * sum(rownorm(fi) for _, fi in feats)
        return OracleEncoded(h_u, h_i, feats, modal_u)

    # ---- relation rows (Eq. 3), real rows (Eq. 5) ------------------------------------------------
    @staticmethod
    def fake_rows(s: OracleState, x, y, mask):
        return masked_rows_dense(x, y, mask) if s.official else cosine_rows_dense(x, y)

    @staticmethod
    def real_rows(s: OracleState, h_u, h_i, mask):
        cfg = s.cfg
        term = gumbel_softmax_rows(mask, cfg.gumbel_scale, cfg.gumbel_tau) if cfg.gumbel else mask
        if s.official:
            return rownorm(term + cfg.zeta * masked_rows_dense(h_u, h_i, mask))
        return term + cfg.zeta * cosine_rows_dense(h_u, h_i)

    # ---- losses ---------------------------------------------------------------------------------
    def batch_mask(self, s: OracleState, users: torch.Tensor) -> torch.Tensor:
        rows, cols = batch_positions(s.indptr, s.indices, users)
        return dense_mask(rows, cols, len(users), s.n_items)

    def discriminator_loss(self, batch, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Eq. 7: −E D(real) + E D(fake) + gp_rate·λ1·GP, on rows from a no-grad forward (dropout on)."""
        s = self.s
        users = batch.users
        if mask is None:
            mask = self.batch_mask(s, users)
        with torch.no_grad():
            enc = self.encode(s, dropout=True)
            fake = [self.fake_rows(s, fu[users], fi, mask) for fu, fi in enc.feats]
            real = self.real_rows(s, enc.h_u[users], enc.h_i, mask)
        x_real = real.repeat(len(fake), 1)
        x_fake = torch.cat(fake)
        d_real = self.disc_forward(s, x_real)
        d_fake = self.disc_forward(s, x_fake)
        alpha = torch.rand(len(x_fake), 1, device=x_fake.device)
        x_hat = (alpha * x_real + (1 - alpha) * x_fake).requires_grad_(True)
        d_hat = self.disc_forward(s, x_hat)
        (grad,) = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
        gp = s.gp_constant * gradient_penalty(grad.pow(2).sum(1))
        loss = -d_real.mean() + d_fake.mean() + s.cfg.gp_rate * gp
        return {"loss_d": loss, "d_real": d_real.mean(), "d_fake": d_fake.mean(), "gp": gp}

    def adversarial_loss(self, s: OracleState, enc: OracleEncoded, users, mask) -> torch.Tensor:
        if s.cfg.generator == "gae":
            return sum(gae_loss(cosine_rows_dense(fu[users], fi) / s.cfg.gae_tau, mask) for fu, fi in enc.feats)
        fake = [self.fake_rows(s, fu[users], fi, mask) for fu, fi in enc.feats]
        return -self.disc_forward(s, torch.cat(fake)).mean()

    @staticmethod
    def contrastive_loss(s: OracleState, enc: OracleEncoded, users) -> torch.Tensor:
        h = enc.h_u[users]
        if s.official:
            total = h.new_zeros(())
            for e in enc.modal_u:
                total = total + official_contrastive(e[users], h, s.cfg.cl_tau)
            return total
        modal = [e[users] for e in enc.modal_u]
        if s.cfg.get("cl_reading", "other_users") == "literal":
            return literal_contrastive(h, modal, s.cfg.cl_tau)
        return paper_contrastive(h, modal, s.cfg.cl_tau)

    @staticmethod
    def regularisers(s: OracleState, enc: OracleEncoded, hu, hp, hn) -> dict[str, torch.Tensor]:
        cfg, out = s.cfg, {}
        if cfg.get("l2_reading", "decoupled") == "explicit" and cfg.weight_decay:
            out["l2"] = cfg.weight_decay * sum(p.pow(2).sum() for p in s.generator_params)
        if cfg.reg_weight:
            out["reg"] = cfg.reg_weight * l2_per_batch(hu, hp, hn)
        if cfg.feat_reg:
            sq = sum(fu.pow(2).sum() + fi.pow(2).sum() for fu, fi in enc.feats)
            out["feat_reg"] = cfg.feat_reg * 0.5 * sq / s.n_items
        return out

    def generator_losses(self, batch, mask: torch.Tensor | None = None):
        """Eq. 13: BPR + λ2·L_CL + λ3·L_G (+ regularisers), from a forward with gradients (dropout on).
        Returns (losses, encoded)."""
        s = self.s
        cfg = s.cfg
        u, p, n = batch.users, batch.pos, batch.neg
        if mask is None:
            mask = self.batch_mask(s, u)
        enc = self.encode(s, dropout=True)
        hu, hp, hn = enc.h_u[u], enc.h_i[p], enc.h_i[n]
        losses = {"bpr": bpr_loss((hu * hp).sum(1), (hu * hn).sum(1))}
        losses.update(self.regularisers(s, enc, hu, hp, hn))
        if cfg.contrastive:
            losses["cl"] = self.contrastive_loss(s, enc, u)
        if cfg.adversarial:
            losses["adv"] = self.adversarial_loss(s, enc, u, mask)
        weights = {"cl": cfg.cl_rate, "adv": cfg.g_rate}
        losses["loss"] = sum(v * weights.get(k, 1.0) for k, v in losses.items())
        return losses, enc

    # ---- a full training step (for timing) ------------------------------------------------------
    def train_step(self, batch, optimizers, after_generator_step: Callable | None = None) -> dict[str, float]:
        """D's Adam step on `discriminator_loss`, then the generator's step on `generator_losses`
        (optimizers = [generator, discriminator], as the model's `configure_optimizers`). The graph
        schedule is the caller's: `after_generator_step(batch, feats, pos, mask)` with the generator pass's
        (F_U, F_I) per modality, the batch's training positives (row in batch, item) and dense rows."""
        s = self.s
        pos = batch_positions(s.indptr, s.indices, batch.users)
        mask = dense_mask(pos[0], pos[1], len(batch.users), s.n_items)
        out: dict[str, float] = {}
        if s.disc is not None:
            opt_d = optimizers[1]
            opt_d.zero_grad(set_to_none=False)
            d = self.discriminator_loss(batch, mask)
            d["loss_d"].backward()
            opt_d.step()
            out.update({k: float(v.detach()) for k, v in d.items()})
        opt_g = optimizers[0]
        opt_g.zero_grad(set_to_none=False)
        g, enc = self.generator_losses(batch, mask)
        g["loss"].backward()
        opt_g.step()
        if after_generator_step is not None:
            after_generator_step(batch, enc.feats, pos, mask)
        out.update({k: float(v.detach()) for k, v in g.items()})
        return out


def oracle_losses(model, batch, seed: int):
    """One discriminator pass and one generator pass (no optimiser step) under `torch.manual_seed(seed)`.

    Returns (d_losses, d_grads, g_losses, g_grads): float loss dicts; d_grads = the discriminator's
    parameter gradients from `loss_d`; g_grads = every non-discriminator parameter's gradient from the
    generator's `loss` (names as in `model.named_parameters()`). The model's grads are left cleared.
    """
    oracle = OracleMMSSL(model)
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    d_losses, d_grads = {}, {}
    if model.disc is not None:
        d = oracle.discriminator_loss(batch)
        d["loss_d"].backward()
        d_losses = {k: float(v.detach()) for k, v in d.items()}
        d_grads = {n: p.grad.clone() for n, p in model.named_parameters()
                   if n.startswith("disc.") and p.grad is not None}
        model.zero_grad(set_to_none=True)
    g, _ = oracle.generator_losses(batch)
    g["loss"].backward()
    g_losses = {k: float(v.detach()) for k, v in g.items()}
    g_grads = {n: p.grad.clone() for n, p in model.named_parameters()
               if not n.startswith("disc.") and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return d_losses, d_grads, g_losses, g_grads
