"""StyleGAN2 generator and discriminator in plain PyTorch.

The module tree and parameter names follow rosinality/stylegan2-pytorch exactly, so the published
FFHQ checkpoints (256 px: 14 latent layers, 1024 px: 18) load with strict key and shape matching.
No compiled CUDA extension is needed: the fused bias-act and upfirdn2d ops are written with
ordinary torch ops (pad + depthwise conv), which autograd differentiates for free.

`conv_clamp` (Generator and Discriminator argument, None by default) reproduces the activation clamp
of NVlabs/stylegan2-ada-pytorch, whose training script sets it to 256 for every network it trains:
with None the modules are exactly rosinality's; with a number c, every layer that ada clamps is
clamped to [-c, c] at the same point of the computation (see `fused_leaky_relu`, `ToRGB`, `ResBlock`).
The clamp is a Python float, not a tensor, so forward creates no tensors on the host (CUDA graphs and
torch.compile see a constant).

Shapes used throughout:
    z      [B, w_dim]            latent code fed to the mapping network
    w      [B, w_dim]            one style vector
    wplus  [B, L, w_dim]         one style vector per latent layer (L = n_latent)
    image  [B, 3, R, R]          RGB, nominally in [-1, 1]
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.stylegan2_fast import (FastPath, clear_fast_cache, correlation_taps, discriminator_forward,
                                   generator_synthesis)

NoiseMode = Literal["const", "random", "zero"]

# rosinality's table for channel_multiplier = 2 (config-f); tests pass smaller tables.
def default_channels(channel_multiplier: int = 2) -> dict[int, int]:
    return {
        4: 512, 8: 512, 16: 512, 32: 512,
        64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
        256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier,
    }


# ---------------------------------------------------------------------------------------------
# Elementary ops
# ---------------------------------------------------------------------------------------------

def _check_clamp(clamp: float | None) -> float | None:
    """None (no clamp) or a non-negative number, as a Python float (never a tensor: see the module doc)."""
    if clamp is None:
        return None
    clamp = float(clamp)
    if not clamp >= 0:  # also rejects NaN
        raise ValueError(f"conv_clamp must be None or a number >= 0, got {clamp!r}")
    return clamp


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, slope: float = 0.2, gain: float = math.sqrt(2),
                     clamp: float | None = None) -> torch.Tensor:
    """Bias add on dim 1, leaky ReLU, then the sqrt(2) gain that keeps activations unit-variance.

    x [B, C, ...], bias [C]. `clamp` (None = off) then limits the result to [-clamp, clamp], after the
    gain, which is the order of ada's bias_act (bias, activation, gain, clamp). ada clamps to keep its
    float16 layers from overflowing, but applies the same clamp in float32, so a network trained
    with it computes a different function without it whenever an activation exceeds the bound.
    """
    shape = (1, bias.shape[0]) + (1,) * (x.ndim - 2)
    out = F.leaky_relu(x + bias.view(shape), negative_slope=slope) * gain
    if clamp is not None:
        out = out.clamp(-clamp, clamp)
    return out


def make_blur_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable FIR taps -> normalised 2-D kernel [k, k] (sums to 1)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative pads crop), FIR-filter, downsample.

    x [B, C, H, W], kernel [k, k]; pad = (before, after) on both spatial axes.
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    # upfirdn2d is a true convolution: flip the kernel for conv2d's cross-correlation.
    weight = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


class Blur(nn.Module):
    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        kernel = make_blur_kernel(taps)
        if upsample_factor > 1:
            kernel = kernel * upsample_factor ** 2
        self.register_buffer("kernel", kernel)
        self.pad = pad
        self.fir_taps = correlation_taps(kernel)  # the same, as Python floats, for the fast path

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling used on the RGB skip path."""

    def __init__(self, taps: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_blur_kernel(taps) * factor ** 2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.fir_taps = correlation_taps(self.kernel)  # the same, as Python floats, for the fast path

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights scaled at run time, not at init)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU + sqrt(2) gain (+ optional clamp); x [B, C, ...] -> same shape.

    The clamp is a plain attribute, not a buffer: state dicts keep rosinality's keys exactly.
    """

    def __init__(self, channels: int, clamp: float | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = _check_clamp(clamp)

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, clamp=self.clamp)

    def extra_repr(self) -> str:
        return f"channels={self.bias.shape[0]}" + ("" if self.clamp is None else f", clamp={self.clamp:g}")


# ---------------------------------------------------------------------------------------------
# Generator blocks
# ---------------------------------------------------------------------------------------------

class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with optional demodulation and 2x upsampling.

    x [B, Cin, H, W], style [B, w_dim] -> [B, Cout, H', W'] (H' = 2H when upsampling).
    Computed as scale-input -> shared-weight convolution -> scale-output, which equals convolving
    each sample with its own modulated (and demodulated) weights, as the reference does with a
    grouped convolution, but runs as one ordinary batched convolution (much faster on GPUs).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, w_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_taps: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.padding = kernel_size // 2
        if upsample:
            factor = 2
            p = (len(blur_taps) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_taps, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)

    def forward(self, x, style):
        b, c, h, w = x.shape
        s = self.modulation(style)                           # [B, Cin]
        weight = self.scale * self.weight[0]                 # [Cout, Cin, k, k]
        x = x * s.view(b, c, 1, 1).to(x.dtype)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), padding=0, stride=2))
        else:
            out = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # |W * s|^2 summed over (Cin, k, k) for each output channel: [B, Cout]
            demod = torch.rsqrt(s.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t() + 1e-8)
            out = out * demod.view(b, self.out_ch, 1, 1).to(out.dtype)
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise: torch.Tensor | None):
        if noise is None:  # "zero" noise mode: skip the add entirely
            return x
        return x + self.weight * noise


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias + leaky ReLU (+ clamp): ada's SynthesisLayer.

    x [B, Cin, H, W], style [B, w_dim], noise [1 or B, 1, H', W'] or None -> [B, Cout, H', W'].
    ada clamps this layer's output at conv_clamp * gain, where gain is the extra gain its block
    passes in: 1 in the 'skip' generator that rosinality's layout is, so the bound is conv_clamp.
    """

    def __init__(self, in_ch, out_ch, kernel_size, w_dim, upsample=False, blur_taps=(1, 3, 3, 1),
                 conv_clamp: float | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, w_dim, upsample=upsample, blur_taps=blur_taps)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch, clamp=conv_clamp)

    def forward(self, x, style, noise):
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB plus bias, added to the upsampled image so far.

    x [B, Cin, H, W], style [B, w_dim], skip [B, 3, H/2, W/2] or None -> image [B, 3, H, W].
    With `conv_clamp`, this layer's own RGB output (conv + bias) is clamped before the skip is added,
    as ada's ToRGBLayer does (bias_act with clamp=conv_clamp, no gain); the running sum is not clamped.
    """

    def __init__(self, in_ch, w_dim, upsample=True, blur_taps=(1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_taps)
        self.conv = ModulatedConv2d(in_ch, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.clamp = _check_clamp(conv_clamp)

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if self.clamp is not None:
            out = out.clamp(-self.clamp, self.clamp)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int):
        return self.input.repeat(batch, 1, 1, 1)


def _check_resolution(resolution: int) -> int:
    log_size = int(math.log2(resolution)) if resolution > 0 else 0
    if resolution < 8 or 2 ** log_size != resolution:
        raise ValueError(f"StyleGAN2 resolution must be a power of two >= 8, got {resolution}")
    return log_size


class Generator(nn.Module):
    """StyleGAN2 generator (rosinality layout).

    Args:
        resolution: output size R (power of two).
        w_dim: style dimension (512 for FFHQ).
        n_mlp: mapping-network depth (8 for FFHQ; loaders pass whatever depth the checkpoint has).
        channels: per-resolution channel table {4: c4, 8: c8, ...}; defaults to config-f.
        lr_mlp: learning-rate multiplier of the mapping network (0.01).
        conv_clamp: None (rosinality: no clamp) or ada's conv_clamp (256 in every network
            stylegan2-ada-pytorch trains): every styled conv's activation and every ToRGB output is
            clamped to [-conv_clamp, conv_clamp], where ada clamps them.

    Precision: ada runs its `num_fp16_res` highest-resolution blocks in float16 (the clamp is there
    to keep them from overflowing). This module computes every layer in the dtype it is given:
    float32, or bfloat16 under autocast, which reproduces ada's `force_fp32=True` outputs (the clamp
    included), not its float16 rounding. The loaders record num_fp16_res in the config only as
    provenance.

    Fast path: `set_fast_path(FastPath(...))` makes `synthesis` run models.stylegan2_fast on the
    FastPath's devices (CUDA by default): same parameters and function, bfloat16 channels_last
    activations, fused elementwise work, compiled per block. None (the default) = this reference code.
    """

    def __init__(self, resolution: int, w_dim: int = 512, n_mlp: int = 8,
                 channels: dict[int, int] | None = None, channel_multiplier: int = 2,
                 lr_mlp: float = 0.01, blur_taps: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = None):
        super().__init__()
        log_size = _check_resolution(resolution)
        self.resolution, self.w_dim, self.z_dim = resolution, w_dim, w_dim
        self.conv_clamp = conv_clamp = _check_clamp(conv_clamp)
        self.channels = {int(k): int(v) for k, v in (channels or default_channels(channel_multiplier)).items()}
        ch = self.channels
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(w_dim, w_dim, lr_mul=lr_mlp, activation=True)
                                                   for _ in range(n_mlp)])
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, w_dim, blur_taps=blur_taps, conv_clamp=conv_clamp)
        self.to_rgb1 = ToRGB(ch[4], w_dim, upsample=False, conv_clamp=conv_clamp)
        self.num_layers = (log_size - 2) * 2 + 1  # number of noise inputs
        self.n_latent = log_size * 2 - 2
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = (i + 5) // 2
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, 2 ** res, 2 ** res))
        in_ch = ch[4]
        for i in range(3, log_size + 1):
            out_ch = ch[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, w_dim, upsample=True, blur_taps=blur_taps,
                                         conv_clamp=conv_clamp))
            self.convs.append(StyledConv(out_ch, out_ch, 3, w_dim, blur_taps=blur_taps, conv_clamp=conv_clamp))
            self.to_rgbs.append(ToRGB(out_ch, w_dim, blur_taps=blur_taps, conv_clamp=conv_clamp))
            in_ch = out_ch
        # Average w; loaders overwrite it with the checkpoint's latent_avg when there is one.
        self.register_buffer("w_avg", torch.zeros(w_dim), persistent=False)
        self.fast_path: FastPath | None = None

    def set_fast_path(self, fast: FastPath | None) -> "Generator":
        """Run `synthesis` on the fast path (models.stylegan2_fast) where `fast` applies; None = reference."""
        self.fast_path = fast
        clear_fast_cache(self)
        return self

    # -- contract of docs/architecture.md ("Contracts") ----------------------------------------------
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, w_dim] -> w [B, w_dim]."""
        assert z.ndim == 2 and z.shape[1] == self.w_dim, f"z must be [B, {self.w_dim}], got {list(z.shape)}"
        return self.style(z)

    @property
    def mean_latent(self) -> torch.Tensor:
        """Average w [w_dim] (the checkpoint's latent_avg), the centre for truncation."""
        return self.w_avg

    @torch.no_grad()
    def estimate_mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> torch.Tensor:
        """Monte-Carlo estimate of mean w, for checkpoints that do not store one."""
        z = torch.randn(n, self.w_dim, generator=generator, device=self.w_avg.device)
        self.w_avg.copy_(self.mapping(z).mean(0))
        return self.w_avg

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """Pull w (any shape [..., w_dim]) towards mean_latent: w_avg + psi (w - w_avg)."""
        if psi == 1:
            return w
        return self.w_avg + psi * (w - self.w_avg)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """w [B, w_dim] -> wplus [B, L, w_dim] (same style in every layer)."""
        return w[:, None, :].expand(-1, self.n_latent, -1)

    def make_noise(self, mode: NoiseMode, batch: int, generator: torch.Generator | None = None,
                   device=None) -> list[torch.Tensor | None]:
        """Noise inputs for synthesis: one [1 or B, 1, r, r] tensor (or None = zero) per noise layer."""
        stored = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if mode == "const":
            return stored
        if mode == "zero":
            return [None] * self.num_layers
        if mode == "random":
            device = device or stored[0].device
            return [torch.randn(batch, 1, n.shape[2], n.shape[3], generator=generator, device=device)
                    for n in stored]
        raise ValueError(f"noise mode must be one of const, random, zero; got {mode!r}")

    def synthesis(self, wplus: torch.Tensor, noise: NoiseMode | list | None = "const",
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """wplus [B, L, w_dim] -> image [B, 3, R, R].

        `noise` is a mode ("const": the stored buffers, "zero", "random") or an explicit list from
        `make_noise`; pass the same list for x and x' so both see the same noise.
        """
        assert wplus.ndim == 3 and wplus.shape[1:] == (self.n_latent, self.w_dim), (
            f"wplus must be [B, {self.n_latent}, {self.w_dim}], got {list(wplus.shape)}")
        b = wplus.shape[0]
        if noise is None or isinstance(noise, str):
            noise = self.make_noise(noise or "zero", b, generator=generator, device=wplus.device)
        if self.fast_path is not None and self.fast_path.applies_to(wplus):
            return generator_synthesis(self, wplus, noise, self.fast_path)
        out = self.input(b)
        out = self.conv1(out, wplus[:, 0], noise[0])
        skip = self.to_rgb1(out, wplus[:, 1])
        i = 1
        for up_conv, conv, to_rgb, n_up, n in zip(self.convs[::2], self.convs[1::2], self.to_rgbs,
                                                   noise[1::2], noise[2::2]):
            out = up_conv(out, wplus[:, i], n_up)
            out = conv(out, wplus[:, i + 1], n)
            skip = to_rgb(out, wplus[:, i + 2], skip)
            i += 2
        return skip

    def forward(self, z: torch.Tensor, truncation: float = 1.0, noise: NoiseMode | list = "const"):
        """z [B, w_dim] -> image [B, 3, R, R] (mapping, truncation, broadcast, synthesis)."""
        return self.synthesis(self.broadcast(self.truncate(self.mapping(z), truncation)), noise)


# ---------------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------------

class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [FusedLeakyReLU (+ clamp)]; indices match rosinality's Sequential.

    x [B, Cin, H, W] -> [B, Cout, H', W'] (H' = H/2 when downsampling). `clamp` bounds the activated
    output and needs `activate` (ada never clamps its linear layers).
    """

    def __init__(self, in_ch, out_ch, kernel_size, downsample=False, blur_taps=(1, 3, 3, 1), bias=True,
                 activate=True, clamp: float | None = None):
        if clamp is not None and not activate:
            raise ValueError("ConvLayer: a clamp needs activate=True (ada clamps only activated layers)")
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_taps) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_taps, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch, clamp=clamp))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual downsampling block: x [B, Cin, H, W] -> [B, Cout, H/2, W/2].

    Clamp placement (ada's DiscriminatorBlock, 'resnet'): conv0 (our conv1) clamps at conv_clamp;
    conv1 (our conv2) runs with gain sqrt(0.5), so ada clamps sqrt(0.5) * act at conv_clamp * sqrt(0.5),
    which is sqrt(0.5) * clamp(act, conv_clamp): here conv2 clamps at conv_clamp and the sum is divided
    by sqrt(2) afterwards. The skip conv is linear and never clamped.
    """

    def __init__(self, in_ch, out_ch, blur_taps=(1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3, clamp=conv_clamp)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_taps=blur_taps, clamp=conv_clamp)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, blur_taps=blur_taps, bias=False, activate=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator (rosinality layout): image [B, 3, R, R] -> logits [B, 1].

    conv_clamp: None (rosinality) or ada's conv_clamp: the fromRGB layer, both convs of every residual
    block (see ResBlock for the scaled one) and the final 3x3 conv are clamped, as in ada; the skip
    convs and the two final linear layers are not. ada's num_fp16_res blocks are computed in the
    input's dtype here (see Generator).
    """

    def __init__(self, resolution: int, channels: dict[int, int] | None = None, channel_multiplier: int = 2,
                 blur_taps: Sequence[float] = (1, 3, 3, 1), stddev_group: int = 4,
                 conv_clamp: float | None = None):
        super().__init__()
        log_size = _check_resolution(resolution)
        self.resolution = resolution
        self.conv_clamp = conv_clamp = _check_clamp(conv_clamp)
        ch = {int(k): int(v) for k, v in (channels or default_channels(channel_multiplier)).items()}
        convs: list[nn.Module] = [ConvLayer(3, ch[resolution], 1, clamp=conv_clamp)]
        in_ch = ch[resolution]
        for i in range(log_size, 2, -1):
            out_ch = ch[2 ** (i - 1)]
            convs.append(ResBlock(in_ch, out_ch, blur_taps, conv_clamp=conv_clamp))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.stddev_group = stddev_group
        self.final_conv = ConvLayer(in_ch + 1, ch[4], 3, clamp=conv_clamp)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 16, ch[4], activation=True), EqualLinear(ch[4], 1))
        self.fast_path: FastPath | None = None

    def set_fast_path(self, fast: FastPath | None) -> "Discriminator":
        """Run `forward` on the fast path where `fast` applies; None = reference. R1 (double backward)
        needs FastPath(compile=False): torch.compile does not differentiate twice."""
        self.fast_path = fast
        clear_fast_cache(self)
        return self

    def minibatch_stddev(self, x):
        """Append the std over groups of samples as one extra channel (rosinality's grouping).

        rosinality uses group = min(B, 4) and fails when B is not a multiple; we take the
        largest divisor of B that is <= stddev_group, which is identical whenever rosinality works.
        """
        b, c, h, w = x.shape
        group = max(g for g in range(1, min(b, self.stddev_group) + 1) if b % g == 0)
        y = x.view(group, -1, 1, c, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean(dim=(2, 3, 4), keepdim=True).squeeze(2)
        return torch.cat([x, y.repeat(group, 1, h, w)], dim=1)

    def forward(self, image):
        assert image.ndim == 4 and image.shape[1:] == (3, self.resolution, self.resolution), (
            f"discriminator expects [B, 3, {self.resolution}, {self.resolution}], got {list(image.shape)}")
        if self.fast_path is not None and self.fast_path.applies_to(image):
            return discriminator_forward(self, image, self.fast_path)
        out = self.final_conv(self.minibatch_stddev(self.convs(image)))
        return self.final_linear(out.flatten(1))
