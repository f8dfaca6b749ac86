import math

import pytest
import torch

from models.editing import DirectionMatrix
from models.losses import (EditObjective, LossWeights, adversarial_loss, flat_in_memory_order, group_point_index,
                           landmark_loss, memory_order, perceptual_loss, regressor_loss)


def test_regressor_loss_by_hand():
    probs_edit = torch.tensor([[0.8, 0.5]])
    probs_orig = torch.tensor([[0.3, 0.9]])
    s = torch.tensor([[1.0, 0.0]])  # target = clamp([1.3, 0.9]) = [1, 0.9]
    expected = (-math.log(0.8) + -(0.9 * math.log(0.5) + 0.1 * math.log(0.5))) / 2
    assert regressor_loss(probs_edit, probs_orig, s).item() == pytest.approx(expected, rel=1e-6)


def test_perceptual_loss_is_mean_of_layer_mse():
    a = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 1, 1)]
    b = [torch.ones(1, 2, 2, 2), torch.full((1, 1, 1, 1), 3.0)]
    assert perceptual_loss(a, b).item() == pytest.approx((1.0 + 9.0) / 2)


NHWC = torch.channels_last


@pytest.mark.parametrize("layout_x, layout_edit", [("NCHW", "NHWC"), ("NHWC", "NCHW"), ("NHWC", "NHWC"),
                                                   ("NCHW", "NCHW")])
def test_perceptual_loss_ignores_memory_layout_and_keeps_float32_accumulation(layout_x, layout_edit):
    """F(x) and F(x') in either layout (what compiled and eager networks can return): the value and the
    gradient of the float32 MSE, the gradient in F(x')'s own layout; bf16 features give a float32 loss
    within bf16 rounding of it."""
    gen = torch.Generator().manual_seed(0)

    def laid_out(t, layout):
        return t.contiguous(memory_format=NHWC) if layout == "NHWC" else t

    a = [laid_out(torch.randn(2, 8, 6, 6, generator=gen), layout_x), torch.randn(2, 4, 3, 3, generator=gen)]
    b = [laid_out(torch.randn(2, 8, 6, 6, generator=gen), layout_edit).requires_grad_(True),
         torch.randn(2, 4, 3, 3, generator=gen).requires_grad_(True)]
    want = torch.stack([torch.nn.functional.mse_loss(y, x) for x, y in zip(a, b)]).mean()
    want_grads = torch.autograd.grad(want, b)
    got = perceptual_loss(a, b)
    got_grads = torch.autograd.grad(got, b)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-8)
    assert got_grads[0].stride() == b[0].stride()
    low = perceptual_loss([x.bfloat16() for x in a], [y.detach().bfloat16() for y in b])
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(want.item(), rel=2e-2)


def test_an_nhwc_map_is_compared_through_a_view_without_a_copy():
    """The 1-D views the perceptual loss compares: no copy of a map already in the memory order."""
    nhwc = torch.randn(2, 8, 5, 7).contiguous(memory_format=NHWC)
    order = memory_order(nhwc)
    assert order == (0, 2, 3, 1)
    flat = flat_in_memory_order(nhwc, order)
    assert flat.data_ptr() == nhwc.data_ptr() and flat.shape == (2 * 8 * 5 * 7,)
    nchw = nhwc.contiguous()
    assert memory_order(nchw) == (0, 1, 2, 3) and flat_in_memory_order(nchw, (0, 1, 2, 3)).data_ptr() == nchw.data_ptr()
    torch.testing.assert_close(flat_in_memory_order(nchw, order), flat)     # a copy into the same order


def test_adversarial_loss_by_hand():
    logits = torch.tensor([[0.0], [2.0]])
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert adversarial_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_landmark_loss_and_subset_masking():
    a = torch.zeros(1, 4, 2)
    b = torch.tensor([[[0.1, 0.1], [0.0, 0.2], [0.5, 0.5], [0.0, 0.0]]])
    assert landmark_loss(a, b).item() == pytest.approx((0.2 + 0.2 + 1.0) / 8)
    groups = {"jaw": [0, 1], "mouth": [2], "nose": [3]}
    idx = group_point_index(groups, ["jaw", "nose"])
    assert idx.tolist() == [0, 1, 3]
    assert landmark_loss(a, b, idx).item() == pytest.approx((0.2 + 0.2) / 6)
    assert group_point_index(groups, []).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown landmark group"):
        group_point_index(groups, ["ears"])


def make_objective(bundle, weights=LossWeights()):
    return EditObjective(bundle.generator, bundle.regressor, bundle.landmarks, bundle.perceptual,
                         bundle.discriminator, ("Male", "Young"), ("jaw", "mouth"), weights)


def test_gradient_reaches_only_T(tiny_bundle):
    obj = make_objective(tiny_bundle)
    g = tiny_bundle.generator
    d = DirectionMatrix(g.n_latent, g.w_dim, 2)
    wplus = g.broadcast(g.mapping(torch.randn(4, g.w_dim)))
    noise = g.make_noise("random", 4, generator=torch.Generator().manual_seed(0))
    orig = obj.original(wplus, noise)
    terms = obj(d, wplus, torch.rand(4, 2) * 2 - 1, noise, orig)
    terms["total"].backward()
    assert d.T.grad is not None and d.T.grad.abs().sum() > 0
    for name, net in obj.networks().items():
        assert all(p.grad is None and not p.requires_grad for p in net.parameters()), name
    assert set(terms) == {"regressor", "perceptual", "adversarial", "landmark", "total"}


def test_same_noise_for_x_and_x_prime(tiny_bundle):
    obj = make_objective(tiny_bundle)
    g = tiny_bundle.generator
    d = DirectionMatrix(g.n_latent, g.w_dim, 2)
    with torch.no_grad():
        d.T.zero_()
    wplus = g.broadcast(g.mapping(torch.randn(2, g.w_dim)))
    noise = g.make_noise("random", 2, generator=torch.Generator().manual_seed(3))
    orig = obj.original(wplus, noise)
    terms = obj(d, wplus, torch.zeros(2, 2), noise, orig)
    # With T = 0 the edit is the identity: identical images, so zero landmark/perceptual terms.
    assert terms["landmark"].item() == 0 and terms["perceptual"].item() == 0


def test_total_is_weighted_sum(tiny_bundle):
    w = LossWeights(regressor=2, perceptual=3, adversarial=5, landmark=7)
    obj = make_objective(tiny_bundle, w)
    g = tiny_bundle.generator
    d = DirectionMatrix(g.n_latent, g.w_dim, 2)
    wplus = g.broadcast(g.mapping(torch.randn(2, g.w_dim)))
    t = obj(d, wplus, torch.ones(2, 2), "const", obj.original(wplus, "const"))
    expected = 2 * t["regressor"] + 3 * t["perceptual"] + 5 * t["adversarial"] + 7 * t["landmark"]
    assert torch.allclose(t["total"], expected)


def test_objective_validates_inputs(tiny_bundle):
    b = tiny_bundle
    with pytest.raises(ValueError, match="unknown attribute"):
        EditObjective(b.generator, b.regressor, b.landmarks, b.perceptual, b.discriminator, ("Bald",))
    with pytest.raises(ValueError, match="adversarial must be 0"):
        EditObjective(b.generator, b.regressor, b.landmarks, b.perceptual, None, ("Male",))


def test_regressor_loss_gradient_is_finite_at_exact_0_and_1():
    # clamp-style regressors output exactly 0 or 1; the gradient must stay finite there
    probs = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
    loss = regressor_loss(probs, torch.tensor([[0.2, 0.9, 0.5]]), torch.zeros(1, 3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(probs.grad).all()


def test_regressor_loss_is_nan_for_nan_predictions():
    loss = regressor_loss(torch.tensor([[float("nan"), 0.5]]), torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2))
    assert torch.isnan(loss)


@pytest.mark.parametrize("layouts", [(NHWC, NHWC), (NHWC, torch.contiguous_format), (torch.contiguous_format, NHWC),
                                     (torch.contiguous_format, torch.contiguous_format)])
def test_mean_square_per_sample_equals_the_flattened_mean_in_value_and_gradient(layouts):
    from models.losses import mean_square_per_sample
    g = torch.Generator().manual_seed(3)
    a0, b0 = torch.randn(3, 5, 4, 6, generator=g), torch.randn(3, 5, 4, 6, generator=g)
    a = a0.clone().contiguous(memory_format=layouts[0]).requires_grad_(True)
    b = b0.clone().contiguous(memory_format=layouts[1]).requires_grad_(True)
    out = mean_square_per_sample(a, b)
    a_ref, b_ref = a0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    ref = (b_ref - a_ref).square().flatten(1).mean(1)
    torch.testing.assert_close(out, ref)
    weights = torch.tensor([1.0, -2.0, 0.5])
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad)
    torch.testing.assert_close(b.grad, b_ref.grad)
    assert out.shape == (3,) and out.dtype == torch.float32
