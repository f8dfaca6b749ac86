import json
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from models.load.stylegan2 import build_from_state, load_rosinality_checkpoint
from models.stylegan2 import Discriminator, FusedLeakyReLU, Generator, ToRGB, upfirdn2d

TOL = 1e-4


@pytest.fixture(scope="module")
def small64(stylegan2_fixtures):
    weights = load_rosinality_checkpoint(stylegan2_fixtures / "rosinality_small64.pt")
    io = torch.load(stylegan2_fixtures / "rosinality_small64_io.pt", weights_only=True)
    return weights, io


def max_err(a, b):
    return (a - b).abs().max().item()


def test_small64_architecture_read_from_checkpoint(small64, stylegan2_fixtures):
    weights, _ = small64
    cfg = json.loads((stylegan2_fixtures / "rosinality_small64_config.json").read_text())
    g = weights.generator
    assert g.resolution == cfg["size"] and g.n_latent == cfg["n_latent"] and g.w_dim == cfg["style_dim"]
    assert weights.config["channels"] == {int(k): v for k, v in cfg["channels"].items() if int(k) <= 64}


@torch.no_grad()
def test_parity_every_stored_output(small64):
    weights, io = small64
    g, d = weights.generator, weights.discriminator
    assert max_err(g.mapping(io["z"]), io["w"]) < TOL
    assert max_err(g.broadcast(g.mapping(io["z"])), io["latents_from_z"]) < TOL
    assert max_err(g(io["z"], noise="const"), io["img_from_z"]) < TOL
    assert max_err(g(io["z"], truncation=0.7, noise="const"), io["img_trunc07"]) < TOL
    assert max_err(g.synthesis(io["wplus"], "const"), io["img_from_wplus"]) < TOL
    assert max_err(g.synthesis(g.broadcast(io["w"]), "const"), io["img_from_w"]) < TOL
    assert max_err(d(io["img_from_wplus"]), io["d_logits_of_img_from_wplus"]) < TOL


@pytest.fixture
def small64_copy(stylegan2_fixtures):
    return load_rosinality_checkpoint(stylegan2_fixtures / "rosinality_small64.pt")


@torch.no_grad()
def test_noise_modes(small64_copy):
    g = small64_copy.generator
    for m in g.modules():  # the fixture keeps rosinality's zero-initialised noise strengths: make noise matter
        if type(m).__name__ == "NoiseInjection":
            m.weight.fill_(0.5)
    w = g.broadcast(g.mapping(torch.randn(2, g.w_dim)))
    const_a, const_b = g.synthesis(w, "const"), g.synthesis(w, "const")
    assert torch.equal(const_a, const_b)
    zero = g.synthesis(w, "zero")
    assert not torch.allclose(zero, const_a)  # the fixture's noise weights are perturbed, so noise matters
    gen = torch.Generator().manual_seed(1)
    r1 = g.synthesis(w, g.make_noise("random", 2, generator=gen))
    r2 = g.synthesis(w, g.make_noise("random", 2, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(r1, r2) and not torch.allclose(r1, const_a)
    with pytest.raises(ValueError, match="noise mode"):
        g.make_noise("sometimes", 2)


def test_truncation_moves_towards_mean(small64):
    g = small64[0].generator
    w = g.mapping(torch.randn(3, g.w_dim))
    t = g.truncate(w, 0.5)
    assert torch.allclose(t - g.mean_latent, 0.5 * (w - g.mean_latent), atol=1e-6)
    assert torch.equal(g.truncate(w, 1.0), w)


@pytest.mark.parametrize("size,n_latent", [(256, 14), (1024, 18)])
def test_real_ffhq_shape_maps_load_strictly(stylegan2_fixtures, size, n_latent):
    shapes = json.loads((stylegan2_fixtures / f"rosinality_shapes_{size}.json").read_text())
    g_state = {k: torch.zeros(v) for k, v in shapes["g_ema"].items()}
    d_state = {k: torch.zeros(v) for k, v in shapes["d"].items()}
    weights = build_from_state(g_state, d_state, torch.zeros(512), f"shapes_{size}", expected_resolution=size)
    assert weights.generator.n_latent == n_latent == shapes["n_latent"]
    assert set(weights.generator.state_dict()) == set(shapes["g_ema"])
    assert set(weights.discriminator.state_dict()) == set(shapes["d"])


def test_synthesis_checks_wplus_shape():
    g = Generator(16, w_dim=8, n_mlp=1, channels={4: 4, 8: 4, 16: 4})
    assert g.n_latent == 6
    with pytest.raises(AssertionError, match=r"\[B, 6, 8\]"):
        g.synthesis(torch.zeros(1, 5, 8))


def test_bad_resolution_is_rejected():
    with pytest.raises(ValueError, match="power of two"):
        Generator(48, w_dim=8, channels={4: 4, 8: 4, 16: 4, 32: 4, 64: 4})


def test_upfirdn2d_box_filter_by_hand():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    k = torch.ones(2, 2) / 4
    out = upfirdn2d(x, k, pad=(0, 0))
    # mean of each 2x2 window
    assert torch.allclose(out[0, 0, 0, 0], torch.tensor((0 + 1 + 4 + 5) / 4))
    assert out.shape == (1, 1, 3, 3)
    up = upfirdn2d(torch.ones(1, 1, 2, 2), torch.ones(1, 1), up=2)
    assert torch.equal(up[0, 0], torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]))


def test_discriminator_odd_batch_uses_divisor_group():
    d = Discriminator(16, channels={4: 4, 8: 4, 16: 4})
    assert d(torch.randn(6, 3, 16, 16)).shape == (6, 1)
    assert d(torch.randn(3, 3, 16, 16)).shape == (3, 1)


# ---------------------------------------------------------------------------------------------
# conv_clamp (stylegan2-ada-pytorch's activation clamp); parity with ada is in tests/models/load
# ---------------------------------------------------------------------------------------------

SMALL = {4: 4, 8: 4, 16: 4}


def test_conv_clamp_keeps_rosinality_state_dict_keys():
    # The clamp is a hyperparameter, not a tensor: clamped networks load the same rosinality files.
    for make in (lambda c: Generator(16, w_dim=8, n_mlp=2, channels=SMALL, conv_clamp=c),
                 lambda c: Discriminator(16, channels=SMALL, conv_clamp=c)):
        plain, clamped = make(None), make(256)
        assert {k: v.shape for k, v in plain.state_dict().items()} == \
            {k: v.shape for k, v in clamped.state_dict().items()}
        assert clamped.load_state_dict(plain.state_dict()) is not None


def test_conv_clamp_reaches_every_site_ada_clamps():
    g = Generator(16, w_dim=8, n_mlp=2, channels=SMALL, conv_clamp=256)
    d = Discriminator(16, channels=SMALL, conv_clamp=256)
    styled = [g.conv1, *g.convs]
    assert [c.activate.clamp for c in styled] == [256.0] * 5
    assert [t.clamp for t in (g.to_rgb1, *g.to_rgbs)] == [256.0] * 3
    assert [m.clamp for m in g.style.modules() if isinstance(m, FusedLeakyReLU)] == []  # mapping: never
    d_acts = [m for m in d.modules() if isinstance(m, FusedLeakyReLU)]
    # fromRGB, 2 per residual block, final conv; the final linear layers use fused_leaky_relu unclamped
    assert len(d_acts) == 1 + 2 * 2 + 1 and all(m.clamp == 256.0 for m in d_acts)
    assert all(len(block.skip) == 2 for block in d.convs[1:])  # skip: blur + conv, no activation to clamp
    default = Generator(16, w_dim=8, n_mlp=2, channels=SMALL)
    assert default.conv_clamp is None and all(m.clamp is None for m in default.modules()
                                              if isinstance(m, (FusedLeakyReLU, ToRGB)))


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_conv_clamp_must_be_none_or_non_negative(bad):
    with pytest.raises(ValueError, match="conv_clamp must be None or a number >= 0"):
        Generator(16, w_dim=8, n_mlp=1, channels=SMALL, conv_clamp=bad)
    with pytest.raises(ValueError, match="conv_clamp must be None or a number >= 0"):
        Discriminator(16, channels=SMALL, conv_clamp=bad)


@torch.no_grad()
def test_to_rgb_clamps_its_own_output_before_adding_the_skip():
    torch.manual_seed(0)
    t = ToRGB(4, 8, conv_clamp=0.25)
    t.bias.fill_(10.0)  # every RGB output of this layer is far above the bound
    skip = torch.full((1, 3, 4, 4), 5.0)
    out = t(torch.randn(1, 4, 8, 8), torch.randn(1, 8), skip)
    # upsampled constant skip is 5 away from the borders; the layer adds exactly +0.25 there
    assert torch.allclose(out[..., 2:-2, 2:-2], torch.full_like(out[..., 2:-2, 2:-2], 5.25))


@torch.no_grad()
def test_clamp_comes_after_the_gain():
    act = FusedLeakyReLU(1, clamp=1.0)
    x = torch.tensor([[[[0.9]], [[-10.0]]]]).view(2, 1, 1, 1)
    out = act(x)
    # 0.9 * sqrt(2) = 1.27 is clamped to 1 (a clamp before the gain would give 0.9 * sqrt(2));
    # -10 -> leaky -2 -> * sqrt(2) = -2.83 -> -1
    assert torch.allclose(out.flatten(), torch.tensor([1.0, -1.0]))
    assert torch.allclose(FusedLeakyReLU(1)(x).flatten(), torch.tensor([0.9 * math.sqrt(2), -2 * math.sqrt(2)]))


class _HostTensors(TorchDispatchMode):
    """Records every op that produces a tensor off the `meta` device the networks live on."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += [str(func) for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.device.type != "meta"]
        return out


@torch.no_grad()
@pytest.mark.parametrize("conv_clamp", [None, 256])
def test_forward_creates_no_host_tensors(conv_clamp):
    # CUDA-graph friendliness: every constant is a buffer or a Python number, so nothing in forward
    # builds a tensor on the host (which a graph capture would freeze or a device copy would stall on).
    g = Generator(16, w_dim=8, n_mlp=2, channels=SMALL, conv_clamp=conv_clamp).to("meta")
    d = Discriminator(16, channels=SMALL, conv_clamp=conv_clamp).to("meta")
    z = torch.zeros(2, 8, device="meta")
    with _HostTensors() as seen:
        img = g(z, truncation=0.7)
        d(img)
        for mode in ("random", "zero"):
            d(g.synthesis(g.broadcast(g.mapping(z)), mode))
    assert seen.ops == []
    with _HostTensors() as seen:  # the probe itself works: a host tensor in forward is caught
        _ = img * torch.tensor(2.0)
    assert seen.ops
