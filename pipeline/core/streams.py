"""Independent GPU work on parallel CUDA streams (no Ray, no I/O).

At the paper's batch of 4 images every network of the T step launches kernels too small to fill a
GPU: run one after another, most of the chip idles (issue 16's profile: the parts of a 256 px step
take 17 ms in series, none of them busy for long). Branches of the step that do not depend on each
other -- the pass over the original image x and the chain through x' = G(w + T s); the regressor,
landmark net, perceptual net and discriminator on x' -- can run on their own streams instead.

    streams = StreamSet(device)               # one per step function, reused every step
    out = streams.run({"a": fn_a, "b": fn_b})  # fn_a on the current stream, fn_b on a side stream

Why the results stay the same: each branch runs the same kernels on the same inputs; side streams
first wait for everything already queued on the current stream and the current stream waits for
them before `run` returns. Autograd runs each backward op on the stream of its forward op and
synchronises streams where gradients meet, so gradients follow the same graph. Under CUDA-graph
capture the side streams, forked from the capturing stream by those waits, become parallel
branches of the graph. Memory: every tensor that crosses streams is read only between a wait and
the join, and every side-stream use begins with a wait on the current stream, so the caching
allocator cannot hand a block to one stream while another still reads it.

Off CUDA (or with `enabled=False`) `run` calls the branches one after another in their order.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class StreamSet:
    """Runs named branches concurrently on CUDA streams; see the module docstring."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device = torch.device(device)
        self.enabled = enabled and self.device.type == "cuda"
        self._side: dict[str, torch.cuda.Stream] = {}

    def stream(self, name: str) -> torch.cuda.Stream:
        """The side stream of one branch name, created once (a capture must see the same streams)."""
        if name not in self._side:
            self._side[name] = torch.cuda.Stream(device=self.device)
        return self._side[name]

    def run(self, branches: dict[str, Callable[[], Any]]) -> dict[str, Any]:
        """Each branch's result by name. The first branch runs on the current stream, every other on
        its own side stream; all are finished (as far as later work on the current stream can tell)
        when this returns."""
        if not self.enabled or len(branches) < 2:
            return {name: fn() for name, fn in branches.items()}
        current = torch.cuda.current_stream(self.device)
        names = list(branches)
        results: dict[str, Any] = {}
        for name in names[1:]:
            side = self.stream(name)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                results[name] = branches[name]()
        results[names[0]] = branches[names[0]]()
        for name in names[1:]:
            current.wait_stream(self.stream(name))
        return {name: results[name] for name in names}
