"""Replay a fixed-shape, gradient-free GPU computation as a CUDA graph (no Ray, no I/O).

Generation calls the same network thousands of times with the same shapes: recorded once as a CUDA
graph, each later call is one launch instead of hundreds, and the host is free while the GPU works.
`GraphedCall(fn)` records `fn(*tensors) -> tuple of tensors` once per input signature (shapes and
dtypes), after a few eager warm-up calls (cuDNN algorithm choice, torch.compile, allocator), and
replays it for every later call with the same signature; other devices, and signatures past
`max_graphs`, run `fn` eagerly. Outputs are the graph's own buffers: the next call overwrites them,
so use or copy them first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Signature = tuple


@dataclass
class _Recorded:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


def signature(args: tuple[torch.Tensor, ...]) -> Signature:
    return tuple((tuple(a.shape), a.dtype, a.device) for a in args)


class GraphedCall:
    """fn(*tensors) -> tuple of tensors, replayed from CUDA graphs (see the module docstring).

    fn must be a pure function of its tensor arguments (and of state that does not change between
    calls, such as frozen weights), must not synchronise with the host, and runs under no_grad.
    """

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]], max_graphs: int = 4, warmup: int = 2):
        self.fn, self.max_graphs, self.warmup = fn, max_graphs, warmup
        self.recorded: dict[Signature, _Recorded] = {}

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not args or any(a.device.type != "cuda" for a in args):
            return tuple(self.fn(*args))
        key = signature(args)
        rec = self.recorded.get(key)
        if rec is None:
            if len(self.recorded) >= self.max_graphs:
                return tuple(self.fn(*args))
            rec = self.recorded[key] = self._record(args)
        for dst, src in zip(rec.inputs, args):
            dst.copy_(src)
        rec.graph.replay()
        return rec.outputs

    def _record(self, args: tuple[torch.Tensor, ...]) -> _Recorded:
        static = tuple(a.clone() for a in args)
        side = torch.cuda.Stream(device=static[0].device)
        side.wait_stream(torch.cuda.current_stream(static[0].device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(self.warmup):
                self.fn(*static)
        torch.cuda.current_stream(static[0].device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = tuple(self.fn(*static))
        return _Recorded(graph, static, outputs)
