"""The StyleGAN2 training objective as pure functions of tensors (no optimiser, no module state).

    loss_d = d_logistic_loss(D(real), D(fake))             # softplus(D(fake)) + softplus(-D(real))
    loss_g = g_nonsaturating_loss(D(fake))                  # softplus(-D(fake))
    r1     = r1_penalty(real, D(real))                      # E ||grad_x D(x)||^2 on reals
    pl, mean, lengths = path_length_penalty(image, wplus, pl_noise, mean, decay)
    wplus  = mix_styles(w1, w2, n_latent, prob, rng)        # style mixing

Shapes: logits [B, 1]; images [B, 3, R, R]; w [B, w_dim]; wplus [B, L, w_dim].
The regularisation weights (gamma / 2, the lazy interval, pl_weight) are applied by the caller
(step.py), so each function here is checkable by hand.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic loss of D: mean softplus(D(fake)) + mean softplus(-D(real))."""
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating loss of G: mean softplus(-D(G(z)))."""
    return F.softplus(-fake_logits.float()).mean()


def r1_penalty(real_images: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """E_x ||grad_x D(x)||^2 over the batch (the R1 loss is gamma / 2 times this).

    real_images must require grad and real_logits be computed from them; the graph is kept
    (create_graph) so the penalty can be back-propagated into D's weights.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def path_length_noise(images: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
    """The random image-space direction y ~ N(0, I) / sqrt(H W) of the path-length regulariser."""
    h, w = images.shape[-2:]
    return torch.randn(images.shape, generator=rng, device=images.device, dtype=torch.float32) / math.sqrt(h * w)


def path_length_penalty(images: torch.Tensor, wplus: torch.Tensor, noise: torch.Tensor, mean_length: torch.Tensor,
                        decay: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """StyleGAN2's path-length penalty.

    lengths_i = sqrt(mean over layers of ||J_i^T y||^2) with J_i^T y = grad_{wplus_i} sum(G(w_i) * y);
    the running mean a moves towards their mean by `decay`; penalty = mean (lengths - a)^2.
    Returns (penalty, new running mean (detached), mean length (detached)). `mean_length` is a 0-d
    tensor (it may live on the GPU: no host sync here).
    """
    (grad,) = torch.autograd.grad((images.float() * noise).sum(), wplus, create_graph=True)
    lengths = grad.float().pow(2).sum(2).mean(1).sqrt()                       # [B]
    new_mean = mean_length + decay * (lengths.detach().mean() - mean_length)
    penalty = (lengths - new_mean).pow(2).mean()
    return penalty, new_mean.detach(), lengths.detach().mean()


def mixing_cutoffs(batch: int, n_latent: int, prob: float, rng: torch.Generator | None = None,
                   device=None) -> torch.Tensor:
    """Per-sample layer where styles switch from w1 to w2: uniform in 1..L-1 with probability `prob`,
    else L (no switch). [B] int64, drawn on `device` without a host sync."""
    cut = torch.randint(1, max(n_latent, 2), (batch,), generator=rng, device=device)
    mix = torch.rand(batch, generator=rng, device=device) < prob
    return torch.where(mix & (n_latent > 1), cut, torch.full_like(cut, n_latent))


def mix_styles(w1: torch.Tensor, w2: torch.Tensor, cutoffs: torch.Tensor, n_latent: int) -> torch.Tensor:
    """w1, w2 [B, w_dim], cutoffs [B] -> wplus [B, L, w_dim]: layers < cutoff take w1, the rest w2."""
    assert w1.shape == w2.shape and w1.ndim == 2, f"w1 / w2 must be [B, w_dim], got {list(w1.shape)}, {list(w2.shape)}"
    layers = torch.arange(n_latent, device=w1.device)
    first = (layers[None, :] < cutoffs[:, None])[..., None]                  # [B, L, 1]
    return torch.where(first, w1[:, None, :], w2[:, None, :])


def lazy_regularisation(lr: float, betas: tuple[float, float], every: int) -> tuple[float, tuple[float, float]]:
    """Adam settings of a network regularised every `every` steps (StyleGAN2, Appendix B):
    c = every / (every + 1); lr * c and betas ** c, so the regularised optimiser tracks the unregularised
    one per image shown."""
    c = every / (every + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)


def ema_beta(batch_images: int, cur_images: float, half_life_kimg: float, rampup: float) -> float:
    """Per-step decay of G_ema: 0.5 ** (images per step / half-life in images), the half-life ramped
    up as min(half_life, rampup * images seen) when rampup > 0 (ada). 0 for half_life 0 (G_ema = G)."""
    half_life = half_life_kimg * 1000.0
    if rampup > 0:
        half_life = min(half_life, cur_images * rampup)
    if half_life <= 0:
        return 0.0
    return 0.5 ** (batch_images / half_life)
