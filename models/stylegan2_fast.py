"""Fast forward passes of the StyleGAN2 generator and discriminator (the GPU default).

The same parameters and the same function as the modules of models/stylegan2.py, which call in here
when a `FastPath` is set on them and the input lives on one of its devices. What changes is how the
work is laid out, because the reference formulation spends most of its GPU time moving activations
through memory (FIR blur as depthwise convolutions, separate passes for modulation, demodulation,
noise, bias, leaky ReLU and gain, dtype casts, NCHW <-> NHWC conversions), not in its convolutions:

- activations stay channels_last (NHWC), the layout cuDNN's tensor-core convolutions use natively;
- the `lowp_resolutions` highest resolutions are stored and convolved in bfloat16 (or float16,
  as stylegan2-ada runs its num_fp16_res blocks), the rest in float32; no autocast round trips;
- constants are folded into small tensors: the sqrt(2) gain into the demodulation coefficients,
  biases and noise strengths (leaky ReLU commutes with a positive gain), the discriminator's gains
  into its conv weights and the residual 1/sqrt(2) into its skip weights. The scaled, cast,
  channels_last weights are cached while they are frozen (no gradient wanted, unchanged), so
  inference and T-training prepare them once;
- each block is one region: under `torch.compile` (Inductor) the elementwise work between two
  convolutions -- modulation, demodulation, FIR blur, noise, bias, leaky ReLU, gain, clamp, the
  ToRGB skip upsampling -- fuses into a few kernels around the cuDNN convolutions. Inside a compiled
  region the FIR filters are sums of shifted slices (fusible); in eager mode one depthwise
  convolution each. Regions compile once with dynamic shapes, so all blocks and all batch sizes
  share one graph per structure (a handful, whatever the resolution): compile time is bounded, and
  a compile failure falls back to eager with a warning.

Autograd works through every path, weights included (a GAN can train with it). Double backward
(R1 on the discriminator) needs eager mode: torch.compile's AOTAutograd refuses it, so a GAN trainer
that needs R1 sets FastPath(compile=False) on its discriminator.

Precision: with dtype=torch.float32 the fast path computes the reference function (the tests check
it against the reference fixtures to 1e-4). With bfloat16 it stays within the tolerance documented
in docs/performance.md (PSNR against float32, measured by benchmarks/bench_synthesis.py and the
`gpu` tests).

This module does not import models.stylegan2 (which imports it): it reads the networks' parameters
by attribute name, so the state dicts stay exactly rosinality's.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

GAIN = math.sqrt(2)
SLOPE = 0.2
Taps = tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class FastPath:
    """How (and on which devices) a StyleGAN2 network runs its fast path.

    dtype: dtype of the low-precision layers: bfloat16 (default: the range of float32, so nothing
        can overflow), float16 (3 more mantissa bits, ~18 dB closer to float32, but an unclamped
        network may overflow its range) or float32 (= the reference function, for parity checks).
    lowp_resolutions: how many of the highest resolutions run in `dtype` (stylegan2-ada's
        num_fp16_res, 4 as there: they hold almost all the work); None = all. The rest run in float32.
    channels_last: keep activations NHWC.
    compile: run each block as a torch.compile'd region (eager fallback on a compile failure).
    backend: torch.compile backend ("inductor"; the CPU tests use "aot_eager" to check tracing cheaply).
    devices: device types the fast path is used on; the reference path runs elsewhere.
    """
    dtype: torch.dtype = torch.bfloat16
    lowp_resolutions: int | None = 4
    channels_last: bool = True
    compile: bool = True
    backend: str = "inductor"
    devices: tuple[str, ...] = ("cuda",)

    def __post_init__(self):
        if self.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"FastPath.dtype must be bfloat16, float16 or float32, got {self.dtype}")
        if self.lowp_resolutions is not None and self.lowp_resolutions < 0:
            raise ValueError(f"FastPath.lowp_resolutions must be None or >= 0, got {self.lowp_resolutions}")

    def applies_to(self, t: torch.Tensor) -> bool:
        return t.device.type in self.devices

    def dtype_at(self, res: int, top_res: int) -> torch.dtype:
        """dtype of the layers computed at resolution `res` of a network whose largest is `top_res`."""
        if self.lowp_resolutions is None:
            return self.dtype
        steps_from_top = int(math.log2(top_res)) - int(math.log2(res))
        return self.dtype if steps_from_top < self.lowp_resolutions else torch.float32

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        where = "all layers" if self.lowp_resolutions is None else f"top {self.lowp_resolutions} resolutions"
        return (f"fast path: {str(self.dtype).replace('torch.', '')} on {where}, "
                f"{'channels_last' if self.channels_last else 'NCHW'}, "
                f"{'compiled (' + self.backend + ')' if self.compile else 'eager'}")


# ---------------------------------------------------------------------------------------------
# FIR filtering (upfirdn2d): shifted sums (compiled regions) or one depthwise conv (eager)
# ---------------------------------------------------------------------------------------------

def correlation_taps(kernel: torch.Tensor) -> Taps:
    """upfirdn2d kernel [k, k] (on the CPU) -> taps as Python floats for cross-correlation (flipped:
    upfirdn2d is a true convolution). The Blur/Upsample modules compute them once at construction, so
    forward never reads a kernel back from the device (a host sync, and illegal in a CUDA graph capture)."""
    return tuple(tuple(float(v) for v in row) for row in torch.flip(kernel.detach().float().cpu(), (0, 1)).tolist())


def depthwise_weight(kernel: torch.Tensor, channels: int, dtype: torch.dtype,
                     memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """upfirdn2d kernel [k, k] -> depthwise cross-correlation weight [C, 1, k, k] (flipped)."""
    w = torch.flip(kernel.detach(), (0, 1)).to(dtype)[None, None].expand(channels, 1, -1, -1)
    return w.contiguous(memory_format=memory_format)


def zero_insert(x: torch.Tensor, up: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, up H, up W]: x at (up i, up j), zeros elsewhere."""
    if up == 1:
        return x
    b, c, h, w = x.shape
    x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1))
    return x.reshape(b, c, h * up, w * up)


def fir_sum(x: torch.Tensor, taps: Taps, pad: tuple[int, int], down: int = 1) -> torch.Tensor:
    """Per-channel FIR as a sum of shifted slices: one elementwise expression Inductor can fuse.

    x [B, C, H, W]; pad = (before, after) >= 0 on both spatial axes; keeps every `down`-th output.
    Equals `fir_conv` and models.stylegan2.upfirdn2d (up=1, then [::down, ::down]).
    """
    p0, p1 = pad
    x = F.pad(x, (p0, p1, p0, p1))
    kh, kw = len(taps), len(taps[0])
    ho = (x.shape[2] - kh) // down + 1
    wo = (x.shape[3] - kw) // down + 1
    out = None
    for i, row in enumerate(taps):
        for j, t in enumerate(row):
            if t != 0.0:
                term = x[:, :, i: i + down * (ho - 1) + 1: down, j: j + down * (wo - 1) + 1: down] * t
                out = term if out is None else out + term
    return out


def fir_conv(x: torch.Tensor, weight: torch.Tensor, pad: tuple[int, int], down: int = 1) -> torch.Tensor:
    """The same FIR as one depthwise convolution with stride `down` (weight from `depthwise_weight`).
    Symmetric pads go to the convolution itself (no padded copy of x)."""
    p0, p1 = pad
    if p0 != p1:
        x, p0 = F.pad(x, (p0, p1, p0, p1)), 0
    return F.conv2d(x, weight.to(x.dtype), stride=down, padding=p0, groups=x.shape[1])


def upsample_conv_blur_fused(xm: torch.Tensor, weight: torch.Tensor, taps: Taps, pad: tuple[int, int]) -> torch.Tensor:
    """Transposed stride-2 conv, then the FIR with `pad`, written for Inductor: the zero border the
    blur needs comes from padding the conv's 4x smaller input by q (the conv then emits 2q zero rows
    and columns on each side), so the FIR reads the conv's output through views and fuses with what
    follows, instead of reading a padded copy of it. Equals fir(conv_transpose2d(xm), pad)."""
    p0, p1 = pad
    q = (max(p0, p1) + 1) // 2
    y = F.conv_transpose2d(F.pad(xm, (q, q, q, q)), weight, stride=2)       # = y padded by 2q
    # The gradient of y comes out of the slices' backward, which builds it NCHW, and cuDNN's
    # transposed-conv backward would copy it into the input's NHWC (at 1024 px, batch 4:
    # [4, 32, 1029, 1029]); asked for NHWC here, the kernel that computes it writes it so in the
    # graphs the CPU's Inductor builds. Not on the GPU: the copy was still there on an H100
    # (2026-12-06, benchmarks/results_block_copies_h100.txt); where it comes back is not located.
    y = gradient_in_layout_of(y)
    y = y[:, :, 2 * q - p0: y.shape[2] - (2 * q - p1), 2 * q - p0: y.shape[3] - (2 * q - p1)]
    return fir_sum(y, taps, (0, 0))


def fir(x: torch.Tensor, taps: Taps, weight: torch.Tensor, pad: tuple[int, int], down: int = 1) -> torch.Tensor:
    """Shifted sums while torch.compile traces (fused with the neighbouring elementwise work), one
    depthwise convolution in eager mode (fewest kernels there)."""
    if torch.compiler.is_compiling():
        return fir_sum(x, taps, pad, down)
    return fir_conv(x, weight, pad, down)


# ---------------------------------------------------------------------------------------------
# Prepared (scaled, folded, cast) weights, cached while frozen
# ---------------------------------------------------------------------------------------------

def cached(owner: nn.Module, key: tuple, params: list[torch.Tensor], build: Callable):
    """build(), cached on `owner` while its parameters are unchanged and no gradient is wanted.

    The cache key holds each parameter's storage address and version counter (bumped by every
    in-place update: optimiser steps, load_state_dict, `with no_grad: p.fill_()`), so an update
    rebuilds. Writes through `p.data` bypass the counter: call `clear_fast_cache(module)` after those.
    """
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return build()  # a gradient flows to the weights (GAN training): prepare them in the graph
    sig = (torch.is_inference_mode_enabled(), tuple((p.data_ptr(), p._version) for p in params))
    store = owner.__dict__.setdefault("_fast_cache", {})
    hit = store.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    value = build()
    store[key] = (sig, value)
    return value


def clear_fast_cache(module: nn.Module) -> None:
    for m in module.modules():
        m.__dict__.pop("_fast_cache", None)


class StyledParams(NamedTuple):
    """One StyledConv, prepared: s = style @ mod_w.T + mod_b; conv with `weight`; demodulation from wsq_t."""
    mod_w: torch.Tensor       # [Cin, w_dim] fp32, equalised-lr scale applied
    mod_b: torch.Tensor       # [Cin] fp32
    weight: torch.Tensor      # [Cout, Cin, k, k] (conv) or [Cin, Cout, k, k] (transposed), layer dtype
    wsq_t: torch.Tensor       # [Cin, Cout] fp32: sum over (k, k) of the scaled weight squared
    noise_w: torch.Tensor     # [1] fp32, noise strength x gain
    bias: torch.Tensor        # [Cout] fp32, bias x gain
    blur: torch.Tensor        # [Cout, 1, 4, 4] depthwise FIR weight (upsampling layers; eager mode)


class StyledStatic(NamedTuple):
    dtype: torch.dtype
    upsample: bool
    padding: int
    clamp: float | None
    taps: Taps
    pad: tuple[int, int]


class RgbParams(NamedTuple):
    mod_w: torch.Tensor       # [Cin, w_dim] fp32
    mod_b: torch.Tensor       # [Cin]
    weight: torch.Tensor      # [3, Cin] fp32, scaled
    bias: torch.Tensor        # [1, 3, 1, 1] fp32
    up: torch.Tensor          # [3, 1, 4, 4] fp32 depthwise FIR weight of the skip upsampling (eager mode)


class RgbStatic(NamedTuple):
    clamp: float | None
    taps: Taps
    pad: tuple[int, int]


def _modulation(lin: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return lin.weight * lin.scale, lin.bias * lin.lr_mul


def styled_params(layer: nn.Module, dtype: torch.dtype, fast: FastPath) -> tuple[StyledParams, StyledStatic]:
    """A models.stylegan2.StyledConv -> its prepared tensors and static settings."""
    conv = layer.conv
    up = bool(conv.upsample)
    blur_mod = conv.blur if up else None
    taps = blur_mod.fir_taps if up else ((1.0,),)
    static = StyledStatic(dtype, up, conv.padding, layer.activate.clamp, taps, tuple(blur_mod.pad) if up else (0, 0))
    params = [conv.weight, conv.modulation.weight, conv.modulation.bias, layer.noise.weight, layer.activate.bias]

    def build() -> StyledParams:
        w = conv.weight[0] * conv.scale                                    # [Cout, Cin, k, k]
        cw = (w.transpose(0, 1) if up else w).to(dtype).contiguous(memory_format=fast.memory_format)
        blur = (depthwise_weight(blur_mod.kernel, conv.out_ch, dtype, fast.memory_format) if up
                else w.new_zeros(1, 1, 1, 1))
        return StyledParams(*_modulation(conv.modulation), cw, w.square().sum((2, 3)).t().contiguous(),
                            layer.noise.weight * GAIN, layer.activate.bias * GAIN, blur)

    return cached(layer, ("styled", dtype, fast.memory_format), params, build), static


def rgb_params(layer: nn.Module) -> tuple[RgbParams, RgbStatic]:
    """A models.stylegan2.ToRGB -> prepared tensors (always float32: the RGB sum stays float32)."""
    conv = layer.conv
    upsample = getattr(layer, "upsample", None)
    taps = upsample.fir_taps if upsample is not None else ((1.0,),)
    static = RgbStatic(layer.clamp, taps, tuple(upsample.pad) if upsample is not None else (0, 0))
    params = [conv.weight, conv.modulation.weight, conv.modulation.bias, layer.bias]

    def build() -> RgbParams:
        up = (depthwise_weight(upsample.kernel, 3, torch.float32) if upsample is not None
              else conv.weight.new_zeros(1, 1, 1, 1))
        return RgbParams(*_modulation(conv.modulation), conv.weight[0, :, :, 0, 0] * conv.scale, layer.bias, up)

    return cached(layer, ("rgb",), params, build), static


# ---------------------------------------------------------------------------------------------
# Generator layers (the same code runs eagerly and inside torch.compile)
# ---------------------------------------------------------------------------------------------

def styled_conv(x: torch.Tensor, style: torch.Tensor, p: StyledParams, noise: torch.Tensor | None,
                st: StyledStatic) -> torch.Tensor:
    """Modulated conv (+ 2x upsampling) -> demodulate -> noise -> bias -> leaky ReLU -> gain -> clamp.

    x [B, Cin, H, W] (any float dtype), style [B, w_dim] fp32, noise [1 or B, 1, H', W'] or None
    -> [B, Cout, H', W'] in st.dtype. Demodulation scales the output per (sample, channel), which
    equals convolving each sample with its own demodulated weights.
    """
    s = F.linear(style, p.mod_w, p.mod_b)                                     # [B, Cin] fp32
    d = torch.rsqrt(s.square() @ p.wsq_t + 1e-8) * GAIN                       # [B, Cout] fp32
    if st.dtype == torch.float16:
        # float16 range: normalise each sample's styles to max 1 before the conv and give the factor
        # back through d (exact in exact arithmetic; ada does the same for its fp16 layers).
        m = s.abs().amax(1, keepdim=True)
        s, d = s / m, d * m
    xm = (x * s.to(x.dtype)[:, :, None, None]).to(st.dtype)
    if st.upsample and torch.compiler.is_compiling():
        y = upsample_conv_blur_fused(xm, p.weight, st.taps, st.pad)
    elif st.upsample:
        y = fir_conv(F.conv_transpose2d(xm, p.weight, stride=2), p.blur, st.pad)
    else:
        y = F.conv2d(xm, p.weight, padding=st.padding)
    d = d.to(y.dtype)[:, :, None, None]
    base = p.bias.to(y.dtype)[None, :, None, None]
    if noise is not None and noise.shape[0] == 1:
        # one noise map for the whole batch ("const"): bias + noise is one image's worth of work, and
        # the batch takes a single multiply-add pass (eager; Inductor fuses everything anyway). In
        # y's layout, or the result would come out NCHW.
        base = (base + noise.to(y.dtype) * p.noise_w.to(y.dtype)).contiguous(memory_format=_layout(y))
        y = torch.addcmul(base, y, d)
    else:
        y = torch.addcmul(base, y, d)
        if noise is not None:
            y = y + noise.to(y.dtype) * p.noise_w.to(y.dtype)
    y = F.leaky_relu(y, SLOPE)
    return y if st.clamp is None else y.clamp(-st.clamp, st.clamp)


def _layout(t: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
            else torch.contiguous_format)


def to_rgb(x: torch.Tensor, style: torch.Tensor, p: RgbParams, skip: torch.Tensor | None,
           st: RgbStatic) -> torch.Tensor:
    """1x1 modulated conv to RGB (+ bias, clamp) plus the FIR-upsampled skip.

    x [B, C, H, W], skip [B, 3, H/2, W/2] fp32 or None -> [B, 3, H, W] fp32. The 1x1 conv with
    per-sample weights is one batched matmul over the pixels (no modulated copy of x is made).
    """
    s = F.linear(style, p.mod_w, p.mod_b)                                     # [B, C]
    wmod = (p.weight[None] * s[:, None, :]).to(x.dtype)                       # [B, 3, C]
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):
        rgb = torch.bmm(x.permute(0, 2, 3, 1).reshape(b, h * w, c), wmod.transpose(1, 2))
        rgb = rgb.reshape(b, h, w, 3).permute(0, 3, 1, 2)
    else:
        rgb = torch.bmm(wmod, x.reshape(b, c, h * w)).reshape(b, 3, h, w)
    rgb = rgb.float() + p.bias
    if st.clamp is not None:
        rgb = rgb.clamp(-st.clamp, st.clamp)
    if skip is not None:
        rgb = rgb + fir(zero_insert(skip, 2), st.taps, p.up, st.pad)
    return rgb


def synthesis_block(x, skip, s_up, s_conv, s_rgb, n_up, n_conv, p_up, p_conv, p_rgb, st_up, st_conv, st_rgb,
                    last: bool = False):
    """One resolution of the synthesis network (one compiled region):
    x [B, Cin, H, W], skip [B, 3, H, W] -> x [B, Cout, 2H, 2W] (None for the `last` block, whose
    features nothing reads), skip [B, 3, 2H, 2W]."""
    x = styled_conv(gradient_in_layout_of(x), s_up, p_up, n_up, st_up)
    x = styled_conv(x, s_conv, p_conv, n_conv, st_conv)
    rgb = to_rgb(x, s_rgb, p_rgb, gradient_in_layout_of(skip), st_rgb)
    # A compiled region's unused output still gets a gradient: AOTAutograd materialises zeros for it
    # (and copies them into the output's layout): at 1024 px, batch 4, two passes over 268M elements.
    return (None if last else x), rgb


class _GradientChannelsLast(torch.autograd.Function):
    """Identity whose backward hands the gradient on NHWC (channels_last).

    Why: AOTAutograd makes every gradient that reaches a compiled region's backward match the layout
    of the output it belongs to, with a copy when it does not. Between two blocks that gradient is the
    next region's gradient of its input (features x, RGB skip), and Inductor may write that one NCHW
    (its backward reaches x through FIR slices, whose gradients are built NCHW): on the CPU with
    Inductor every block boundary cost a layout copy of the block's features. Asked for here, the
    layout is written by the kernel that computes the gradient, at no extra pass. (No state on ctx:
    the one layout is in the class, which keeps it simple for Dynamo to trace.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def gradient_in_layout_of(x: torch.Tensor) -> torch.Tensor:
    """x, whose gradient leaves the region NHWC when x is NHWC (see _GradientChannelsLast); any other
    x (NCHW, or not requiring a gradient) as it is."""
    if x.requires_grad and _layout(x) == torch.channels_last:
        return _GradientChannelsLast.apply(x)
    return x


# ---------------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------------

class DBlockParams(NamedTuple):
    """A ResBlock (and, for the first one, the fromRGB layer), gains folded into the weights."""
    w1: torch.Tensor          # [Cin, Cin, 3, 3] x scale x gain, block dtype
    b1: torch.Tensor          # [Cin] x gain, fp32
    w2: torch.Tensor          # [Cout, Cin, 3, 3] x scale x gain
    b2: torch.Tensor          # [Cout] x gain
    w_skip: torch.Tensor      # [Cout, Cin, 1, 1] x scale / sqrt(2)
    blur: torch.Tensor        # [Cin, 1, 4, 4] depthwise FIR weight (eager mode)
    w_rgb: torch.Tensor       # [Cin, 3, 1, 1] x scale x gain (fromRGB; first block only, else a dummy)
    b_rgb: torch.Tensor       # [Cin] x gain


class DBlockStatic(NamedTuple):
    dtype: torch.dtype
    clamp: float | None
    from_rgb: bool
    taps: Taps
    pad_conv: tuple[int, int]
    pad_skip: tuple[int, int]


def d_block_params(block: nn.Module, from_rgb: nn.Module | None, dtype: torch.dtype,
                   fast: FastPath) -> tuple[DBlockParams, DBlockStatic]:
    c1, c2, sk = block.conv1[0], block.conv2[1], block.skip[1]
    blur2, blur_skip = block.conv2[0], block.skip[0]
    static = DBlockStatic(dtype, block.conv1[1].clamp, from_rgb is not None, blur2.fir_taps,
                          tuple(blur2.pad), tuple(blur_skip.pad))
    if blur2.fir_taps != blur_skip.fir_taps:
        raise ValueError("fast discriminator: the conv and skip paths must share one blur kernel")
    params = [c1.weight, block.conv1[1].bias, c2.weight, block.conv2[2].bias, sk.weight]
    if from_rgb is not None:
        params += [from_rgb[0].weight, from_rgb[1].bias]

    def cast(w: torch.Tensor) -> torch.Tensor:
        return w.to(dtype).contiguous(memory_format=fast.memory_format)

    def build() -> DBlockParams:
        if from_rgb is not None:
            w_rgb, b_rgb = cast(from_rgb[0].weight * from_rgb[0].scale * GAIN), from_rgb[1].bias * GAIN
        else:
            w_rgb = b_rgb = c1.weight.new_zeros(1)
        return DBlockParams(cast(c1.weight * c1.scale * GAIN), block.conv1[1].bias * GAIN,
                            cast(c2.weight * c2.scale * GAIN), block.conv2[2].bias * GAIN,
                            cast(sk.weight * (sk.scale / math.sqrt(2))),
                            depthwise_weight(blur2.kernel, c1.weight.shape[0], dtype, fast.memory_format),
                            w_rgb, b_rgb)

    return cached(block, ("dblock", dtype, fast.memory_format, from_rgb is not None), params, build), static


def bias_act(y: torch.Tensor, bias: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """leaky ReLU(y + bias) (+ clamp); the gain is already in y's weights and in bias."""
    y = F.leaky_relu(y + bias.to(y.dtype)[None, :, None, None], SLOPE)
    return y if clamp is None else y.clamp(-clamp, clamp)


def discriminator_block(x: torch.Tensor, p: DBlockParams, st: DBlockStatic) -> torch.Tensor:
    """[fromRGB] + ResBlock (one compiled region): x [B, Cin (3 with fromRGB), H, W] -> [B, Cout, H/2, W/2].

    The skip path's blur is evaluated at the stride-2 positions only (a 1x1 conv then keeps them all).
    """
    x = gradient_in_layout_of(x).to(st.dtype)
    if st.from_rgb:
        x = bias_act(F.conv2d(x, p.w_rgb), p.b_rgb, st.clamp)
    h = bias_act(F.conv2d(x, p.w1, padding=1), p.b1, st.clamp)
    h = bias_act(F.conv2d(fir(h, st.taps, p.blur, st.pad_conv), p.w2, stride=2), p.b2, st.clamp)
    skip = F.conv2d(fir(x, st.taps, p.blur, st.pad_skip, down=2), p.w_skip)
    return torch.add(skip, h, alpha=1 / math.sqrt(2))


# ---------------------------------------------------------------------------------------------
# Compiled regions with an eager fallback
# ---------------------------------------------------------------------------------------------

class Region:
    """A function run through torch.compile when the FastPath asks for it, eagerly otherwise.

    Shapes are static except the batch: each block (its channels and resolution) gets its own graph
    and every batch size shares it (the first `batch_args` arguments have their batch dimension
    marked dynamic; fully dynamic shapes made tracing an order of magnitude slower). On a compile
    failure it warns once and runs eagerly from then on: eager computes the same function.
    `compile_seconds` sums the wall time of the calls that compiled a graph (for the benchmarks).
    """

    RECOMPILE_LIMIT = 64  # one graph per block and structure: 8 blocks x (dtype, noise, grad) variants

    def __init__(self, fn: Callable, batch_args: int):
        self.fn, self.batch_args = fn, batch_args
        self.compiled: dict[str, Callable] = {}
        self.failed: set[str] = set()
        self.compile_seconds = 0.0
        self.graphs = 0

    def __call__(self, fast: FastPath, *args):
        if not fast.compile or fast.backend in self.failed:
            return self.fn(*args)
        import torch._dynamo  # noqa: PLC0415 (only when compiling)
        for t in args[: self.batch_args]:
            if isinstance(t, torch.Tensor) and t.shape[0] > 1:
                torch._dynamo.mark_dynamic(t, 0)
        before = _graph_count()
        t0 = time.perf_counter()
        try:
            fn = self.compiled.get(fast.backend)
            if fn is None:
                fn = self.compiled[fast.backend] = torch.compile(self.fn, backend=fast.backend, dynamic=None,
                                                                 fullgraph=True)
            with torch._dynamo.config.patch(automatic_dynamic_shapes=False, **_recompile_limits(self.RECOMPILE_LIMIT)):
                out = fn(*args)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # a compiler problem must not stop the work: eager computes the same
            self.failed.add(fast.backend)
            warnings.warn(f"torch.compile of {self.fn.__name__} failed ({type(e).__name__}: {str(e)[:400]}); "
                          "running it eagerly from now on", RuntimeWarning, stacklevel=2)
            return self.fn(*args)
        if _graph_count() > before:
            self.graphs += _graph_count() - before
            self.compile_seconds += time.perf_counter() - t0
        return out


def _recompile_limits(n: int) -> dict:
    """The per-function recompile limit under its name in this torch (renamed in 2.6; both exist)."""
    import torch._dynamo.config as cfg  # noqa: PLC0415
    names = [k for k in ("recompile_limit", "cache_size_limit") if hasattr(cfg, k)]
    return {names[0]: max(n, getattr(cfg, names[0]))} if names else {}


def _graph_count() -> int:
    try:
        from torch._dynamo.utils import counters  # noqa: PLC0415
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # a private counter: without it the benchmarks only lose the compile time
        return 0


SYNTHESIS_BLOCK = Region(synthesis_block, batch_args=7)    # x, skip, 3 styles, 2 noise maps
DISCRIMINATOR_BLOCK = Region(discriminator_block, batch_args=1)


def compile_stats() -> dict[str, float]:
    """Graphs compiled and wall time spent in the calls that compiled them, this process."""
    regions = (SYNTHESIS_BLOCK, DISCRIMINATOR_BLOCK)
    return {"graphs": sum(r.graphs for r in regions), "seconds": sum(r.compile_seconds for r in regions),
            "failed": sorted({b for r in regions for b in r.failed})}


# ---------------------------------------------------------------------------------------------
# Whole networks
# ---------------------------------------------------------------------------------------------

def _no_autocast(t: torch.Tensor):
    """The fast path sets its own dtypes: a caller's autocast (a stage's bf16 precision) stays outside."""
    if t.device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return contextlib.nullcontext()


def generator_synthesis(g: nn.Module, wplus: torch.Tensor, noise: list, fast: FastPath) -> torch.Tensor:
    """models.stylegan2.Generator.synthesis on the fast path: wplus [B, L, w_dim], noise list (None =
    zero) -> image [B, 3, R, R] float32, contiguous."""
    top = g.resolution
    with _no_autocast(wplus):
        wplus = wplus.float()
        b = wplus.shape[0]
        p, st = styled_params(g.conv1, fast.dtype_at(4, top), fast)
        x = styled_conv(g.input.input.expand(b, -1, -1, -1), wplus[:, 0], p, noise[0], st)
        x = x.contiguous(memory_format=fast.memory_format)
        p_rgb, st_rgb = rgb_params(g.to_rgb1)
        skip = to_rgb(x, wplus[:, 1], p_rgb, None, st_rgb)
        i = 1
        blocks = list(zip(g.convs[::2], g.convs[1::2], g.to_rgbs))
        for k, (up_conv, conv, rgb) in enumerate(blocks):
            dtype = fast.dtype_at(2 ** (k + 3), top)
            p_up, st_up = styled_params(up_conv, dtype, fast)
            p_conv, st_conv = styled_params(conv, dtype, fast)
            p_rgb, st_rgb = rgb_params(rgb)
            x, skip = SYNTHESIS_BLOCK(fast, x, skip, wplus[:, i], wplus[:, i + 1], wplus[:, i + 2],
                                      noise[2 * k + 1], noise[2 * k + 2], p_up, p_conv, p_rgb, st_up, st_conv, st_rgb,
                                      k == len(blocks) - 1)
            i += 2
        return skip.contiguous()


def discriminator_forward(d: nn.Module, image: torch.Tensor, fast: FastPath) -> torch.Tensor:
    """models.stylegan2.Discriminator.forward on the fast path: image [B, 3, R, R] -> logits [B, 1] fp32.
    The 4x4 head (minibatch stddev, final conv, linear layers) runs in float32 as in the reference."""
    top = d.resolution
    with _no_autocast(image):
        x = image.contiguous(memory_format=fast.memory_format)
        for k, block in enumerate(d.convs[1:]):
            p, st = d_block_params(block, d.convs[0] if k == 0 else None, fast.dtype_at(top >> k, top), fast)
            x = DISCRIMINATOR_BLOCK(fast, x, p, st)
        x = x.float().contiguous()
        out = d.final_conv(d.minibatch_stddev(x))
        return d.final_linear(out.flatten(1))
