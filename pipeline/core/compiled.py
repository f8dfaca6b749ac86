"""torch.compile for the frozen measuring networks (perceptual, landmarks, identity, regressor), with an
eager fallback.

The StyleGAN2 networks compile block by block on their own fast path (models/stylegan2_fast.py). The
networks that judge G's images are plain nn.Modules; on small images and large batches (invert at
64 px: batch 256 of 112-150 px crops) their time goes to the elementwise passes around each
convolution (batch norm, activations, dtype casts, resizing), which Inductor fuses. This module wraps
a network's `forward` so that CUDA calls run a torch.compile'd copy of it and everything else (CPU
tensors, a compile failure) runs the original code: the same function up to float rounding.

backend / devices exist for the CPU tests ("aot_eager" on "cpu" traces the same way, cheaply).

The batch dimension of the first tensor argument is marked dynamic, so chunks with different numbers
of faces share one graph. A compile failure (an op Inductor cannot lower, a data-dependent branch)
warns once and runs eagerly from then on.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import torch
from torch import nn


class CompiledForward:
    """Replaces `net.forward`: compiled on CUDA inputs, the original forward otherwise."""

    def __init__(self, forward: Callable, name: str, *, backend: str = "inductor", devices: tuple[str, ...] = ("cuda",)):
        self.eager, self.name, self.backend, self.devices = forward, name, backend, devices
        self.compiled: Callable | None = None
        self.failed = False
        self.compile_seconds = 0.0

    def __call__(self, *args, **kwargs):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if self.failed or first is None or first.device.type not in self.devices:
            return self.eager(*args, **kwargs)
        import torch._dynamo as dynamo  # noqa: PLC0415 (only when compiling)
        if first.dim() > 0 and first.shape[0] > 1:
            dynamo.mark_dynamic(first, 0)
        t0 = time.perf_counter()
        first_call = self.compiled is None
        try:
            if first_call:
                self.compiled = torch.compile(self.eager, backend=self.backend, dynamic=None)
            out = self.compiled(*args, **kwargs)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # a compiler problem must not stop the work: eager computes the same
            self.failed = True
            warnings.warn(f"torch.compile of {self.name} failed ({type(e).__name__}: {str(e)[:300]}); running it "
                          "eagerly from now on", RuntimeWarning, stacklevel=2)
            return self.eager(*args, **kwargs)
        if first_call:
            self.compile_seconds += time.perf_counter() - t0
        return out


def compile_networks(enabled: bool, *networks: nn.Module | None, backend: str = "inductor",
                     devices: tuple[str, ...] = ("cuda",)) -> list[nn.Module]:
    """Wrap each network's forward in a CompiledForward (once; None entries and repeats are skipped).
    Returns the networks wrapped by this call. Other methods of a network (e.g. an expression net's
    `expression_features`) stay eager."""
    done: list[nn.Module] = []
    if not enabled:
        return done
    for net in networks:
        if net is None or isinstance(net.__dict__.get("forward"), CompiledForward) or any(net is d for d in done):
            continue
        net.forward = CompiledForward(net.forward, type(net).__name__, backend=backend, devices=devices)
        done.append(net)
    return done


def compile_seconds(*networks: nn.Module | None) -> float:
    """Wall seconds the wrapped networks' first (compiling) calls took."""
    return sum(f.compile_seconds for n in networks if n is not None
               and isinstance(f := n.__dict__.get("forward"), CompiledForward))
