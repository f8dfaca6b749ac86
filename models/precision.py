"""Precision pins for networks whose outputs are compared by tiny differences.

The landmark networks (the HFLD loss's H, the drift judges) return coordinates in [0, 1] of the
image, and the HFLD loss is mean |H(x) - H(x')| for an x' that should barely move them: at the
start of training and for a well-trained T the displacements are ~1e-3 of the image side. Under
a caller's bf16 autocast (`precision: bf16` of train / invert / generate) the network's output
would be rounded to bf16, whose spacing on [0.25, 1) is 2^-9..2^-8 (2e-3..4e-3): most of those
displacements round to 0 or to one step, and the loss's gradient, sign(H(x') - H(x)), is 0 or
wrong for most points. On the CPU with the starter's face-api landmarks (16 faces, x' from a small
W+ step, loss 1.8e-3 as at T's initialisation; `benchmarks/bench_landmark_precision.py`) a bf16 forward
gave 57.5% zero differences, the sign of 41.6% of the coordinates right and a gradient at cosine 0.76
to the float32 one (docs/performance.md).

`float32_forward` runs a method in float32 whatever the caller's autocast says: autocast off inside,
the input cast up to float32 (the weights already are). On a GPU the convolutions may still run in
TF32 (10 mantissa bits instead of bf16's 7) where the caller allows it. These networks are small
and see the image resized to 112-192 px, so their float32 pass costs little next to the generator.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

Method = TypeVar("Method", bound=Callable)


def float32_forward(method: Method) -> Method:
    """Decorate `method(self, image: Tensor, ...)`: it runs with autocast off, on the image cast up to
    float32 (a float64 image, as in the float64 tests, stays float64)."""

    @functools.wraps(method)
    def run_in_float32(self, image: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=image.device.type, enabled=False):
            return method(self, image.to(torch.promote_types(image.dtype, torch.float32)), *args, **kwargs)

    return run_in_float32  # type: ignore[return-value]
