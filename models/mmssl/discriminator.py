"""The adversarial part of MMSSL: the discriminator (Eq. 4) and its gradient penalty (Eq. 7).

The gradient penalty needs ‖∂D/∂x‖ = ‖W₁ᵀ δ‖ per row (δ = ∂D/∂z₁, x a [I]-row that is never formed); it is
computed through the symmetric Gram W₁W₁ᵀ when that is cheaper (`row_sq_norms`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.models.mmssl.relation_rows import Rows, first_layers


def inverted_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, distributed exactly as F.dropout, with the mask drawn as `U(0,1) ≥ p`: torch's
    CPU `bernoulli_` costs about three uniform draws per element, and D drops ~4·B·I/4 entries per batch."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))  # in one buffer: 1/(1−p) or 0
    return x * keep


class Discriminator(nn.Module):
    """D(a) = scale · σ(L3(Γ₂(Γ₁(a)))), Γ = Dropout(BatchNorm(LeakyReLU(Linear(·)))), widths I/4, I/8.

    The official code writes `LeakyReLU(True)`, i.e. negative_slope = 1.0: the identity (`slope`); it
    scales the sigmoid by 100 (`out_scale`); linear weights are Kaiming-normal (fan-in, gain √2) with
    zero biases; dropouts 0.31 / 0.5. The first layer's weight is stored transposed ([I, I/4], same
    function) so that gathering item rows of it is contiguous. `tail` starts after the first Linear so
    that `critic_loss` can feed it a first-layer activation computed without forming the input rows.
    """

    def __init__(self, n_items: int, drop1: float, drop2: float, slope: float, out_scale: float):
        super().__init__()
        h1, h2 = max(1, n_items // 4), max(1, n_items // 8)
        w1 = nn.init.kaiming_normal_(torch.empty(h1, n_items))  # fan-in = n_items
        self.w1t = nn.Parameter(w1.T.contiguous())
        self.b1 = nn.Parameter(torch.zeros(h1))
        self.l2, self.l3 = nn.Linear(h1, h2), nn.Linear(h2, 1)
        self.bn1, self.bn2 = nn.BatchNorm1d(h1), nn.BatchNorm1d(h2)
        self.drop1, self.drop2 = drop1, drop2
        self.slope, self.out_scale = slope, out_scale
        for lin in (self.l2, self.l3):
            nn.init.kaiming_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def act(self, z: torch.Tensor) -> torch.Tensor:
        """LeakyReLU; the code's slope 1.0 is the identity, so nothing is computed (nor differentiated)."""
        return z if self.slope == 1.0 else F.leaky_relu(z, self.slope)

    def tail(self, z1: torch.Tensor) -> torch.Tensor:
        """Everything after the first Linear: [rows, I/4] pre-activations → [rows] critic values."""
        z = inverted_dropout(self.bn1(self.act(z1)), self.drop1, self.training)
        z = inverted_dropout(self.bn2(self.act(self.l2(z))), self.drop2, self.training)
        return self.out_scale * torch.sigmoid(self.l3(z).squeeze(1))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.tail(torch.addmm(self.b1, rows, self.w1t))

    def critic_loss(self, real: Rows, fake: list[Rows], gp_constant: float, gp_rate: float
                    ) -> dict[str, torch.Tensor]:
        """Eq. 7's L_D = −E D(real) + E D(fake) + gp_rate·gp, gp = gp_constant·E(‖∇D(x̂)‖ − 1)² (the paper's
        λ1 = gp_constant·gp_rate; the code hard-codes gp_constant 0.3), x̂ = α·real + (1−α)·fake.

        Real rows are paired with each modality's fake rows (the code duplicates them), so the first
        layer of the real rows is computed once for their M copies (spec §10.2 item 4). The first layer
        is linear, so x̂'s activation is α·z_real + (1−α)·z_fake + b₁; the penalty's ‖∂D/∂x̂‖ = ‖W₁ᵀδ‖ with
        δ = ∂D/∂z₁ (`row_sq_norms`). The code keeps D in train mode for every pass.
        """
        self.train()
        n_m = len(fake)
        n_real = len(real.x)
        z = first_layers([real] + fake, self.w1t)
        z_real, z_fake = z[:n_real], z[n_real:]  # real [B, H], the M fake blocks [M·B, H]
        b1, width = self.b1, z.shape[1]
        d_real = self.tail((z_real + b1).repeat(n_m, 1))
        d_fake = self.tail(z_fake + b1)
        alpha = torch.rand(len(z_fake), 1, device=z_fake.device)
        a = alpha.view(n_m, n_real, 1)  # α per (copy of a real row, fake row) pair, without copying z_real
        z_hat = (a * z_real + (1 - a) * z_fake.view(n_m, n_real, width)).view(-1, width) + b1  # L1(α·r + (1−α)·f)
        d_hat = self.tail(z_hat)
        (delta,) = torch.autograd.grad(d_hat.sum(), z_hat, create_graph=True)
        gp = gp_constant * gradient_penalty(row_sq_norms(delta, self.w1t))
        loss = -d_real.mean() + d_fake.mean() + gp_rate * gp
        return {"loss_d": loss, "d_real": d_real.mean(), "d_fake": d_fake.mean(), "gp": gp}

    def generator_loss(self, fake: list[Rows]) -> torch.Tensor:
        """Eq. 7's L_G = −E D(Â^m), gradients into the rows only: the code computes D's parameter
        gradients here and throws them away, so they are not computed."""
        self.train()
        params = list(self.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            return -self.tail(first_layers(fake, self.w1t) + self.b1).mean()
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)


def symmetric_product(a: torch.Tensor, b: torch.Tensor, blocks: int = 6) -> torch.Tensor:
    """aᵀ b for a product known to be symmetric (a Gram aᵀa, or δᵀ diag(c) δ as a = cδ, b = δ): only the
    row strips on and right of the diagonal are multiplied, the rest mirrored (≈ 0.6 of the work)."""
    n = a.shape[1]
    if n < 256:
        return a.T @ b
    edges = [round(n * k / blocks) for k in range(blocks + 1)]
    out = torch.empty(n, n, dtype=a.dtype, device=a.device)
    for lo, hi in zip(edges[:-1], edges[1:]):
        strip = a[:, lo:hi].T @ b[:, lo:]
        out[lo:hi, lo:] = strip
        out[lo:, lo:hi] = strip.T
    return out


class _GramSqNorms(torch.autograd.Function):
    """‖W δ_b‖² for every row b of δ [n, H], W [I, H], via G = WᵀW ([H, H], exact).

    Cheaper than forming δWᵀ ([n, I]) when H < n. Backward: ∂δ = 2c ⊙ (δG) (already computed in the
    forward), ∂W = 2 W (δᵀ diag(c) δ).
    """

    @staticmethod
    def forward(ctx, delta, weight_t):
        dg = delta @ symmetric_product(weight_t, weight_t)
        ctx.save_for_backward(delta, weight_t, dg)
        return (dg * delta).sum(1)

    @staticmethod
    def backward(ctx, grad):
        delta, weight_t, dg = ctx.saved_tensors
        g_delta = g_weight = None
        if ctx.needs_input_grad[0]:
            g_delta = 2.0 * grad[:, None] * dg
        if ctx.needs_input_grad[1]:
            g_weight = weight_t @ symmetric_product(delta * (2.0 * grad)[:, None], delta)
        return g_delta, g_weight


def row_sq_norms(delta: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """‖∂D/∂x_b‖² = ‖W₁ᵀ δ_b‖² per row (δ = ∂D/∂z₁), by the cheaper exact route."""
    if weight_t.shape[1] < delta.shape[0]:
        return _GramSqNorms.apply(delta, weight_t)
    g = delta @ weight_t.T
    return (g * g).sum(1)


def gradient_penalty(norm_sq: torch.Tensor) -> torch.Tensor:
    """mean_b (‖∇D‖ − 1)²; the sqrt is guarded at 0 (a zero gradient row would give a NaN derivative)."""
    return (norm_sq.clamp_min(1e-24).sqrt() - 1.0).pow(2).mean()
