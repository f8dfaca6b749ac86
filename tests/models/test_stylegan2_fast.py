"""The StyleGAN2 fast path (models/stylegan2_fast.py) computes the reference function.

On the CPU: each reformulated piece against the reference op (FIR as shifted sums / strided
depthwise conv vs upfirdn2d), whole networks in float32 against the reference fixtures, autograd
(weights included, and R1's double backward), the weight cache, the compiled regions (traced with
the cheap aot_eager backend) and the eager fallback. On a GPU (`gpu`): the bfloat16 default against
float32 at 256 px (the documented tolerance), compiled with Inductor.
"""

import math

import pytest
import torch

from models.load.stylegan2 import load_rosinality_checkpoint
from models.stylegan2 import Discriminator, Generator, make_blur_kernel, upfirdn2d
from models.stylegan2_fast import (SYNTHESIS_BLOCK, FastPath, compile_stats, correlation_taps, depthwise_weight,
                                   fir_conv, fir_sum, zero_insert)

TOL = 1e-4
CPU_FP32 = FastPath(dtype=torch.float32, compile=False, devices=("cpu",))
SMALL = {4: 8, 8: 8, 16: 4}


def small_pair(conv_clamp=None):
    torch.manual_seed(0)
    g = Generator(16, w_dim=8, n_mlp=2, channels=SMALL, conv_clamp=conv_clamp)
    d = Discriminator(16, channels=SMALL, conv_clamp=conv_clamp)
    with torch.no_grad():  # non-zero noise strengths and biases, so every term of the layers matters
        for p_name, p in list(g.named_parameters()) + list(d.named_parameters()):
            if p_name.endswith("noise.weight") or p_name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return g, d


def psnr(a, b):
    return 10 * math.log10(4 / (a.double() - b.double()).pow(2).mean().item())


# ---------------------------------------------------------------------------------------------
# FIR reformulations
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 3, 4)])   # (1, 2, 3, 4): not symmetric, checks the flip
@pytest.mark.parametrize("pad,down", [((1, 1), 1), ((2, 2), 1), ((1, 1), 2), ((2, 1), 1), ((0, 0), 2)])
def test_fir_sum_and_strided_conv_equal_upfirdn2d(taps, pad, down):
    kernel = make_blur_kernel(taps) * 4
    x = torch.randn(2, 3, 11, 10).contiguous(memory_format=torch.channels_last)
    ref = upfirdn2d(x, kernel, pad=pad)[:, :, ::down, ::down]
    by_sum = fir_sum(x, correlation_taps(kernel), pad, down)
    by_conv = fir_conv(x, depthwise_weight(kernel, 3, torch.float32), pad, down)
    assert by_sum.shape == by_conv.shape == ref.shape
    assert (by_sum - ref).abs().max() < 1e-5 and (by_conv - ref).abs().max() < 1e-5


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 3, 4)])
def test_zero_insertion_then_fir_equals_upfirdn2d_upsampling(taps):
    kernel = make_blur_kernel(taps) * 4
    x = torch.randn(2, 3, 5, 6)
    ref = upfirdn2d(x, kernel, up=2, pad=(2, 1))
    up = zero_insert(x, 2)
    assert (fir_sum(up, correlation_taps(kernel), (2, 1)) - ref).abs().max() < 1e-5
    assert (fir_conv(up, depthwise_weight(kernel, 3, torch.float32), (2, 1)) - ref).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------
# Whole networks in float32 = the reference function
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small64(stylegan2_fixtures):
    weights = load_rosinality_checkpoint(stylegan2_fixtures / "rosinality_small64.pt")
    io = torch.load(stylegan2_fixtures / "rosinality_small64_io.pt", weights_only=True)
    return weights, io


@torch.no_grad()
@pytest.mark.parametrize("channels_last", [True, False])
def test_fast_fp32_matches_the_rosinality_fixture(small64, channels_last):
    weights, io = small64
    g, d = weights.generator, weights.discriminator
    fast = FastPath(dtype=torch.float32, compile=False, devices=("cpu",), channels_last=channels_last)
    try:
        g.set_fast_path(fast), d.set_fast_path(fast)
        assert (g(io["z"], noise="const") - io["img_from_z"]).abs().max() < TOL
        assert (g(io["z"], truncation=0.7, noise="const") - io["img_trunc07"]).abs().max() < TOL
        assert (g.synthesis(io["wplus"], "const") - io["img_from_wplus"]).abs().max() < TOL
        assert (d(io["img_from_wplus"]) - io["d_logits_of_img_from_wplus"]).abs().max() < TOL
    finally:
        g.set_fast_path(None), d.set_fast_path(None)


@torch.no_grad()
@pytest.mark.parametrize("name, image_tol", [
    ("nvidia_ada_clamp64", 16 * 2.0 ** -14),  # images of |455|: the fixture's bound (see test_nvidia_pickle.py)
    ("nvidia_ada_clampsmall64", TOL),         # the clamp binds in every conv, images < |10|
])
def test_fast_fp32_matches_the_clamped_ada_fixtures(stylegan2_fixtures, name, image_tol):
    from models.load.nvidia_pickle import read_nvidia_pickle
    weights = read_nvidia_pickle(stylegan2_fixtures / f"{name}.pkl")
    io = torch.load(stylegan2_fixtures / f"{name}_io.pt", weights_only=True)
    g, d = weights.generator, weights.discriminator
    assert g.conv_clamp == 256 and d.conv_clamp == 256
    g.set_fast_path(CPU_FP32), d.set_fast_path(CPU_FP32)
    assert (g.synthesis(io["wplus"], noise="const") - io["img_wplus_const"]).abs().max() < image_tol
    assert (g.synthesis(io["wplus"], noise="zero") - io["img_wplus_nonoise"]).abs().max() < image_tol
    assert (d(io["img_wplus_const"]) - io["d_logits_of_img_wplus"]).abs().max() < TOL


@torch.no_grad()
def test_the_fast_path_runs_only_on_its_devices():
    g, d = small_pair()
    wplus = torch.randn(2, g.n_latent, g.w_dim)
    ref_img, ref_logits = g.synthesis(wplus, "const"), d(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    g.set_fast_path(FastPath()), d.set_fast_path(FastPath())   # default: CUDA only
    assert torch.equal(g.synthesis(wplus, "const"), ref_img)
    assert torch.equal(d(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))), ref_logits)


@pytest.mark.parametrize("noise", ["const", "zero", "random"])
@pytest.mark.parametrize("conv_clamp", [None, 0.5])   # 0.5: the clamp binds in most layers
def test_fast_autograd_matches_reference_weights_included(noise, conv_clamp):
    """What a GAN trainer needs: grads w.r.t. every weight of G and D, and w.r.t. wplus (what T-training needs)."""
    g, d = small_pair(conv_clamp)
    wplus = torch.randn(3, g.n_latent, g.w_dim)
    noise_maps = g.make_noise(noise, 3, generator=torch.Generator().manual_seed(1))

    def grads(fast):
        g.set_fast_path(fast), d.set_fast_path(fast)
        g.zero_grad(), d.zero_grad()
        w = wplus.clone().requires_grad_(True)
        img = g.synthesis(w, noise_maps)
        (d(img).sum() + img.square().mean()).backward()
        return img.detach(), [w.grad] + [p.grad.clone() for p in list(g.parameters()) + list(d.parameters())
                                         if p.grad is not None]

    img_ref, ref = grads(None)
    img_fast, fast = grads(CPU_FP32)
    assert (img_fast - img_ref).abs().max() < TOL
    assert len(fast) == len(ref) > 20
    for a, b in zip(fast, ref):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())


def test_r1_double_backward_through_the_eager_fast_discriminator():
    _, d = small_pair(conv_clamp=None)

    def r1_grads(fast):
        d.set_fast_path(fast)
        d.zero_grad()
        real = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
        (grad,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
        grad.pow(2).sum().backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in d.parameters()]

    fast, ref = r1_grads(CPU_FP32), r1_grads(None)
    assert sum(bool(b.abs().max() > 0) for b in ref) > 10     # R1 reaches the conv weights and biases
    for a, b in zip(fast, ref):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())


@torch.no_grad()
def test_prepared_weights_follow_in_place_updates():
    g, d = small_pair()
    g.requires_grad_(False)   # frozen: the fast path caches its prepared weights
    wplus = torch.randn(2, g.n_latent, g.w_dim)
    g.set_fast_path(CPU_FP32)
    first = g.synthesis(wplus, "const")
    assert torch.equal(first, g.synthesis(wplus, "const"))       # served from the cache: same numbers
    g.convs[0].conv.weight.mul_(1.5)                              # an optimiser-style in-place update
    g.to_rgbs[-1].bias.add_(0.25)
    updated = g.synthesis(wplus, "const")
    g.set_fast_path(None)
    assert (updated - g.synthesis(wplus, "const")).abs().max() < TOL
    assert (updated - first).abs().max() > 1e-2


def test_bfloat16_fast_path_stays_close_to_fp32():
    """The dtype plumbing on the CPU (bf16 convolutions exist there): lowp layers in bf16, the rest fp32."""
    g, d = small_pair()
    wplus = torch.randn(4, g.n_latent, g.w_dim)
    with torch.no_grad():
        ref = g.synthesis(wplus, "const")
        ref_logits = d(ref)
        for lowp in (None, 1):
            fast = FastPath(compile=False, devices=("cpu",), lowp_resolutions=lowp)
            g.set_fast_path(fast), d.set_fast_path(fast)
            img = g.synthesis(wplus, "const")
            assert img.dtype == torch.float32 and psnr(img, ref) > 40
            assert (d(ref) - ref_logits).abs().max() < 0.05 * max(1.0, ref_logits.abs().max().item())
    assert FastPath(lowp_resolutions=2).dtype_at(16, 16) == torch.bfloat16
    assert FastPath(lowp_resolutions=2).dtype_at(8, 16) == torch.bfloat16
    assert FastPath(lowp_resolutions=2).dtype_at(4, 16) == torch.float32


# ---------------------------------------------------------------------------------------------
# Compiled regions (aot_eager: Dynamo + AOTAutograd, without code generation) and the fallback
# ---------------------------------------------------------------------------------------------

def test_compiled_regions_match_eager_and_share_graphs_across_batches():
    torch.manual_seed(0)   # 8 px: one block each, so tracing stays quick on a CPU
    g = Generator(8, w_dim=8, n_mlp=1, channels={4: 8, 8: 4}, conv_clamp=0.5)
    d = Discriminator(8, channels={4: 8, 8: 4}, conv_clamp=0.5)
    compiled = FastPath(dtype=torch.float32, compile=True, backend="aot_eager", devices=("cpu",))
    wplus = torch.randn(3, g.n_latent, g.w_dim, requires_grad=True)

    def run(fast, w):
        g.set_fast_path(fast), d.set_fast_path(fast)
        w = w.detach().clone().requires_grad_(True)
        img = g.synthesis(w, "const")
        d(img).sum().backward()
        return img.detach(), w.grad

    img_e, grad_e = run(CPU_FP32, wplus)
    img_c, grad_c = run(compiled, wplus)
    assert (img_c - img_e).abs().max() < 1e-5 and (grad_c - grad_e).abs().max() < 1e-5
    graphs = compile_stats()["graphs"]
    assert graphs >= 2 and not compile_stats()["failed"]   # (G and D blocks, with grad)
    with torch.no_grad():                                   # another batch size: no new grad-free graph needed
        g.synthesis(torch.randn(5, g.n_latent, g.w_dim), "const")
        graphs_nograd = compile_stats()["graphs"]
        g.synthesis(torch.randn(7, g.n_latent, g.w_dim), "const")
    assert compile_stats()["graphs"] == graphs_nograd


def test_the_backward_copies_no_gradient_at_block_boundaries_nor_into_a_convolutions_layout():
    """Two kinds of layout copy in the fast path's backward, both removed:

    - AOTAutograd copies a gradient that reaches a compiled region in another layout than the output
      it belongs to (`aten::contiguous` under CompiledFunctionBackward; at 1024 px a pass over 268M
      elements per boundary): the next block's gradient of its input x (now handed on in x's NHWC
      layout) and the zeros AOTAutograd made for the last block's unused features (no longer returned);
    - cuDNN copies a conv's output gradient into the layout of the conv's input when the two differ
      (`cudnn_convolution_transpose_backward`: .contiguous(input.suggest_memory_format())): the
      2026-12-06 H200 profile at 1024 px found it at every up-convolution of G ([4, 32, 1029, 1029],
      ...), whose gradient the FIR slices' backward built NCHW. Checked on the backward graphs
      AOTAutograd hands the compiler (their recorded strides; no code generation). Removed on the
      CPU only: on an H100 (2026-12-06) the GPU's backward still made that copy.
    """
    from torch.profiler import ProfilerActivity, profile
    from tests.backward_graphs import recording_convolution_backwards
    convolutions: list = []
    torch.manual_seed(0)   # 16 px: two blocks, so a block boundary and up-convolutions to 8 and to 16 px
    g = Generator(16, w_dim=8, n_mlp=1, channels={4: 8, 8: 8, 16: 4}, conv_clamp=0.5)
    d = Discriminator(16, channels={4: 8, 8: 8, 16: 4}, conv_clamp=0.5)
    fast = FastPath(dtype=torch.float32, compile=True, backend=recording_convolution_backwards(convolutions),
                    devices=("cpu",))
    g.set_fast_path(fast), d.set_fast_path(fast)

    def step():
        w = torch.randn(2, g.n_latent, g.w_dim, requires_grad=True)
        d(g.synthesis(w, "const")).sum().backward()

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    assert any(e.name == "CompiledFunctionBackward" for e in prof.events()), "the regions did not compile"
    copied = [e.input_shapes[0] for e in prof.events() if e.name == "aten::contiguous" and e.cpu_parent is not None
              and e.cpu_parent.name == "CompiledFunctionBackward" and e.cpu_children]   # a clone under it: a copy
    # Left: D's last block, whose gradient comes from the eager 4x4 head (`.float().contiguous()`).
    assert [shape for shape in copied if shape[-1] > 4] == [], copied
    assert copied == [[2, 8, 4, 4]], "the profile no longer sees the copies this test looks for"
    transposed = [row for row in convolutions if row[0]]
    assert len(transposed) == 2 and len(convolutions) > len(transposed), convolutions   # G's up-convs, and the rest
    assert all(grad_nhwc == input_nhwc for _, _, grad_nhwc, input_nhwc in convolutions), convolutions
    assert not compile_stats()["failed"]


def test_gradient_in_layout_of_hands_an_nchw_gradient_on_as_nhwc():
    from models.stylegan2_fast import gradient_in_layout_of
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = gradient_in_layout_of(x)
    assert torch.equal(y, x)
    (y.contiguous() * torch.randn(2, 4, 3, 3)).sum().backward()    # an NCHW gradient comes back
    assert x.grad.is_contiguous(memory_format=torch.channels_last) and not x.grad.is_contiguous()
    plain = torch.randn(2, 4, 3, 3)
    assert gradient_in_layout_of(plain) is plain                    # nothing to do without a gradient
    nchw = torch.randn(2, 4, 3, 3, requires_grad=True)
    assert gradient_in_layout_of(nchw) is nchw                      # nor for an NCHW input


@torch.no_grad()
def test_a_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    g, _ = small_pair()
    monkeypatch.setattr(SYNTHESIS_BLOCK, "failed", set())
    wplus = torch.randn(2, g.n_latent, g.w_dim)
    ref = g.synthesis(wplus, "const")
    g.set_fast_path(FastPath(dtype=torch.float32, compile=True, backend="no-such-backend", devices=("cpu",)))
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        out = g.synthesis(wplus, "const")
    assert (out - ref).abs().max() < TOL
    assert "no-such-backend" in SYNTHESIS_BLOCK.failed


def test_fast_path_rejects_bad_settings():
    with pytest.raises(ValueError, match="dtype"):
        FastPath(dtype=torch.int8)
    with pytest.raises(ValueError, match="lowp_resolutions"):
        FastPath(lowp_resolutions=-1)


# ---------------------------------------------------------------------------------------------
# GPU: the default (bf16, Inductor) against float32 at full size
# ---------------------------------------------------------------------------------------------

PSNR_TOLERANCE_DB = 40.0


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_default_fast_path_within_tolerance_at_256px():
    """64 images at 256 px, random config-f weights, const noise: PSNR >= 40 dB vs strict fp32 (docs/performance.md)."""
    flags = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        g = Generator(256).cuda().eval()
        for m in g.modules():
            if type(m).__name__ == "NoiseInjection":
                m.weight.fill_(0.1)
        z = torch.randn(64, 512, generator=torch.Generator().manual_seed(1)).cuda()
        ref = torch.cat([g(z[i:i + 16], noise="const") for i in range(0, 64, 16)])
        g.set_fast_path(FastPath())
        out = torch.cat([g(z[i:i + 16], noise="const") for i in range(0, 64, 16)])
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        value = psnr(out.clamp(-1, 1), ref.clamp(-1, 1))
        print(f"fast path (bf16, compiled) vs fp32 at 256 px: PSNR {value:.1f} dB; compile {compile_stats()}")
        assert value >= PSNR_TOLERANCE_DB
        assert not compile_stats()["failed"]
    finally:
        torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.gpu
def test_gpu_fp32_fast_path_matches_fixture_and_grads(small64):
    weights, io = small64
    flags = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    g, d = weights.generator.cuda(), weights.discriminator.cuda()
    try:
        fast = FastPath(dtype=torch.float32)
        g.set_fast_path(fast), d.set_fast_path(fast)
        with torch.no_grad():
            assert (g.synthesis(io["wplus"].cuda(), "const").cpu() - io["img_from_wplus"]).abs().max() < TOL
            assert (d(io["img_from_wplus"].cuda()).cpu() - io["d_logits_of_img_from_wplus"]).abs().max() < TOL
        w = io["wplus"].cuda().requires_grad_(True)
        d(g.synthesis(w, "const")).sum().backward()
        fast_grad = w.grad.clone()
        g.set_fast_path(None), d.set_fast_path(None)
        w.grad = None
        d(g.synthesis(w, "const")).sum().backward()
        assert (fast_grad - w.grad).abs().max() <= 1e-4 * max(1.0, w.grad.abs().max().item())
    finally:
        torch.backends.cudnn.allow_tf32 = flags
        g.set_fast_path(None), d.set_fast_path(None)
        weights.generator.cpu(), weights.discriminator.cpu()


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_cuda_graph_replay_equals_eager():
    from pipeline.core.cuda_graphs import GraphedCall
    torch.manual_seed(0)
    g = Generator(64, channels={4: 64, 8: 64, 16: 64, 32: 32, 64: 16}).cuda().eval().set_fast_path(FastPath())
    graphed = GraphedCall(lambda z: (g(z, noise="const"),))
    images, agreement = [], []
    for seed in (1, 2):
        z = torch.randn(8, 512, generator=torch.Generator().manual_seed(seed)).cuda()
        images.append(graphed(z)[0].clone())
        # Not bit-equal in bf16: cuBLAS may pick another algorithm under capture, and a 1-ulp change
        # in an early layer grows through the network (up to 0.03 in 0.8% of the pixels on an H200).
        # So: the fast path's documented tolerance (PSNR >= 40 dB); a stale input or output buffer
        # would give another face (the two seeds' images are compared as that control).
        agreement.append(psnr(images[-1], g(z, noise="const")))
    control = psnr(images[0], images[1])
    print(f"replay vs eager: PSNR {agreement[0]:.1f} / {agreement[1]:.1f} dB; two seeds: {control:.1f} dB")
    assert min(agreement) >= 40
    assert control < min(agreement) - 10, "the replay ignored its new input"
    assert len(graphed.recorded) == 1


@torch.no_grad()
@pytest.mark.parametrize("noise", ["const", "random", "zero"])
def test_activations_stay_channels_last(noise):
    """Every styled layer's output keeps the NHWC layout (no silent NCHW conversions in the fast path)."""
    from models.stylegan2_fast import styled_params, styled_conv
    g, _ = small_pair()
    fast = FastPath(dtype=torch.float32, compile=False, devices=("cpu",))
    maps = g.make_noise(noise, 2)
    x = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    for layer, n in ((g.convs[1], maps[2]), (g.convs[2], maps[3])):   # a 3x3 layer and an upsampling layer
        p, st = styled_params(layer, torch.float32, fast)
        out = styled_conv(x if not st.upsample else x[:, :layer.conv.in_ch], torch.randn(2, g.w_dim), p, n, st)
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fast_forward_creates_no_host_tensors(dtype):
    # CUDA-graph friendliness, as for the reference path (tests/models/test_stylegan2.py): nothing in
    # the fast forward builds a tensor on the host or reads one back (FIR taps are Python floats
    # computed at construction). On the `meta` device any such read raises and any host tensor shows.
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class HostTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += [str(func) for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.device.type != "meta"]
            return out

    g, d = small_pair(conv_clamp=256)
    fast = FastPath(dtype=dtype, compile=False, devices=("meta",))
    g, d = g.to("meta").set_fast_path(fast), d.to("meta").set_fast_path(fast)
    with torch.no_grad(), HostTensors() as seen:
        for mode in ("const", "random", "zero"):
            d(g.synthesis(torch.zeros(2, g.n_latent, g.w_dim, device="meta"), mode))
    assert seen.ops == []


@torch.no_grad()
@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("clamp", [None, 0.3])
def test_fused_styled_layer_equals_the_unfused_reference_layer(upsample, clamp):
    """One layer: modulation, (transposed conv + blur), demodulation, noise, bias, leaky ReLU, gain, clamp
    folded and fused vs the reference StyledConv's separate ops; and one ToRGB with its skip upsampling."""
    from models.stylegan2 import StyledConv, ToRGB
    from models.stylegan2_fast import rgb_params, styled_conv, styled_params, to_rgb
    torch.manual_seed(0)
    layer = StyledConv(6, 5, 3, 8, upsample=upsample, conv_clamp=clamp)
    layer.noise.weight.fill_(0.7)
    layer.activate.bias.uniform_(-1, 1)
    x, style = torch.randn(3, 6, 8, 8), torch.randn(3, 8)
    noise = torch.randn(1, 1, 16 if upsample else 8, 16 if upsample else 8)
    p, st = styled_params(layer, torch.float32, CPU_FP32)
    fast = styled_conv(x.contiguous(memory_format=torch.channels_last), style, p, noise, st)
    assert (fast - layer(x, style, noise)).abs().max() < 1e-5
    rgb = ToRGB(5, 8, conv_clamp=clamp)
    rgb.bias.uniform_(-1, 1)
    skip = torch.randn(3, 3, fast.shape[2] // 2, fast.shape[3] // 2)
    p_rgb, st_rgb = rgb_params(rgb)
    assert (to_rgb(fast, style, p_rgb, skip, st_rgb) - rgb(fast, style, skip)).abs().max() < 1e-5


@pytest.mark.parametrize("pad", [(1, 1), (2, 1), (0, 2)])
def test_upsampling_conv_with_the_border_from_its_input_equals_conv_then_padded_blur(pad):
    from models.stylegan2_fast import upsample_conv_blur_fused
    kernel = make_blur_kernel((1, 2, 3, 4)) * 4
    x, w = torch.randn(2, 5, 6, 7), torch.randn(5, 4, 3, 3)
    ref = upfirdn2d(torch.nn.functional.conv_transpose2d(x, w, stride=2), kernel, pad=pad)
    out = upsample_conv_blur_fused(x, w, correlation_taps(kernel), pad)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5
