"""The StyleGAN2 objective on hand-checkable cases (pipeline/stages/gan/objective.py)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.stages.gan.objective import (d_logistic_loss, ema_beta, g_nonsaturating_loss, lazy_regularisation,
                                           mix_styles, mixing_cutoffs, path_length_penalty, r1_penalty)


def test_logistic_losses_at_zero_and_at_confident_logits():
    zero = torch.zeros(5, 1)
    assert d_logistic_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert g_nonsaturating_loss(zero).item() == pytest.approx(math.log(2))
    # D sure and right: real +20, fake -20 -> ~0; G fooled nobody -> ~20.
    assert d_logistic_loss(torch.full((3, 1), 20.0), torch.full((3, 1), -20.0)).item() < 1e-8
    assert g_nonsaturating_loss(torch.full((3, 1), -20.0)).item() == pytest.approx(20.0, abs=1e-6)


def test_r1_of_a_linear_discriminator_is_the_squared_norm_of_its_weights():
    a = torch.randn(3, 4, 4)
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    logits = (x * a).flatten(1).sum(1, keepdim=True)          # D(x) = <a, x>: grad_x D = a for every sample
    assert r1_penalty(x, logits).item() == pytest.approx(a.pow(2).sum().item(), rel=1e-6)


def test_r1_of_a_quadratic_discriminator_is_the_mean_squared_norm_of_the_images():
    x = torch.randn(5, 3, 2, 2, requires_grad=True)
    logits = 0.5 * x.pow(2).flatten(1).sum(1, keepdim=True)  # grad_x D = x
    expected = x.detach().pow(2).flatten(1).sum(1).mean().item()
    penalty = r1_penalty(x, logits)
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    penalty.backward()                                       # the graph is kept: it trains D
    assert x.grad is not None


def test_path_length_of_a_linear_generator():
    torch.manual_seed(0)
    b, L, w_dim = 4, 3, 5
    M = torch.randn(w_dim, 12)
    wplus = torch.randn(b, L, w_dim, requires_grad=True)
    images = (wplus.sum(1) @ M).view(b, 3, 2, 2)               # d images / d wplus_l = M for every layer l
    y = torch.randn(b, 3, 2, 2)
    penalty, new_mean, mean_length = path_length_penalty(images, wplus, y, torch.tensor(0.0), decay=1.0)
    lengths = (y.flatten(1) @ M.T).norm(dim=1)                 # ||M y_b||, the same in every layer
    assert mean_length.item() == pytest.approx(lengths.mean().item(), rel=1e-5)
    assert new_mean.item() == pytest.approx(lengths.mean().item(), rel=1e-5)   # decay 1: jumps to the mean
    assert penalty.item() == pytest.approx(lengths.var(unbiased=False).item(), rel=1e-4)
    _, moved, _ = path_length_penalty(images, wplus, y, torch.tensor(1.0), decay=0.01)
    assert moved.item() == pytest.approx(1.0 + 0.01 * (lengths.mean().item() - 1.0), rel=1e-6)


def test_lazy_regularisation_corrects_lr_and_betas_by_every_over_every_plus_one():
    lr, betas = lazy_regularisation(0.0025, (0.0, 0.99), 16)
    c = 16 / 17
    assert lr == pytest.approx(0.0025 * c)
    assert betas == (pytest.approx(0.0), pytest.approx(0.99 ** c))


def test_ema_beta_half_life_and_ramp():
    assert ema_beta(64, 1e9, 10.0, 0.0) == pytest.approx(0.5 ** (64 / 10_000))
    # ramp: half-life min(10 kimg, 0.05 * 1000 images) = 50 images
    assert ema_beta(64, 1000, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 50))
    assert ema_beta(64, 1e9, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 10_000))
    assert ema_beta(64, 1e9, 0.0, 0.0) == 0.0
    # After 10 kimg of steps at the full half-life, the old weights have weight 1/2.
    assert ema_beta(100, 1e9, 10.0, 0.0) ** 100 == pytest.approx(0.5)


def test_style_mixing_switches_at_the_cutoff():
    w1, w2 = torch.zeros(3, 2), torch.ones(3, 2)
    wplus = mix_styles(w1, w2, torch.tensor([1, 3, 4]), n_latent=4)
    assert wplus.shape == (3, 4, 2)
    assert wplus[:, :, 0].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]


def test_mixing_cutoffs_follow_the_probability():
    g = torch.Generator().manual_seed(0)
    never = mixing_cutoffs(1000, 10, 0.0, g)
    always = mixing_cutoffs(1000, 10, 1.0, g)
    assert (never == 10).all()
    assert ((always >= 1) & (always <= 9)).all() and len(set(always.tolist())) == 9
    share = (mixing_cutoffs(20_000, 10, 0.9, g) < 10).float().mean().item()
    assert share == pytest.approx(0.9, abs=0.01)
